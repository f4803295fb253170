"""Benchmark and training configs: YAML validated into frozen dataclasses at load, with one-line errors naming the key.

    cfg = load_config("configs/ucf101_zero_shot.yaml", overrides=["model=ViT-B/16", "dataset.splits=[1]"])
    cfg = load_config("train_world", cls=TrainConfig)   # a shipped config by name, from anywhere

The protocols ship inside the package (``configs/*.yaml`` is package data), so a name, or a ``configs/NAME.yaml`` path
that does not exist where the command runs, finds the shipped file.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from clip_model.errors import UserError
from datasets.captions import CAPTION_FORMATS
from datasets.world import WorldConfig
from pipeline.model.runtime import ProtocolOverrides, RuntimeSettings

CLASS_FORMATS = ("ucf101", "hmdb51", "kinetics", "ssv2", "list", "csv", "folders")
FORMATS = CLASS_FORMATS + CAPTION_FORMATS
PROTOCOLS = ("zero_shot", "linear_probe", "retrieval")
FRAME_PROTOCOLS = ("segments", "centre", "all")
CLASS_HEADLINES = ("top1", "top5", "mean_class_accuracy", "mean_top1_top5")
RETRIEVAL_HEADLINES = tuple(f"{d}_R@{k}" for d in ("t2v", "v2t") for k in (1, 5, 10))
HEADLINES = CLASS_HEADLINES + RETRIEVAL_HEADLINES
FLAT = {"flat": True}  # a field's dataclass whose keys the YAML holds at the config's own level


class ConfigError(UserError):
    """A config file or override is invalid; the message is one line naming the file, the key and the rule."""


@dataclass(frozen=True)
class DatasetConfig:
    format: str
    root: str
    annotations: str | None = None  # ucf101/hmdb51: split folder; kinetics/csv/list: file; ssv2: annotation JSON
    train_annotations: str | None = None  # kinetics/ssv2/csv/list: the training file; folders: the training root
    labels_json: str | None = None  # ssv2 labels.json
    classes: str | None = None  # list: a labels file or shipped list; kinetics: auto|kinetics400|600|700
    splits: tuple[int, ...] = (1,)  # ucf101/hmdb51 official splits
    subset: str | None = None  # kinetics: the CSV's split value to keep (e.g. validate)
    class_subsets: tuple[str, ...] = ()  # CSV/TXT files of class names: evaluate each subset (K600 zero-shot)
    skip_missing: bool = False  # skip annotated files that do not exist (counted in the report) instead of failing
    captions_json: str | None = None  # msrvtt: MSRVTT_data.json, the captions of a video-id list (the 9k train CSV)
    video_list: str | None = None  # didemo: the split's video list (test_list.txt), in its order


@dataclass(frozen=True)
class BenchmarkConfig:
    name: str
    dataset: DatasetConfig
    protocol: Literal["zero_shot", "linear_probe", "retrieval"] = "zero_shot"
    # model, device, precision, batch_size, backend, decode_workers, decode_timeout_s: top-level keys in the YAML
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings, metadata=FLAT)
    # templates, num_frames, pooling: top-level keys too; None (absent): the model's own
    overrides: ProtocolOverrides = field(default_factory=ProtocolOverrides, metadata=FLAT)
    frames: Literal["segments", "centre", "all"] = "segments"
    clips: int = 1
    frame_interval: int = 1  # clips > 1: frames apart within a clip (Open-VCLIP: 16)
    crops: int = 1
    prescale: bool = False  # scale frames above twice the model's input down in the decoder first: 9-11 % faster,
    #                         not the references' single resize (pipeline.features.frame_geometry.decode_cap)
    headline: Literal["top1", "top5", "mean_class_accuracy", "mean_top1_top5", "t2v_R@1", "t2v_R@5", "t2v_R@10",
                      "v2t_R@1", "v2t_R@5", "v2t_R@10"] = "top1"  # retrieval: t2v_R@1 unless set
    probe_c_grid: tuple[float, ...] = ()  # empty: the default grid
    probe_val_fraction: float = 0.2
    output_dir: str = "runs/{name}"
    cache_dir: str | None = None  # default: $CLIP_VIDEO_CACHE/features

    def __post_init__(self) -> None:
        _check_choice("protocol", self.protocol, PROTOCOLS)
        _check_choice("frames", self.frames, FRAME_PROTOCOLS)
        _check_choice("headline", self.headline, HEADLINES)
        _check_choice("dataset.format", self.dataset.format, FORMATS)
        retrieval = self.protocol == "retrieval"
        if retrieval != (self.dataset.format in CAPTION_FORMATS):
            raise ConfigError(f"protocol {self.protocol} with dataset.format {self.dataset.format}: retrieval reads "
                              f"captions ({', '.join(CAPTION_FORMATS)}), the other protocols class labels "
                              f"({', '.join(CLASS_FORMATS)})")
        if retrieval and self.headline == "top1":  # the default: retrieval's own headline instead
            object.__setattr__(self, "headline", "t2v_R@1")
        if self.headline not in (RETRIEVAL_HEADLINES if retrieval else CLASS_HEADLINES):
            raise ConfigError(f"headline {self.headline!r} is not a {self.protocol} metric; choose one of "
                              f"{', '.join(RETRIEVAL_HEADLINES if retrieval else CLASS_HEADLINES)}")
        if retrieval and self.overrides.templates is not None:
            raise ConfigError("templates: retrieval ranks the captions as written; prompt templates do not apply")
        for key in ("clips", "frame_interval"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} ({getattr(self, key)}) must be >= 1")
        if self.crops not in (1, 3):
            raise ConfigError(f"crops ({self.crops}) must be 1 or 3")
        if self.protocol == "linear_probe" and self.dataset.format in ("kinetics", "ssv2", "csv", "list", "folders") \
                and not self.dataset.train_annotations:
            raise ConfigError(f"dataset.train_annotations is required for a linear probe on {self.dataset.format}")
        bad = [s for s in self.dataset.splits if s not in (1, 2, 3)]
        if bad:
            raise ConfigError(f"dataset.splits {list(self.dataset.splits)}: each must be 1, 2 or 3")

    @property
    def out(self) -> Path:
        return Path(self.output_dir.format(name=self.name))



FREEZE = ("none", "image", "text", "both")


@dataclass(frozen=True)
class TrainConfig:
    """Contrastive training (``run_pipeline.py train``). Batches are global: split over ranks, then over
    accumulation steps, so a run's result does not depend on how many processes ran it."""

    name: str
    data: str = "world"  # world (fresh renders of the synthetic world) or a captions CSV (path,caption)
    world: WorldConfig = WorldConfig()
    caption_dropout: float = 0.75  # world: chance a caption leaves out the colour, the shape or both
    num_frames: int = 8  # captions CSV: frames per clip, one from the middle of each segment (world: world.num_frames)
    init: str = "random:tiny-vit"  # random:<arch>, a published name or any checkpoint clip_model loads
    pooling: Literal["mean", "temporal"] = "temporal"
    temporal_layers: int = 2
    freeze: Literal["none", "image", "text", "both"] = "none"
    steps: int = 800
    batch_size: int = 60
    grad_accum: int = 1
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 40
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"  # auto: bf16 (or fp16) on CUDA, off on CPU
    device: str = "auto"
    seed: int = 0
    checkpoint_every: int = 100
    metrics: Literal["csv", "jsonl"] = "csv"
    output_dir: str = "runs/{name}"

    def __post_init__(self) -> None:
        for key in ("steps", "batch_size", "grad_accum", "checkpoint_every", "temporal_layers", "num_frames"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} ({getattr(self, key)}) must be >= 1")
        if self.batch_size % self.grad_accum:
            raise ConfigError(f"batch_size ({self.batch_size}) must be a multiple of grad_accum ({self.grad_accum})")
        if not 0 <= self.caption_dropout <= 1:
            raise ConfigError(f"caption_dropout ({self.caption_dropout}) must lie in [0, 1]")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_steps < 0:
            raise ConfigError("lr must be > 0, weight_decay and warmup_steps >= 0")
        if self.freeze == "both" and self.pooling == "mean":
            raise ConfigError("freeze: both with pooling: mean leaves only the temperature to train; "
                              "use pooling: temporal (train a pooler on frozen CLIP) or freeze less")

    @property
    def out(self) -> Path:
        return Path(self.output_dir.format(name=self.name))


