"""CLIPs adapted to video on Kinetics-400: ViFi-CLIP, ActionCLIP, Open-VCLIP and FROSTER. Their checkpoint layouts
become OpenAI's (plus a temporal head for ActionCLIP), and Open-VCLIP's neighbour-frame attention is written here.

    ViFi-CLIP   {"model": module.image_encoder.* / module.text_encoder.* / module.logit_scale / prompt buffers,
                 "config": a yacs CfgNode}        -> CLIP; token_embedding comes from the CLIP it was tuned from
    ActionCLIP  {"model_state_dict": OpenAI keys, "fusion_model_state_dict": module.frame_position_embeddings /
                 module.transformer.resblocks.*}  -> CLIP + TemporalTransformer (6 layers, QuickGELU, LN eps 1e-12)
                mmaction2's {"state_dict": clip.* / adapter.*}: the same, LN eps 1e-5
    Open-VCLIP  {"model_state": model.<OpenAI keys>} -> OpenVCLIP (CLIP whose frames attend to their neighbours),
                interpolated with the original CLIP at load: w = r * w_clip + (1 - r) * w_ckpt
    FROSTER     the same layout plus projector_v/projector_t (training-only distillation heads, dropped)

Sources (read, not run): muzairkhattak/ViFi-CLIP trainers/vificlip.py and utils/tools.py; sallymmx/ActionCLIP
modules/Visual_Prompt.py and test.py; open-mmlab/mmaction2 projects/actionclip; wengzejia1/Open-VCLIP and
Visual-AI/FROSTER slowfast/models/torch_utils/functional.py (expand_temporal_view) and tools/test_net.py.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .config import CLIPConfig, PreprocessConfig
from .errors import CheckpointError, UserError
from .model import CLIP, ResidualAttentionBlock, SelfAttention, VisionTransformer

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ACTIONCLIP_LAYERS, ACTIONCLIP_HEAD_WIDTH = 6, 64


@dataclass(frozen=True)
class AdaptedModel:
    """A published video CLIP by name: where its weights are, and whether a program can fetch them."""

    family: str
    base: str  # the OpenAI CLIP it was tuned from (ViFi-CLIP's token embedding, Open-VCLIP's interpolation)
    file: str  # its name under <cache>/adapted/
    url: str
    sha256: str = ""  # the published SHA256 or its published leading digits; "" where none is published
    share_link: bool = False  # a page a person opens (Google Drive, SharePoint), not a file URL
    source: str = ""  # where the link is published


_MMACTION = "https://download.openmmlab.com/mmaction/v1.0/projects/actionclip/"
ADAPTED_MODELS = {
    "vificlip-b16-k400": AdaptedModel(
        "vificlip", "ViT-B/16", "vifi_clip_zero_shot_k400.pth",
        "https://mbzuaiac-my.sharepoint.com/:u:/g/personal/uzair_khattak_mbzuai_ac_ae/"
        "EW0shb6XYDxFi3BH6DT70rgBPDwgW_knQ8jDsarxINXezw?e=RbixXc", share_link=True,
        source="muzairkhattak/ViFi-CLIP README, zero-shot table, ViFi-CLIP row"),
    "actionclip-b32-k400": AdaptedModel(
        "actionclip", "ViT-B/32", "actionclip_vit-base-p32_8f_k400_20230801-8535b794.pth",
        _MMACTION + "actionclip_vit-base-p32-res224-clip-pre_g8xb16_1x1x8_k400-rgb/"
        "actionclip_vit-base-p32-res224-clip-pre_g8xb16_1x1x8_k400-rgb_20230801-8535b794.pth", sha256="8535b794",
        source="open-mmlab/mmaction2 projects/actionclip README (retrained, 8 frames)"),
    "actionclip-b16-k400": AdaptedModel(
        "actionclip", "ViT-B/16", "actionclip_vit-base-p16_8f_k400_20230801-b307a0cd.pth",
        _MMACTION + "actionclip_vit-base-p16-res224-clip-pre_g8xb16_1x1x8_k400-rgb/"
        "actionclip_vit-base-p16-res224-clip-pre_g8xb16_1x1x8_k400-rgb_20230801-b307a0cd.pth", sha256="b307a0cd",
        source="open-mmlab/mmaction2 projects/actionclip README (retrained, 8 frames)"),
    "openvclip-b16-k400": AdaptedModel(
        "openvclip", "ViT-B/16", "openvclip_b16_swa_2_22.pth",
        "https://drive.google.com/drive/folders/1VhwPFESkrr9Ed40yU5NEPIkrGIf6WQ9N", share_link=True,
        source="wengzejia1/Open-VCLIP README: the openvclip-b16 folder's swa_2_22.pth"),
    "froster-b16-k400": AdaptedModel(
        "froster", "ViT-B/16", "froster_b16_k400.pth",
        "https://drive.google.com/file/d/1PzlGbx1664oHDrqwdAKsfydBRoKkb_ea/view", share_link=True,
        source="Visual-AI/FROSTER README: the model pre-trained on K400 (cross-dataset)"),
}


def adapted_path(name: str, cache: Path) -> Path:
    """The local file of a named video CLIP: downloaded and checked where a stable URL exists; otherwise it must have
    been put in place by hand, and the error says which file, from where, to where."""
    from .download import download

    entry = ADAPTED_MODELS[name]
    dest = cache / "adapted" / entry.file
    if not entry.share_link:
        return download(entry.url, entry.sha256, dest)
    if dest.is_file():
        return dest
    digest = f"; its SHA256 is {entry.sha256}" if entry.sha256 else "; its authors publish no SHA256"
    raise CheckpointError(f"{name}: its weights sit behind a share link a program cannot follow: download them from "
                          f"{entry.url} ({entry.source}) and put the file at {dest}{digest}")


# Each family's test-time transform, from its evaluation code (mmcv and F.interpolate resize without antialiasing;
# PIL, which ActionCLIP's own pipeline uses, with it); the layouts that read each family apply its own.


def vificlip_preprocess(image_size: int) -> PreprocessConfig:
    """ViFi-CLIP datasets/build.py: mmcv short side int(256/224*224), centre crop, ImageNet statistics."""
    return PreprocessConfig(image_size, IMAGENET_MEAN, IMAGENET_STD, "bilinear", resize_to=image_size * 256 // 224,
                            antialias=False)


def actionclip_preprocess(image_size: int) -> PreprocessConfig:
    """ActionCLIP utils/Augmentation.py: GroupScale(256) (PIL bicubic), centre crop 224, CLIP statistics."""
    return PreprocessConfig(image_size, interpolation="bicubic", resize_to=image_size * 256 // 224)


def mmaction2_actionclip_preprocess(image_size: int) -> PreprocessConfig:
    """mmaction2's ActionCLIP test pipeline: mmcv Resize(-1, 256), bilinear, centre crop."""
    return PreprocessConfig(image_size, interpolation="bilinear", resize_to=image_size * 256 // 224, antialias=False)


def openvclip_preprocess(image_size: int) -> PreprocessConfig:
    """Open-VCLIP and FROSTER datasets/transform.py: F.interpolate bilinear to a short side of 224, crop 224."""
    return PreprocessConfig(image_size, interpolation="bilinear", antialias=False)


# ---- layouts -------------------------------------------------------------------------------------------------------


def _strip(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def is_vificlip(keys: Iterable[str]) -> bool:
    """Whether state-dict ``keys`` (``module.`` stripped) are ViFi-CLIP's: an image and a text encoder."""
    keys = list(keys)
    return any(k.startswith("image_encoder.") for k in keys) and any(k.startswith("text_encoder.") for k in keys)


def from_vificlip(sd: Mapping[str, torch.Tensor], token_embedding: torch.Tensor) -> dict[str, torch.Tensor]:
    """ViFi-CLIP's ``model`` (``module.`` already stripped) -> OpenAI layout. Its prompt-learner buffers are dropped
    (they cover its training classes only); ``token_embedding`` is the original CLIP's, which ViFi-CLIP never tunes."""
    out = {f"visual.{k}": v for k, v in _strip(sd, "image_encoder.").items()}
    out |= _strip(sd, "text_encoder.")
    out["logit_scale"] = sd["logit_scale"]
    out["token_embedding.weight"] = token_embedding
    return {k: v.float() for k, v in out.items()}


def actionclip_head(fusion: Mapping[str, torch.Tensor], eps: float) -> dict:
    """An ActionCLIP fusion transformer (``Transf``), ``module.``/``adapter.`` stripped, as a temporal pooler
    checkpoint entry: {"config": TemporalConfig fields, "state_dict": TemporalTransformer keys}."""
    positions = fusion["frame_position_embeddings.weight"]  # (77 or T, E): rows 0..T-1 are used
    layers = len({k.split(".")[2] for k in fusion if k.startswith("transformer.resblocks.")})
    width = positions.shape[1]
    state = {"positional_embedding": positions.float()}
    state |= {k: v.float() for k, v in fusion.items() if k.startswith("transformer.")}
    return {"config": {"width": width, "num_frames": positions.shape[0], "layers": layers,
                       "heads": width // ACTIONCLIP_HEAD_WIDTH, "quick_gelu": True, "eps": eps},
            "state_dict": state}


def from_openvclip(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Open-VCLIP's or FROSTER's ``model_state`` -> OpenAI layout. The frozen teacher (``raw_model.*``) and
    FROSTER's projectors (``projector_v``/``projector_t``) are training-only."""
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    return {k: v.float() for k, v in _strip(sd, "model.").items()
            if k not in ("input_resolution", "context_length", "vocab_size")}


def interpolate(sd: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor], ratio: float,
                ) -> dict[str, torch.Tensor]:
    """Open-VCLIP's test-time weight patching: ``ratio * base + (1 - ratio) * sd`` for every key of the original
    CLIP ``base`` (``ratio`` is the original's share); keys only in ``sd`` are kept as they are."""
    if not 0.0 <= ratio <= 1.0:
        raise UserError(f"interpolation ratio {ratio} must lie in [0, 1]")
    out = dict(sd)
    for k, w in base.items():
        if k in out:
            if out[k].shape != w.shape:
                raise UserError(f"{k}: checkpoint {tuple(out[k].shape)} vs original CLIP {tuple(w.shape)}")
            out[k] = ratio * w.float() + (1.0 - ratio) * out[k].float()
    return out


# ---- Open-VCLIP's neighbour-frame attention ----------------------------------------------------------------------


class NeighbourFrameAttention(SelfAttention):
    """Self-attention whose keys and values also hold every token of the previous and the next frame of the same
    clip (after this layer's ln_1 and input projection). At a clip's first and last frame the missing neighbour is
    all-zero keys and values, unmasked, as Open-VCLIP computes it: each still takes softmax weight exp(0) and
    contributes nothing. ``frames`` (T) is set per call; rows are clips' frames in a row, (B*T, L, D)."""

    frames = 1
    enabled = True

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        BT, L, D = x.shape
        T = self.frames
        if not self.enabled or T == 1:
            return super().forward(x, causal)
        if BT % T:
            raise ValueError(f"{BT} frames are not whole clips of {T}")
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (B*T, L, 3D)
        q, k, v = qkv.view(BT, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4).unbind(0)  # (B*T, H, L, Dh)
        k, v = (self._with_neighbours(t, T) for t in (k, v))  # (B*T, H, 3L, Dh)
        out = F.scaled_dot_product_attention(q, k, v)  # (B*T, H, L, Dh)
        return self.out_proj(out.transpose(1, 2).reshape(BT, L, D))

    @staticmethod
    def _with_neighbours(t: torch.Tensor, T: int) -> torch.Tensor:
        """(B*T, H, L, Dh) -> (B*T, H, 3L, Dh): [frame t+1, frame t-1, frame t], zeros past the clip's ends."""
        BT, H, L, Dh = t.shape
        clips = t.view(BT // T, T, H, L, Dh)
        nxt, prev = torch.zeros_like(clips), torch.zeros_like(clips)
        nxt[:, :-1] = clips[:, 1:]
        prev[:, 1:] = clips[:, :-1]
        return torch.cat([nxt, prev, clips], dim=3).view(BT, H, 3 * L, Dh)


class NeighbourFrameVision(VisionTransformer):
    """CLIP's ViT with ``NeighbourFrameAttention`` in every block (the parameter names are CLIP's)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for block in self.transformer.resblocks:
            assert isinstance(block, ResidualAttentionBlock)
            block.attn.__class__ = NeighbourFrameAttention  # same parameters, another forward

    def set_frames(self, frames: int, enabled: bool = True) -> None:
        for block in self.transformer.resblocks:
            assert isinstance(block, ResidualAttentionBlock) and isinstance(block.attn, NeighbourFrameAttention)
            block.attn.frames, block.attn.enabled = frames, enabled


class OpenVCLIP(CLIP):
    """Open-VCLIP and FROSTER: CLIP whose frames see their neighbours in every vision block. ``encode_clip_frames``
    (B, T, 3, S, S) -> (B, T, E) frame embeddings; the frames of a clip go through the model together."""

    family = "openvclip"

    def __init__(self, config: CLIPConfig, preprocess: PreprocessConfig | None = None, family: str | None = None):
        if config.vision.is_resnet:
            raise UserError("Open-VCLIP's neighbour-frame attention needs a ViT image tower")
        super().__init__(config, preprocess, visual=NeighbourFrameVision(config.vision, config.embed_dim,
                                                                          config.quick_gelu), family=family)
        self.neighbours = True  # False: plain CLIP frame by frame (what ratio 1 must then equal)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) frames, encoded as ONE clip of N frames (use ``encode_clip_frames`` for several clips)."""
        return self.encode_clip_frames(images[None])[0]

    def encode_clip_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, S, S) -> (B, T, E): each frame's embedding, its attention seeing its clip's neighbours (not one
        embedding per video: the pipeline pools them, mean of unit vectors)."""
        B, T = frames.shape[:2]
        assert isinstance(self.visual, NeighbourFrameVision)
        self.visual.set_frames(T, self.neighbours)
        return self.visual(frames.flatten(0, 1).to(self.dtype)).view(B, T, -1)  # (B, T, E)
