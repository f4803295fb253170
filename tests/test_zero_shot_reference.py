"""Our zero-shot probabilities against an independent computation written here, on the same random weights:
PyAV frames at the documented indices, torchvision resize/crop/normalise, open_clip's encoders, mean pooling and a
softmax over prompt-ensembled classes."""
from __future__ import annotations

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

import clip_model
from helpers import open_clip_model, ours_from_open_clip
from pipeline.jobs.classify import ClassifySettings, classify_videos
from pipeline.model.runtime import ProtocolOverrides, RuntimeSettings

CLASSES = ("juggling balls", "playing the cello", "surfing", "riding a bike", "cooking")
TEMPLATES = ["a photo of a person {}.", "a video of a person {}.", "a example of a person {}."]


def _reference(path, oc, num_frames: int, size: int) -> torch.Tensor:
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    n = len(frames)
    idx = [int(np.floor((i + 0.5) * n / num_frames)) for i in range(num_frames)]  # the documented TSN rule
    x = torch.from_numpy(np.stack([frames[i] for i in idx])).permute(0, 3, 1, 2)  # (T, 3, H, W) uint8
    x = TF.resize(x, size, interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    x = TF.center_crop(x, [size, size]).float() / 255
    x = TF.normalize(x, mean=list(clip_model.config.OPENAI_MEAN), std=list(clip_model.config.OPENAI_STD))
    with torch.no_grad():
        video = F.normalize(oc.encode_image(x).mean(0), dim=-1)
        text = []
        for c in CLASSES:
            t = F.normalize(oc.encode_text(clip_model.tokenize([tpl.format(c) for tpl in TEMPLATES])), dim=-1)
            text.append(F.normalize(t.mean(0), dim=-1))
        return (oc.logit_scale.exp() * video @ torch.stack(text).t()).softmax(-1)


@pytest.mark.slow
def test_zero_shot_matches_an_independent_open_clip_computation(tmp_path, sample_videos):
    oc = open_clip_model("ViT-B-32", seed=4)
    with torch.no_grad():
        oc.logit_scale.fill_(np.log(100.0))  # CLIP's cap: the sharpest temperature, so classes separate most
    ckpt = clip_model.save_checkpoint(ours_from_open_clip(oc), tmp_path / "model.pt")
    (tmp_path / "templates.txt").write_text("\n".join(TEMPLATES))
    videos = [p for p in sample_videos if p.name in ("bikes.mp4", "carphone_pristine.mp4")]
    settings = ClassifySettings(RuntimeSettings(str(ckpt), device="cpu", backend="pyav"), CLASSES,
                                overrides=ProtocolOverrides(templates=str(tmp_path / "templates.txt"), num_frames=6), topk=5)
    results = classify_videos(settings, videos)
    for path, result in zip(videos, results):
        assert result.error is None, result.error
        expected = _reference(path, oc, 6, 224)
        assert expected.max() - expected.min() > 0.02  # the comparison discriminates (20x the tolerance)
        # The issue asks for 1e-3; we hold 1e-5 (measured ~1e-7), because on random weights a wrong sample count
        # moved probabilities by only ~2e-4 and max instead of mean pooling by ~9e-4: 1e-3 would not catch them.
        assert (result.probs - expected).abs().max() < 1e-5, (path.name, result.probs, expected)
        assert result.prediction.labels[0] == CLASSES[int(expected.argmax())]
