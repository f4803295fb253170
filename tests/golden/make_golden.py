"""Write the golden outputs of the peer libraries on the parity cases: ``.venv/bin/python tests/golden/make_golden.py``.

What it writes, beside this file:

- ``peers.npz``: float32 arrays named ``<case>/<output>``: what the PEER library (open_clip, transformers) computes
  for each case of ``CASES``: image and text features and the logits (X-CLIP: video and text embeddings and the
  logits per video). The archive is written byte for byte the same whenever the values are the same.
- ``peers.json``: the date, the versions of torch, open_clip_torch and transformers that computed them (and numpy's,
  whose legacy ``RandomState`` draws every weight and input), and per case the SHA-256 of its weights and of its
  inputs and a readable summary of each output (shape, norm, first values), so that ``git diff`` names what moved.

Each case is a peer model of a tiny config whose every floating weight is drawn from a seeded generator of its own
(``fill_weights_``: per tensor, from its name; nothing of the peer's initialisation is left), run on fixed seeded
inputs. tests/test_golden.py imports ``CASES`` and checks (a) that the installed peer still gives these outputs and
(b) that our model, converted from the same weights by our loaders, gives them within the parity tolerance; the
parity tests (test_parity_open_clip, test_parity_hf, test_siglip, test_xclip) compare live peer against ours, and a
change in the peer's arithmetic would move both sides of those together wherever we follow it.

When to run it: only after upgrading a peer on purpose (requirements-dev.txt pins open_clip_torch and transformers,
requirements.txt torch), or after adding or changing a case here; never just to make a failing test_golden pass.
First ``make_golden.py --check``: it recomputes, writes nothing, and prints each output's largest difference from the
stored one. A moved reference is what these files exist to show: find why the peer's outputs moved (its changelog),
check that ours still agree with the new ones (test_golden's (b) after regenerating), and say so in the commit. A diff
in peers.npz or peers.json is reviewed, never just committed.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.metadata
import io
import json
import math
import sys
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))  # the tests import helpers (and each other) as top-level modules

NPZ, JSON = HERE / "peers.npz", HERE / "peers.json"
PEERS = {"torch": "torch", "open_clip": "open_clip_torch", "transformers": "transformers"}  # name -> distribution
# --check and test_golden (a): an output moved where it differs from the stored one by more than this times
# max(1, its largest magnitude). Measured: recomputing, and 1 thread against 2, differ by exactly 0; the float32
# outputs differ from the same peer's float64 ones by at most 2.8e-6 of that (hf_clip's logits; the others 3e-7 to
# 6e-7): float32 on another CPU or BLAS lands about that far, so 2e-5 leaves it room. It catches far less than a real
# change of arithmetic: layer norm's epsilon 1e-5 -> 1e-3 (under peer and ours alike) moved them by 7e-4 to 0.13.
PEER_RTOL = 2e-5
LOGIT_SCALE, LOGIT_BIAS = math.log(10.0), -1.0  # logits of a few units: softmax and sigmoid away from 0 and 1

Outputs = dict[str, torch.Tensor]


def installed_versions() -> dict[str, str]:
    return {name: importlib.metadata.version(dist) for name, dist in PEERS.items()}


# ---- weights and inputs, from numpy's legacy RandomState (its streams are frozen across numpy releases) -------------


def fill_weights_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every floating parameter and buffer drawn afresh, the peer's initialisation ignored (it zeroes biases, sets
    norms to 1, X-CLIP's alpha to 0.1: branches a wrong port of them would pass with). Each tensor has a generator of
    its own, seeded from ``seed`` and its name, so that a tensor a peer adds or renames moves no other tensor; the
    scale comes from the shape alone: N(0, 1/fan_in) for matrices, 1 + N(0, 0.2^2) for norm gains, N(0, 0.2^2) for
    the other vectors; fixed logit scale and bias. open_clip's causal mask is kept. (helpers.randomize_ scales each
    tensor by the std of the peer's init: a peer release with another init would move golden outputs computed so.)"""
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    with torch.no_grad():
        for name, t in tensors.items():
            if not t.is_floating_point() or name.endswith("attn_mask"):
                continue
            rs = np.random.RandomState(zlib.crc32(f"{seed}/{name}".encode()))
            if name.endswith("logit_scale"):
                values = np.full(t.shape, LOGIT_SCALE)
            elif name.endswith("logit_bias"):
                values = np.full(t.shape, LOGIT_BIAS)
            elif name.endswith("running_var"):
                values = 0.5 + rs.random_sample(t.shape)
            elif t.ndim <= 1:
                values = (1.0 if t.ndim == 1 and name.endswith("weight") else 0.0) + 0.2 * rs.standard_normal(t.shape)
            else:
                values = rs.standard_normal(t.shape) / math.sqrt(t[0].numel())
            t.copy_(torch.from_numpy(np.asarray(values, dtype=np.float32)))
    return model