def changed_settings(saved: dict, now: dict, ignore: tuple[str, ...] = (), prefix: str = "") -> list[str]:
    """``key (old -> new)`` for every setting that differs between two plain dicts (nested keys dotted); top-level
    keys in ``ignore`` are skipped. What a resumable job names when it refuses to resume."""
    changed = []
    for key in sorted(set(saved) | set(now)):
        if not prefix and key in ignore:
            continue
        a, b = saved.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += changed_settings(a, b, prefix=f"{prefix}{key}.")
        elif a != b:
            changed.append(f"{prefix}{key} ({a!r} -> {b!r})")
    return changed


def _check_choice(key: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{key} {value!r} is not valid; choose one of {', '.join(map(str, choices))}")


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against a field's type hint; tuples accept lists, floats accept ints."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        return _coerce(key, value, next(a for a in args if a is not type(None)))
    if origin is Literal:
        _check_choice(key, value, args)
        return value
    if origin is tuple:
        if isinstance(value, (str, int, float)):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return tuple(_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value))
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str) and (not isinstance(value, hint) or isinstance(value, bool)):
        raise ConfigError(f"{key} must be {'an integer' if hint is int else 'a string'}, got {value!r}")
    return value


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    flat = {name: {f.name for f in dataclasses.fields(hints[name])} for name, f in fields.items()
            if f.metadata.get("flat")}
    keys = (set(fields) - set(flat)).union(*flat.values())
    if len(keys) != len(fields) - len(flat) + sum(map(len, flat.values())):  # one key, one field: never two
        raise TypeError(f"{cls.__name__}: a flat field's key is also another field's")
    unknown = sorted(set(data) - keys)
    if unknown:
        raise ConfigError(f"unknown key {prefix}{unknown[0]!r}; valid keys: {', '.join(sorted(keys))}")
    values = {name: _build(hints[name], {k: v for k, v in data.items() if k in inner}, prefix)
              for name, inner in flat.items()}
    for name, value in data.items():
        if name not in fields or name in flat:
            continue
        if dataclasses.is_dataclass(hints[name]):
            values[name] = _build(hints[name], value, f"{prefix}{name}.")
        else:
            values[name] = _coerce(prefix + name, value, hints[name])
    missing = [n for n, f in fields.items() if n not in values and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"missing required key {prefix}{missing[0]!r}")
    return cls(**values)


