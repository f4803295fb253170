"""X-CLIP written here against transformers' XCLIPModel on the same random weights: video embeddings, text embeddings
after the video-specific prompts, and logits_per_video, for two patch sizes and 8 and 16 frames, through both
layouts (transformers' names, and VideoX's: OpenAI CLIP's plus message_*, mit.*, prompts_*)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import XCLIPConfig as HFXCLIPConfig
from transformers import XCLIPModel

from clip_model import CLIPConfig, VisionConfig, load_state_dict_strict
from clip_model.xclip import XCLIP, XCLIPConfig, from_hf


def _hf(patch: int, frames: int) -> XCLIPModel:
    """64-wide heads everywhere (VideoX's rule, so the VideoX layout's shapes give the same model)."""
    torch.manual_seed(patch * 100 + frames)
    text = dict(vocab_size=99, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=1,
                max_position_embeddings=16)
    vision = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                  patch_size=patch, num_frames=frames, mit_hidden_size=64, mit_intermediate_size=256,
                  mit_num_hidden_layers=1, mit_num_attention_heads=1)
    hf = XCLIPModel(HFXCLIPConfig(text_config=text, vision_config=vision, projection_dim=64, prompt_layers=2,
                                  prompt_num_attention_heads=1)).eval()
    with torch.no_grad():  # off the initial values (alpha 0.1, zero biases, unit norms): every weight matters
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return hf


def _compare(hf: XCLIPModel, ours: XCLIP, frames: int) -> None:
    video = torch.randn(3, frames, 3, 32, 32)
    ids = torch.randint(1, 97, (5, 16))
    ids[:, 0], ids[torch.arange(5), torch.tensor([3, 7, 15, 9, 5])] = 0, 98  # start token, end token (the highest id)
    with torch.no_grad():
        out = hf(input_ids=ids, pixel_values=video)
        v, tokens = ours.encode_video_tokens(video)
        text = ours.condition_text(tokens, ours.encode_text(ids))
        logits = ours(video, ids)
    assert (F.normalize(v, dim=-1) - out.video_embeds).abs().max() < 1e-4
    assert (F.normalize(text, dim=-1) - out.text_embeds).abs().max() < 1e-4  # (B, K, E): per video
    assert logits.shape == (3, 5) and (logits - out.logits_per_video).abs().max() < 1e-4


@pytest.mark.parametrize("patch,frames", [(16, 8), (8, 8), (16, 16), (8, 16)])
def test_equals_transformers_through_both_layouts(patch, frames):
    hf = _hf(patch, frames)
    ours = XCLIP(XCLIPConfig.from_hf(hf.config.to_dict())).eval()
    videox = from_hf(hf.state_dict())
    load_state_dict_strict(ours, videox, "transformers XCLIPModel")
    _compare(hf, ours, frames)
    # VideoX's checkpoint: {"model": state dict} in these names; the architecture read from its shapes
    assert any(k.startswith("mit.resblocks.") for k in videox) and "prompts_generator.norm.weight" in videox
    assert "visual.transformer.resblocks.0.message_attn.in_proj_weight" in videox
    rebuilt = XCLIP(XCLIPConfig.from_state_dict(videox)).eval()
    assert rebuilt.xclip_config == ours.xclip_config
    load_state_dict_strict(rebuilt, videox, "VideoX layout")
    _compare(hf, rebuilt, frames)


def test_the_frame_count_is_the_checkpoints():
    hf = _hf(16, 8)
    ours = XCLIP(XCLIPConfig.from_hf(hf.config.to_dict())).eval()
    with pytest.raises(ValueError, match="built for 8 frames per video, got shape"):
        ours.encode_video(torch.randn(2, 16, 3, 32, 32))
    with pytest.raises(ValueError, match="not single images"):
        ours.encode_image(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="needs a ViT"):
        XCLIPConfig(CLIPConfig(vision=VisionConfig(layers=(1, 1, 1, 1), patch_size=None)))


def test_a_transformers_folder_and_a_videox_file_load_as_xclip(tmp_path):
    import clip_model

    hf = _hf(16, 8)
    hf.save_pretrained(tmp_path / "xclip")
    model, transform = clip_model.load(tmp_path / "xclip")
    assert isinstance(model, XCLIP) and model.family == "xclip" and model.num_frames == 8
    assert transform.cfg.mean == (0.485, 0.456, 0.406) and transform.cfg.interpolation == "bilinear"
    _compare(hf, model.eval(), 8)
    torch.save({"model": from_hf(hf.state_dict()), "epoch": 29, "max_accuracy": 80.4}, tmp_path / "k400_16_8.pth")
    videox, _ = clip_model.load(tmp_path / "k400_16_8.pth")  # VideoX's wrapper, read with weights_only
    assert isinstance(videox, XCLIP)
    _compare(hf, videox.eval(), 8)


# ---- X-CLIP through the jobs: classify, benchmark, tag, retag and search, against transformers on the same frames ----

XCLIP_LABELS = ["moving left", "moving right", "moving up", "moving down"]


@pytest.fixture(scope="module")
def xclip_folder(tmp_path_factory):
    """A transformers X-CLIP folder whose text tower takes CLIP's BPE ids (vocabulary 49408, 77 positions), 8 frames
    of 32 x 32 in patches of 16 (4 tokens a frame), with VideoMAE's preprocessing as XCLIPProcessor has it."""
    from transformers import VideoMAEImageProcessor

    torch.manual_seed(7)
    text = dict(vocab_size=49408, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=1,
                max_position_embeddings=77)
    vision = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                  patch_size=16, num_frames=8, mit_hidden_size=64, mit_intermediate_size=256, mit_num_hidden_layers=1,
                  mit_num_attention_heads=1)
    hf = XCLIPModel(HFXCLIPConfig(text_config=text, vision_config=vision, projection_dim=64, prompt_layers=2,
                                  prompt_num_attention_heads=1)).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        hf.logit_scale.fill_(2.0)  # probabilities away from 0 and 1
        hf.prompts_generator.alpha.fill_(0.5)  # conditioning that moves the ranking
    folder = tmp_path_factory.mktemp("xclip") / "xclip"
    hf.save_pretrained(folder)
    VideoMAEImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def _hf_outputs(folder, clips, labels):
    """transformers on uint8 clips (B, T, H, W, 3) with its own preprocessing (VideoMAEImageProcessor, as
    XCLIPProcessor has it) and CLIP's tokens (``tokenize``, equal to open_clip's in test_parity_open_clip): (B, C)
    probabilities, (B, E) video embeddings, (B, C, E) conditioned text embeddings."""
    from transformers import VideoMAEImageProcessor

    import clip_model

    hf = XCLIPModel.from_pretrained(folder).eval()
    processor = VideoMAEImageProcessor.from_pretrained(folder)
    pixels = torch.stack([processor(list(clip), return_tensors="pt")["pixel_values"][0] for clip in clips])
    with torch.no_grad():
        out = hf(input_ids=clip_model.tokenize(labels), pixel_values=pixels)
    return out.logits_per_video.softmax(-1), out.video_embeds, out.text_embeds