def randn(seed: int, *shape: int) -> torch.Tensor:
    return torch.from_numpy(np.random.RandomState(seed).standard_normal(shape).astype(np.float32))


def bpe_ids(seed: int, lengths: list[int], context: int = 77, vocab: int = 49408) -> torch.Tensor:
    """CLIP-like token ids: the start token, ``n`` random tokens, the end token (the highest id), zero padding."""
    rs = np.random.RandomState(seed)
    ids = np.zeros((len(lengths), context), dtype=np.int64)
    for row, n in enumerate(lengths):
        ids[row, 0], ids[row, n + 1] = vocab - 2, vocab - 1
        ids[row, 1 : n + 1] = rs.randint(1, vocab - 2, n)
    return torch.from_numpy(ids)


def digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}:".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ---- the cases ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """``peer()``: the peer model, weights filled; ``inputs()``: its inputs; ``peer_outputs(peer, inputs)``: what is
    kept golden; ``ours(peer, tmp_dir)``: our model from the peer's weights, loaded as the parity test loads it;
    ``ours_outputs(ours, inputs)``: the same outputs of ours, by the same names."""

    library: str  # the peer library, as PEERS names it
    peer: Callable[[], Any]
    inputs: Callable[[], Outputs]
    peer_outputs: Callable[[Any, Outputs], Outputs]
    ours: Callable[[Any, Path], Any]
    ours_outputs: Callable[[Any, Outputs], Outputs]


def _ours_clip_outputs(ours: Any, x: Outputs) -> Outputs:
    """Our CLIP: both towers and the logits per image."""
    return {"image_features": ours.encode_image(x["images"]), "text_features": ours.encode_text(x["text"]),
            "logits_per_image": ours(x["images"], x["text"])[0]}


# open_clip: the tiny quick_gelu ViT of helpers (2 layers, 32 px, patches of 8, OpenAI's 64-wide heads)

def _open_clip_peer() -> Any:
    from helpers import open_clip_tiny

    return fill_weights_(open_clip_tiny(quick_gelu=True), seed=1)


def _open_clip_inputs() -> Outputs:
    return {"images": randn(11, 3, 3, 32, 32), "text": bpe_ids(12, [0, 4, 17, 75])}


def _open_clip_outputs(oc: Any, x: Outputs) -> Outputs:
    images, text, scale = oc(x["images"], x["text"])  # normalised features and exp(logit_scale)
    return {"image_features": oc.encode_image(x["images"]), "text_features": oc.encode_text(x["text"]),
            "logits_per_image": scale * images @ text.t()}


def _open_clip_ours(oc: Any, _: Path) -> Any:
    from helpers import ours_from_open_clip

    return ours_from_open_clip(oc, quick_gelu=True)


# transformers' CLIPModel: a tiny config (exact GELU; heads of 32 in both towers), loaded from a saved folder

def _hf_clip_peer() -> Any:
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(
        text_config=dict(hidden_size=64, intermediate_size=256, num_attention_heads=2, num_hidden_layers=2,
                         max_position_embeddings=77, vocab_size=49408, hidden_act="gelu", bos_token_id=49406,
                         eos_token_id=49407),
        vision_config=dict(hidden_size=96, intermediate_size=384, num_attention_heads=3, num_hidden_layers=2,
                           image_size=48, patch_size=16, hidden_act="gelu"),
        projection_dim=40,
    )
    return fill_weights_(CLIPModel(cfg).eval(), seed=2)


def _hf_clip_inputs() -> Outputs:
    return {"images": randn(21, 3, 3, 48, 48), "text": bpe_ids(22, [2, 9, 30])}


def _hf_clip_outputs(hf: Any, x: Outputs) -> Outputs:
    return {"image_features": hf.get_image_features(pixel_values=x["images"]),
            "text_features": hf.get_text_features(input_ids=x["text"]),
            "logits_per_image": hf(input_ids=x["text"], pixel_values=x["images"]).logits_per_image}


def _hf_clip_ours(hf: Any, tmp: Path) -> Any:
    import clip_model

    hf.save_pretrained(tmp / "hf_clip")
    model, _ = clip_model.load(tmp / "hf_clip")
    return model.eval()


# transformers' SiglipModel: test_siglip's CONFIGS["siglip"], converted by clip_model.siglip.from_hf

def _siglip_peer() -> Any:
    from test_siglip import CONFIGS
    from transformers import SiglipConfig, SiglipModel

    text, vision = CONFIGS["siglip"]
    return fill_weights_(SiglipModel(SiglipConfig(text_config=text, vision_config=vision)).eval(), seed=3)


def _siglip_inputs() -> Outputs:
    rs = np.random.RandomState(32)
    ids = rs.randint(2, 99, (3, 64))
    for row, n in enumerate([20, 5, 64]):
        ids[row, n:] = 1  # padded with the end token, as SigLIP's tokenizer pads (no attention mask)
    return {"images": randn(31, 4, 3, 32, 32), "text": torch.from_numpy(ids.astype(np.int64))}


def _siglip_outputs(hf: Any, x: Outputs) -> Outputs:
    return {"image_features": hf.get_image_features(pixel_values=x["images"]),
            "text_features": hf.get_text_features(input_ids=x["text"]),
            "logits_per_image": hf(input_ids=x["text"], pixel_values=x["images"]).logits_per_image}


def _siglip_ours(hf: Any, _: Path) -> Any:
    from clip_model import load_state_dict_strict
    from clip_model.siglip import SigLIP, SigLIPConfig, from_hf

    ours = SigLIP(SigLIPConfig.from_hf(hf.config.to_dict())).eval()
    load_state_dict_strict(ours, from_hf(hf.state_dict()), "transformers SiglipModel (golden)")
    return ours


def _siglip_ours_outputs(ours: Any, x: Outputs) -> Outputs:
    return {"image_features": ours.encode_image(x["images"]), "text_features": ours.encode_text(x["text"]),
            "logits_per_image": ours(x["images"], x["text"])}


# transformers' XCLIPModel: test_xclip's tiny config (patches of 16, 8 frames), converted by clip_model.xclip.from_hf

def _xclip_peer() -> Any:
    from transformers import XCLIPConfig, XCLIPModel

    text = dict(vocab_size=99, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=1,
                max_position_embeddings=16)
    vision = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                  patch_size=16, num_frames=8, mit_hidden_size=64, mit_intermediate_size=256,
                  mit_num_hidden_layers=1, mit_num_attention_heads=1)
    cfg = XCLIPConfig(text_config=text, vision_config=vision, projection_dim=64, prompt_layers=2,
                      prompt_num_attention_heads=1)
    return fill_weights_(XCLIPModel(cfg).eval(), seed=4)


def _xclip_inputs() -> Outputs:
    rs = np.random.RandomState(42)
    ids = rs.randint(1, 97, (4, 16))
    ids[:, 0] = 0  # the start token
    ids[np.arange(4), [3, 7, 15, 9]] = 98  # the end token (the highest id: the text is pooled at the argmax)
    return {"video": randn(41, 2, 8, 3, 32, 32), "text": torch.from_numpy(ids.astype(np.int64))}


def _xclip_outputs(hf: Any, x: Outputs) -> Outputs:
    out = hf(input_ids=x["text"], pixel_values=x["video"])
    return {"video_embeds": out.video_embeds, "text_embeds": out.text_embeds, "logits_per_video": out.logits_per_video}


def _xclip_ours(hf: Any, _: Path) -> Any:
    from clip_model import load_state_dict_strict
    from clip_model.xclip import XCLIP, XCLIPConfig, from_hf

    ours = XCLIP(XCLIPConfig.from_hf(hf.config.to_dict())).eval()
    load_state_dict_strict(ours, from_hf(hf.state_dict()), "transformers XCLIPModel (golden)")
    return ours


def _xclip_ours_outputs(ours: Any, x: Outputs) -> Outputs:
    video, tokens = ours.encode_video_tokens(x["video"])
    text = ours.condition_text(tokens, ours.encode_text(x["text"]))  # (B, K, E): the text conditioned per video
    return {"video_embeds": F.normalize(video, dim=-1), "text_embeds": F.normalize(text, dim=-1),
            "logits_per_video": ours(x["video"], x["text"])}


CASES: dict[str, Case] = {
    "open_clip": Case("open_clip", _open_clip_peer, _open_clip_inputs, _open_clip_outputs, _open_clip_ours,
                      _ours_clip_outputs),
    "hf_clip": Case("transformers", _hf_clip_peer, _hf_clip_inputs, _hf_clip_outputs, _hf_clip_ours,
                    _ours_clip_outputs),
    "siglip": Case("transformers", _siglip_peer, _siglip_inputs, _siglip_outputs, _siglip_ours, _siglip_ours_outputs),
    "xclip": Case("transformers", _xclip_peer, _xclip_inputs, _xclip_outputs, _xclip_ours, _xclip_ours_outputs),
}


def run(fn: Callable[..., Outputs], *args: Any) -> dict[str, np.ndarray]:
    """``fn(*args)`` without gradients, as float32 NumPy arrays."""
    with torch.no_grad():
        return {k: v.detach().float().cpu().numpy() for k, v in fn(*args).items()}


# ---- the files ------------------------------------------------------------------------------------------------------


def compute() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(arrays by "<case>/<output>", per-case metadata) from the installed peers."""
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {}
    for name, case in CASES.items():
        peer, inputs = case.peer(), case.inputs()
        outputs = run(case.peer_outputs, peer, inputs)
        arrays |= {f"{name}/{k}": v for k, v in outputs.items()}
        meta[name] = {"library": case.library, "weights_sha256": digest(peer.state_dict()),
                      "inputs_sha256": digest(inputs), "outputs": {k: _summary(v) for k, v in outputs.items()}}
    return arrays, meta


