"""Model names, resolved in one place: what a ``--model`` (or ``clip_model.load``) argument names and where its
weights come from. Loading, the model identity the tag index and caches store, and the ``models`` listing all ask
here.

    ViT-B/32                       openai    OpenAI's published weights, SHA256 pinned (download.published_models)
    google/siglip-base-patch16-224 hub       a pinned Hugging Face repository (hub.HUB_MODELS)
    vificlip-b16-k400              adapted   a published video CLIP (adapted.ADAPTED_MODELS)
    random:tiny-vit                random    an untrained CLIP of a named architecture (config.MODEL_CONFIGS), seed 0
    anything else                  path      a checkpoint file or folder
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .adapted import ADAPTED_MODELS, adapted_path
from .checkpoint.containers import PLAIN_FAMILY
from .config import MODEL_CONFIGS
from .download import cache_dir, model_path, published_models
from .errors import CheckpointError, UserError
from .hub import HUB_MODELS, endpoint, hub_folder

RANDOM_PREFIX = "random:"
Kind = Literal["openai", "hub", "adapted", "random", "path"]


@dataclass(frozen=True)
class ModelName:
    """A model name and what is known of it before any weights are read (a path: nothing yet)."""

    spec: str
    kind: Kind
    family: str | None = None
    image_size: int | None = None
    frames: int | None = None  # fixed by the checkpoint (X-CLIP), or None: any
    weights_from: str = ""  # where its weights come from, in words

    @property
    def architecture(self) -> str:
        """A ``random:`` name's architecture (a key of ``MODEL_CONFIGS``)."""
        return self.spec[len(RANDOM_PREFIX):]


def resolve_name(spec: str | Path) -> ModelName:
    """What ``spec`` names: a published name, a hub id, a video CLIP's name, ``random:<architecture>`` or a path."""
    spec = str(spec)
    if spec.startswith(RANDOM_PREFIX):
        arch = spec[len(RANDOM_PREFIX):]
        if arch not in MODEL_CONFIGS:
            raise UserError(f"{spec}: unknown architecture {arch!r}; choose one of {', '.join(MODEL_CONFIGS)}")
        return ModelName(spec, "random", PLAIN_FAMILY, MODEL_CONFIGS[arch].vision.image_size,
                         weights_from="random weights, seed 0")
    if spec in published_models():
        host = published_models()[spec]["url"].split("/", 3)[2]
        return ModelName(spec, "openai", PLAIN_FAMILY, MODEL_CONFIGS[spec].vision.image_size,
                         weights_from=f"{host} (SHA256 pinned)")
    if spec in HUB_MODELS:
        hub = HUB_MODELS[spec]
        return ModelName(spec, "hub", hub.family, hub.image_size, hub.frames,
                         f"{endpoint().split('//')[-1]}/{spec} (SHA256 stated by the hub)")
    if spec in ADAPTED_MODELS:
        entry = ADAPTED_MODELS[spec]
        host = entry.url.split("/")[2]
        where = (f"by hand from {host} (a share link)" if entry.share_link
                 else f"{host} (SHA256 prefix {entry.sha256} in its name)")
        return ModelName(spec, "adapted", entry.family, MODEL_CONFIGS[entry.base].vision.image_size,
                         weights_from=where)
    return ModelName(spec, "path", weights_from="a checkpoint file or folder")


def published_names() -> list[ModelName]:
    """Every name that resolves to published weights, as ``models`` lists them."""
    return [resolve_name(n) for n in (*published_models(), *HUB_MODELS, *ADAPTED_MODELS)]


def random_names() -> list[str]:
    return [RANDOM_PREFIX + arch for arch in MODEL_CONFIGS]


def weights_path(name: ModelName, download_root: str | Path | None = None) -> Path:
    """Where ``name``'s weights are on this machine: downloaded (and checked) once for published names; a path
    must exist. A ``random:`` name has none."""
    root = Path(download_root) if download_root else None
    if name.kind == "openai":
        return model_path(name.spec, root)
    if name.kind == "hub":
        return hub_folder(name.spec, root)
    if name.kind == "adapted":
        return adapted_path(name.spec, root or cache_dir())
    if name.kind == "random":
        raise UserError(f"{name.spec}: an untrained model has no weights file")
    path = Path(name.spec).expanduser()
    if not path.exists():
        raise CheckpointError(
            f"{name.spec}: no such file or folder, and not a published model name ({', '.join(published_models())}), "
            f"hub id ({', '.join(HUB_MODELS)}), video CLIP ({', '.join(ADAPTED_MODELS)}) or random:<architecture>")
    return path