def _videos(folder, n=3, frames=48):
    from datasets.synthetic import moving_square_frames, write_video

    actions = ["moving left", "moving up", "moving right"]
    return [write_video(folder / f"v{i}.mp4", moving_square_frames(actions[i % 3], "red", num_frames=frames, seed=i))
            for i in range(n)]


def _decoded(path):
    import av
    import numpy as np

    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def test_retrieval_with_xclip_ranks_by_transformers_conditioned_scores(tmp_path, xclip_folder):
    """The retrieval protocol scores each (video, caption) pair with the caption as X-CLIP's prompt generator
    conditions it on that video: the ranks equal those of transformers' logits_per_video, exactly and through the
    index (plain-embedding candidates re-ranked by the conditioned score)."""
    from helpers import run_retrieval, t2v_ranks

    videos = _videos(tmp_path / "clips", n=5)
    rows = [(v.name, c) for v, c in zip(videos, ["a red square moving left", "it goes up", "to the right",
                                                 "a square moving left", "a square going upwards"])]
    rows.append((videos[0].name, "something moves left"))
    _, got = run_retrieval(tmp_path, str(xclip_folder), [(tmp_path / "clips" / p, c) for p, c in rows])
    clips = []
    for v in videos:
        frames = _decoded(v)
        clips.append(frames[[int((i + 0.5) * len(frames) / 8) for i in range(8)]])
    from transformers import VideoMAEImageProcessor

    import clip_model

    hf = XCLIPModel.from_pretrained(xclip_folder).eval()
    processor = VideoMAEImageProcessor.from_pretrained(xclip_folder)
    pixels = torch.stack([processor(list(clip), return_tensors="pt")["pixel_values"][0] for clip in clips])
    with torch.no_grad():
        sim = hf(input_ids=clip_model.tokenize([c for _, c in rows]), pixel_values=pixels).logits_per_video  # (V, T)
    names = [v.name for v in videos]
    expected = {(c, p): 1 + int((sim[:, t] > sim[names.index(p), t]).sum()) for t, (p, c) in enumerate(rows)}
    assert t2v_ranks(got) == expected
    assert len(set(expected.values())) > 1  # the ranking discriminates
    t2v = got[got.direction == "t2v"]
    assert t2v["index_rank"].tolist() == t2v["rank"].tolist()