def _summary(a: np.ndarray) -> str:
    """One line a diff can be read in: shape, norm, largest magnitude, first values (5 significant digits, so that
    float32 noise seldom shows)."""
    flat = a.reshape(-1).astype(np.float64)
    return (f"shape {'x'.join(map(str, a.shape))}  l2 {np.linalg.norm(flat):.5g}  absmax {np.abs(flat).max():.5g}  "
            f"first {' '.join(f'{v:.5g}' for v in flat[:4])}")


def save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """np.savez's layout (np.load reads it) with a fixed date on every member: the same values, the same bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[name], dtype=np.float32), allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue())


def load() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The stored (arrays, peers.json)."""
    with np.load(NPZ, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return arrays, json.loads(JSON.read_text(encoding="utf-8"))


def differences(new: Mapping[str, np.ndarray], old: Mapping[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    """Per array: (largest absolute difference, that divided by max(1, the stored array's largest magnitude)); inf
    where an array is new, gone, or of another shape."""
    out = {}
    for k in sorted(set(new) | set(old)):
        if k not in new or k not in old or new[k].shape != old[k].shape:
            out[k] = (math.inf, math.inf)
            continue
        d = float(np.abs(new[k].astype(np.float64) - old[k]).max()) if new[k].size else 0.0
        out[k] = (d, d / max(float(np.abs(old[k]).max()), 1.0))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="compare with the stored files; write nothing")
    args = parser.parse_args(argv)
    arrays, meta = compute()
    versions = installed_versions() | {"numpy": importlib.metadata.version("numpy")}
    old_arrays, old = load() if NPZ.is_file() and JSON.is_file() else ({}, {})
    moved = False
    if not old_arrays:
        print("no stored golden files yet")
    for k, (d, rel) in differences(arrays, old_arrays).items() if old_arrays else ():
        moved |= rel > PEER_RTOL
        print(f"{k:36s} max |new - stored| {d:.3g}  relative {rel:.3g}{'  MOVED' if rel > PEER_RTOL else ''}")
    for name, v in versions.items():
        if old.get("versions", {}).get(name) != v:
            print(f"{name}: stored {old.get('versions', {}).get(name)}, installed {v}")
    if args.check:
        return 1 if moved else 0
    same = (old.get("versions") == versions and old.get("cases") == meta and set(old_arrays) == set(arrays)
            and all(np.array_equal(arrays[k], old_arrays[k]) for k in arrays))
    if same:
        print("unchanged: nothing written")
        return 0
    save_npz(NPZ, arrays)
    JSON.write_text(json.dumps({
        "about": "written by tests/golden/make_golden.py (its docstring: when to run it; review every diff)",
        "date": datetime.date.today().isoformat(), "versions": versions, "cases": meta}, indent=1) + "\n",
        encoding="utf-8")
    print(f"wrote {NPZ} ({NPZ.stat().st_size} bytes) and {JSON}: review the diff before committing it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