def as_written(cfg: Any) -> dict:
    """A config as its YAML holds it (flat fields' keys at their parent's level; tuples as lists): what a run
    records, and what ``_build`` reads back."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.metadata.get("flat"):
            out.update(as_written(value))
        elif dataclasses.is_dataclass(value):
            out[f.name] = as_written(value)
        else:
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def apply_override(data: dict, override: str) -> None:
    """``key.sub=value`` with a YAML value (``dataset.splits=[1,2]``, ``precision=bf16``)."""
    if "=" not in override:
        raise ConfigError(f"--set {override!r}: expected key=value")
    key, raw = override.split("=", 1)
    target = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise ConfigError(f"--set {override!r}: {part!r} is not a section")
    target[parts[-1]] = yaml.safe_load(raw)


SHIPPED = Path(__file__).resolve().parent


def shipped_configs() -> list[str]:
    return sorted(p.stem for p in SHIPPED.glob("*.yaml"))


def config_path(spec: str | Path) -> Path:
    """The config file ``spec`` names: the file itself if it exists, else the shipped config of that name (``NAME``,
    ``NAME.yaml`` or ``configs/NAME.yaml``)."""
    path = Path(spec).expanduser()
    if path.exists():
        return path
    if path.parent in (Path("."), Path("configs")):
        shipped = SHIPPED / (path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml")
        if shipped.is_file():
            return shipped
    raise ConfigError(f"{spec}: no such config file, and no shipped config of that name (shipped: "
                      f"{', '.join(shipped_configs())})")


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = (), cls: type = BenchmarkConfig) -> Any:
    path = config_path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {' '.join(str(e).split())}") from None
    try:
        for override in overrides:
            apply_override(data, override)
        return _build(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{path}: {' '.join(str(e).split())}") from None
