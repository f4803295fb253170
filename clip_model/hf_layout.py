"""transformers' names for the pieces our models share: an encoder layer's parameters, and q, k, v kept apart where
we keep nn.MultiheadAttention's fused ``in_proj`` (rows [q; k; v]). Every conversion from transformers uses them:
CLIP's (checkpoint/conversions.py), SigLIP's and X-CLIP's."""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch

HF_LAYER = {  # one encoder layer: transformers' name -> ours (OpenAI's)
    "layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}
FUSED = {"self_attn": "attn", "message_attn": "message_attn"}  # attentions whose q, k, v we fuse, and our name
_LAYER_RENAMES = [(rf"\.{re.escape(hf)}\.", f".{ours}.") for hf, ours in HF_LAYER.items()]
_QKV = re.compile(r"\.(" + "|".join(FUSED) + r")\.([qkv])_proj\.")


def rename_hf(sd: Mapping[str, torch.Tensor], renames: Sequence[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """A transformers state dict in our names: each attention of ``FUSED`` gets its q, k and v fused into
    ``in_proj_weight``/``in_proj_bias``; then the model's own ``renames`` (regex, replacement), then the encoder
    layers' (``HF_LAYER``) apply to every key. Non-persistent ``position_ids`` buffers are dropped."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key.endswith("position_ids"):
            continue
        if attn := _QKV.search(key):
            if attn.group(2) != "q":
                continue  # fused with q
            value = torch.cat([sd[key.replace(".q_proj.", f".{p}_proj.")] for p in "qkv"])
            key = key.replace(f".{attn.group(1)}.q_proj.", f".{FUSED[attn.group(1)]}.in_proj_")
        for pattern, repl in (*renames, *_LAYER_RENAMES):
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out