@pytest.mark.slow
def test_classify_and_benchmark_with_xclip_equal_transformers(tmp_path, xclip_folder):
    """classify's probabilities (the model's 8 frames, bare label names by default) and a zero-shot benchmark's equal
    transformers' XCLIPModel on PyAV's frames at the TSN segment centres; another frame count is refused."""
    import json
    import subprocess
    import sys

    import numpy as np
    import pandas as pd

    from configs.schema import load_config
    from pipeline.jobs.benchmark import run_benchmark

    videos = _videos(tmp_path / "data" / "clips")
    (tmp_path / "labels.txt").write_text("\n".join(XCLIP_LABELS) + "\n")
    cmd = [sys.executable, str(Path(__file__).parents[1] / "run_pipeline.py"), "classify", *map(str, videos),
           "--model", str(xclip_folder), "--labels", str(tmp_path / "labels.txt"), "--topk", "4", "--format", "json",
           "--device", "cpu", "--precision", "fp32", "--no-cache", "--decode-workers", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    clips = []
    for v in videos:
        frames = _decoded(v)
        clips.append(frames[[int((i + 0.5) * len(frames) / 8) for i in range(8)]])
    probs, _, _ = _hf_outputs(xclip_folder, clips, XCLIP_LABELS)
    for row, p in zip(rows, probs):
        got = dict(zip(row["labels"], row["scores"]))
        np.testing.assert_allclose([got[label] for label in XCLIP_LABELS], p.numpy(), atol=2e-3)
        assert sum(row["scores"]) == pytest.approx(1.0, abs=1e-4)  # a softmax over the labels
    refused = subprocess.run([*cmd, "--num-frames", "16"], capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0
    assert "built for 8 frames per clip" in refused.stderr and "--num-frames 16 cannot run" in refused.stderr

    config = tmp_path / "bench.yaml"
    config.write_text(f"name: xclip\nmodel: {xclip_folder}\nprecision: fp32\ndecode_workers: 1\n"
                      f"output_dir: {tmp_path / 'runs'}\ncache_dir: {tmp_path / 'cache'}\n"
                      f"dataset:\n  format: folders\n  root: {tmp_path / 'folders'}\n")
    for v, action in zip(videos, ["moving left", "moving up", "moving right"]):
        target = tmp_path / "folders" / action / v.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(v.read_bytes())
    results = run_benchmark(load_config(config))
    predictions = pd.read_csv(tmp_path / "runs" / "predictions.csv")
    classes = sorted(["moving left", "moving up", "moving right"])  # folders: the class names, sorted
    ref, _, _ = _hf_outputs(xclip_folder, clips, classes)
    for _, row in predictions.iterrows():
        k = [v.name for v in videos].index(Path(row["path"]).name)
        assert row["prediction"] == classes[int(ref[k].argmax())]
        assert row["probability"] == pytest.approx(float(ref[k].max()), abs=2e-3)
    assert results["splits"][0]["videos"] == 3


@pytest.mark.slow
def test_watch_with_xclip_scores_each_window_as_transformers(tmp_path, xclip_folder):
    """watch on a file with X-CLIP: each window's 8 frames go through the model together and its probabilities are
    transformers' on those frames (the text conditioned on the window)."""
    import numpy as np

    from pipeline.jobs.watch import WatchSettings, watch
    from pipeline.model.runtime import RuntimeSettings
    from pipeline.video.open import DecodeRequest, decode_request
    from pipeline.video.samplers import Sampling

    [video] = _videos(tmp_path / "clips", n=1, frames=60)
    settings = WatchSettings(RuntimeSettings(str(xclip_folder), device="cpu", precision="fp32"), tuple(XCLIP_LABELS),
                             window_s=1.0, stride_s=0.5, topk=4)
    with open(tmp_path / "w.jsonl", "w") as out:
        watch(settings, str(video), out)
    windows = [json.loads(line) for line in (tmp_path / "w.jsonl").read_text().splitlines()]
    windows = [w for w in windows if w["type"] == "window"]
    ref = decode_request(DecodeRequest(str(video), Sampling("windows", num_frames=8, window_s=1.0, stride_s=0.5)))
    frames = _decoded(video)
    probs, _, _ = _hf_outputs(xclip_folder, [frames[row] for row in ref.indices[:len(windows)]], XCLIP_LABELS)
    assert len(windows) >= 3
    for w, p in zip(windows, probs):
        got = dict(zip(w["labels"], w["scores"]))
        np.testing.assert_allclose([got[label] for label in XCLIP_LABELS], p.numpy(), atol=2e-3)


def test_tag_retag_and_search_with_xclip(tmp_path, xclip_folder):
    """tag stores each window's MIT embedding and its tokens; every window's probabilities equal transformers' on
    that window's frames; retag equals a fresh tag for other labels; search re-ranks by the conditioned text and its
    scores equal transformers' cosines."""
    import numpy as np
    import pandas as pd

    from pipeline.jobs.tag.index import open_indexes
    from pipeline.jobs.tag.job import TagSettings, tag
    from pipeline.jobs.tag.query import retag, search
    from pipeline.model.runtime import RuntimeSettings
    from pipeline.video.open import DecodeRequest, decode_request
    from pipeline.video.samplers import Sampling

    videos = _videos(tmp_path / "archive")
    rt = RuntimeSettings(str(xclip_folder), device="cpu", precision="fp32", decode_workers=1, batch_size=12)
    settings = TagSettings(rt, tuple(XCLIP_LABELS), window_s=1.0, stride_s=0.5, topk=4, commit_every=2)
    summary = tag(settings, tmp_path / "archive", tmp_path / "a.parquet", progress=False)
    assert summary.ok == 3 and not summary.failed
    (index,) = open_indexes(tmp_path / "a.parquet.index")
    assert index.token_count() == 4 and index.state.settings["num_frames"] == 8  # the checkpoint's frame count
    assert index.state.settings["templates"] == "none"

    windows = pd.read_parquet(tmp_path / "a.segments.parquet").query("kind == 'window'")
    for v in videos:
        ref = decode_request(DecodeRequest(str(v), Sampling("windows", num_frames=8, window_s=1.0, stride_s=0.5)))
        frames = _decoded(v)
        probs, _, _ = _hf_outputs(xclip_folder, [frames[row] for row in ref.indices], XCLIP_LABELS)
        rows = windows[windows.path == str(v.resolve())].sort_values("window")
        assert len(rows) == len(ref.indices) > 1
        for (_, row), p in zip(rows.iterrows(), probs):
            got = {row[f"label_{j}"]: row[f"score_{j}"] for j in range(1, 5)}
            np.testing.assert_allclose([got[label] for label in XCLIP_LABELS], p.numpy(), atol=5e-3)  # float16 rows

    other = ["moving up", "moving down", "standing still"]
    retag(tmp_path / "a.parquet.index", other, tmp_path / "re.parquet", topk=3, device="cpu")
    fresh = TagSettings(rt, tuple(other), window_s=1.0, stride_s=0.5, topk=3, commit_every=2)
    tag(fresh, tmp_path / "archive", tmp_path / "b.parquet", progress=False)
    for suffix in (".parquet", ".segments.parquet"):
        a, b = pd.read_parquet(tmp_path / f"re{suffix}"), pd.read_parquet(tmp_path / f"b{suffix}")
        pd.testing.assert_frame_equal(a, b, atol=1e-6)

    hits = search(tmp_path / "a.parquet.index", "moving left", topk=6, device="cpu")
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    segments = [h for h in hits if h["kind"] == "segment"]
    assert segments
    for hit in segments:
        v = Path(hit["path"])
        ref = decode_request(DecodeRequest(str(v), Sampling("windows", num_frames=8, window_s=1.0, stride_s=0.5)))
        j = [round(float(t[0]), 3) for t in ref.timestamps].index(pytest.approx(hit["start_s"], abs=0.02))
        _, video_emb, text_emb = _hf_outputs(xclip_folder, [_decoded(v)[ref.indices[j]]], ["moving left"])
        assert hit["score"] == pytest.approx(float(video_emb[0] @ text_emb[0, 0]), abs=5e-3)
