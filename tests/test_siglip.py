"""SigLIP written here against transformers' SiglipModel on the same random weights (both towers and the logits), and
its SentencePiece tokenizer id for id against transformers' SiglipTokenizer and GemmaTokenizer on every shipped
class list, with SentencePiece models trained here (no hub files reach this machine)."""
from __future__ import annotations

import math
import string

import pytest
import torch
import torch.nn.functional as F
from transformers import GemmaTokenizer, SiglipConfig, SiglipModel, SiglipTokenizer

from clip_model import CheckpointError, load_state_dict_strict
from clip_model.siglip import SigLIP, SigLIPConfig, from_hf
from clip_model.sp_tokenizer import SentencePieceTokenizer, canonicalize
from datasets.labels import SHIPPED, shipped_labels
from pipeline.model.prompts import load_templates

# (text tower, vision tower) of transformers configs: SigLIP-like (patch 8, MLP not 4x) and SigLIP 2-like (another
# vocabulary size, patch 4, more layers); heads of width 8 and 16
CONFIGS = {
    "siglip": (dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                    max_position_embeddings=64),
               dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                    patch_size=8)),
    "siglip2": (dict(vocab_size=300, hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=3,
                     max_position_embeddings=64, projection_size=64),
                dict(hidden_size=64, intermediate_size=100, num_hidden_layers=3, num_attention_heads=4, image_size=16,
                     patch_size=4)),
}


def _pair(name: str, vocab_size: int | None = None) -> tuple[SiglipModel, SigLIP]:
    torch.manual_seed(0)
    text, vision = CONFIGS[name]
    text = text | ({"vocab_size": vocab_size} if vocab_size else {})
    hf_config = SiglipConfig(text_config=text, vision_config=vision)
    hf = SiglipModel(hf_config).eval()
    with torch.no_grad():  # trained-like scale and bias (init is 0 and 0)
        hf.logit_scale.fill_(math.log(112.0))
        hf.logit_bias.fill_(-16.5)
    ours = SigLIP(SigLIPConfig.from_hf(hf_config.to_dict())).eval()
    load_state_dict_strict(ours, from_hf(hf.state_dict()), f"transformers SiglipModel ({name})")
    return hf, ours


@pytest.mark.parametrize("name", list(CONFIGS))
def test_both_towers_and_the_logits_equal_transformers(name):
    hf, ours = _pair(name)
    size = CONFIGS[name][1]["image_size"]
    images = torch.randn(5, 3, size, size)
    ids = torch.randint(0, CONFIGS[name][0]["vocab_size"], (7, 64))
    ids[:, 20:] = 1  # padded, as the tokenizer pads (the model attends to the padding: no mask)
    with torch.no_grad():
        out = hf(input_ids=ids, pixel_values=images)  # no attention_mask: SigLIP was trained without one
        image, text = ours.encode_image(images), ours.encode_text(ids)
        assert (image - hf.get_image_features(pixel_values=images)).abs().max() < 1e-4
        assert (text - hf.get_text_features(input_ids=ids)).abs().max() < 1e-4
        logits = ours(images, ids)
    assert logits.shape == (5, 7) and (logits - out.logits_per_image).abs().max() < 1e-4
    assert torch.allclose(torch.sigmoid(logits), torch.sigmoid(out.logits_per_image), atol=1e-5)
    assert image.shape[1] == text.shape[1] == ours.config.embed_dim


def test_text_must_be_padded_to_the_context_and_bad_configs_are_refused():
    _, ours = _pair("siglip")
    with pytest.raises(ValueError, match="padded to exactly 64 tokens"):
        ours.encode_text(torch.zeros(2, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="multiple of patch_size"):
        SigLIPConfig(image_size=30, patch_size=8)
    with pytest.raises(ValueError, match="must equal vision_width"):
        SigLIPConfig(embed_dim=512)


# ---- the tokenizer ------------------------------------------------------------------------------------------------


def _corpus() -> list[str]:
    labels = [label for name in SHIPPED for label in shipped_labels(name)]
    return labels + [t.format(label) for t in load_templates("video") for label in labels[:200]]


@pytest.fixture(scope="module")
def sp_models(tmp_path_factory) -> dict[str, str]:
    """Tiny SentencePiece models in the two layouts: T5's (SigLIP: 0 <pad>, 1 </s>, 2 <unk>) and Gemma's
    (SigLIP 2: 0 <pad>, 1 <eos>, 2 <bos>, 3 <unk>, byte fallback)."""
    import sentencepiece as spm

    folder = tmp_path_factory.mktemp("spm")
    corpus = _corpus()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_prefix=str(folder / "siglip"), vocab_size=500, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        hard_vocab_limit=False, minloglevel=2)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_prefix=str(folder / "gemma"), vocab_size=500, model_type="bpe",
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
        unk_piece="<unk>", add_dummy_prefix=False, remove_extra_whitespaces=False,
        normalization_rule_name="identity", split_digits=True, byte_fallback=True, character_coverage=1.0,
        hard_vocab_limit=False, minloglevel=2)
    return {"siglip": str(folder / "siglip.model"), "siglip2": str(folder / "gemma.model")}


TRICKY = ["A Photo of a CAT!", "  riding,  a   bike. ", "don't stop", "", "snake_case-word", "Ünïcode café",
          "tabs\tand\nnewlines", "x" * 200, "Playing <|endoftext|> tricks", "Ski-ing (cross country)"]


@pytest.mark.slow
def test_siglip_tokenizer_equals_transformers_on_every_shipped_class_list(sp_models):
    ours = SentencePieceTokenizer(sp_models["siglip"], "siglip")
    theirs = SiglipTokenizer(vocab_file=sp_models["siglip"], model_max_length=64)
    texts = _corpus() + TRICKY
    expected = theirs(texts, padding="max_length", max_length=64, truncation=True)["input_ids"]
    got = ours(texts)
    assert got.tolist() == expected and got.shape == (len(texts), 64)
    assert (got[:, -1] == 1).all()  # even text cut at the context ends in </s>


def test_siglip2_tokenizer_equals_gemma_on_lowercased_text(sp_models):
    ours = SentencePieceTokenizer(sp_models["siglip2"], "siglip2")
    theirs = GemmaTokenizer(vocab_file=sp_models["siglip2"], add_bos_token=False, add_eos_token=True,
                            padding_side="right")
    texts = _corpus() + TRICKY
    expected = theirs([t.lower() for t in texts], padding="max_length", max_length=64, truncation=True)["input_ids"]
    got = ours(texts)
    assert got.tolist() == expected
    long = ours(["x" * 500])[0]
    assert long[-1] == 1 and (long != 0).all()  # cut to 63 pieces and the end token, no padding left


def test_canonicalize_and_a_bad_model_file(tmp_path):
    assert canonicalize("  Don't   STOP, now!\t") == "dont stop now"
    assert all(ch not in canonicalize(string.punctuation + "a") for ch in string.punctuation)
    bad = tmp_path / "spiece.model"
    bad.write_text("not a model")
    with pytest.raises(CheckpointError, match="not a SentencePiece model"):
        SentencePieceTokenizer(bad)
    with pytest.raises(ValueError, match="choose one of siglip, siglip2"):
        SentencePieceTokenizer(bad, "bert")


def test_a_transformers_folder_loads_as_siglip_with_its_preprocessing(tmp_path):
    import numpy as np
    from PIL import Image
    from transformers import SiglipImageProcessor

    import clip_model
    from pipeline.model.loading import clip_only, load_model

    hf, _ = _pair("siglip")
    hf.save_pretrained(tmp_path / "siglip")
    SiglipImageProcessor(size={"height": 32, "width": 32}, resample=3).save_pretrained(tmp_path / "siglip")
    model, transform = clip_model.load(tmp_path / "siglip")
    assert isinstance(model, SigLIP) and model.family == "siglip"
    assert (transform.cfg.resize, transform.cfg.interpolation, transform.cfg.mean) == ("squash", "bicubic",
                                                                                       (0.5, 0.5, 0.5))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8))
    ours = transform(image)[None]  # squashed to 32 x 32, no crop
    theirs = torch.from_numpy(SiglipImageProcessor.from_pretrained(tmp_path / "siglip")(image)["pixel_values"][0])
    assert ours.shape == (1, 3, 32, 32) and (ours - theirs).abs().max() < 1e-5
    with torch.no_grad():
        assert (model.encode_image(ours) - hf.get_image_features(pixel_values=ours)).abs().max() < 1e-4
    assert load_model(str(tmp_path / "siglip"), torch.device("cpu")).scoring.kind == "sigmoid"  # what every job loads
    with pytest.raises(ValueError, match="a siglip checkpoint; train fine-tunes clip checkpoints only"):
        clip_only(model, str(tmp_path / "siglip"))


def _siglip_folder(tmp_path, sp_models):
    """A transformers SigLIP folder with its image processor and a SentencePiece model trained here; scale 10 and
    bias -0.5 keep the probabilities away from 0 and 1, so that they say something."""
    import shutil

    import sentencepiece
    from transformers import SiglipImageProcessor

    hf, _ = _pair("siglip", sentencepiece.SentencePieceProcessor(model_file=sp_models["siglip"]).get_piece_size())
    with torch.no_grad():
        hf.logit_scale.fill_(math.log(10.0))
        hf.logit_bias.fill_(-0.5)
    folder = tmp_path / "siglip"
    hf.save_pretrained(folder)
    SiglipImageProcessor(size={"height": 32, "width": 32}, resample=3).save_pretrained(folder)
    shutil.copy(sp_models["siglip"], folder / "spiece.model")
    return hf, folder


def _hf_sigmoid(hf, folder, frames, labels):
    """transformers' SigLIP on uint8 frames (T, H, W, 3): get_image_features averaged over the frames, the text of
    SiglipTokenizer, sigmoid(scale * cos + bias) per label -> (C,) probabilities."""
    from PIL import Image
    from transformers import SiglipImageProcessor

    pixels = SiglipImageProcessor.from_pretrained(folder)([Image.fromarray(f) for f in frames], return_tensors="pt")
    theirs = SiglipTokenizer(vocab_file=str(folder / "spiece.model"), model_max_length=64)
    ids = torch.tensor(theirs(labels, padding="max_length", max_length=64, truncation=True)["input_ids"])
    with torch.no_grad():
        video_emb = F.normalize(hf.get_image_features(pixel_values=pixels["pixel_values"]).mean(0), dim=-1)
        text_emb = F.normalize(hf.get_text_features(input_ids=ids), dim=-1)
        return torch.sigmoid(10.0 * text_emb @ video_emb - 0.5)


@pytest.mark.slow
def test_classify_with_siglip_gives_its_sigmoid_probabilities(tmp_path, sp_models):
    """run_pipeline.py classify on a SigLIP folder, against transformers on the same frames, computed here: PyAV's
    frames at the TSN segment centres, SiglipImageProcessor, get_image_features averaged over frames, the text of
    SiglipTokenizer, and sigmoid(scale * cos + bias) for each label on its own."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    import av
    import numpy as np

    from datasets.synthetic import moving_square_frames, write_video

    hf, folder = _siglip_folder(tmp_path, sp_models)
    video = write_video(tmp_path / "v.mp4", moving_square_frames("moving left", "red", num_frames=24))
    labels = ["playing basketball", "riding a bike", "eating spaghetti"]
    (tmp_path / "labels.txt").write_text("\n".join(labels) + "\n")
    out = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "run_pipeline.py"), "classify", str(video),
                          "--model", str(folder), "--labels", str(tmp_path / "labels.txt"), "--templates", "none", "--topk", "3",
                          "--format", "json", "--device", "cpu", "--precision", "fp32", "--no-cache"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout)
    with av.open(str(video)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    picks = [frames[int((i + 0.5) * len(frames) / 8)] for i in range(8)]  # TSN test-time segment centres
    probs = _hf_sigmoid(hf, folder, picks, labels)
    expected = sorted(zip(probs.tolist(), labels), reverse=True)
    assert row["labels"] == [label for _, label in expected]
    np.testing.assert_allclose(row["scores"], [p for p, _ in expected], atol=2e-3)
    assert sum(row["scores"]) != pytest.approx(1.0, abs=1e-3)  # independent per label, not a softmax


def test_retrieval_with_siglip_ranks_as_transformers_scores(tmp_path, sp_models):
    """The retrieval protocol on a SigLIP folder: each caption's videos ranked as transformers' sigmoid(scale * cos +
    bias) on PyAV's TSN frames ranks them (monotone in the cosine, so our cosine ranking must equal it)."""
    import av

    from datasets.synthetic import moving_square_frames, write_video
    from helpers import run_retrieval, t2v_ranks

    hf, folder = _siglip_folder(tmp_path, sp_models)
    specs = [("moving left", "red"), ("moving up", "blue"), ("moving right", "green"), ("moving down", "red"),
             ("moving left", "yellow")]
    videos = [write_video(tmp_path / "clips" / f"v{i}.mp4", moving_square_frames(a, c, num_frames=24, seed=i))
              for i, (a, c) in enumerate(specs)]
    pairs = [(v, f"a {c} square {a}") for v, (a, c) in zip(videos, specs)] + [(videos[1], "something going up")]
    _, got = run_retrieval(tmp_path, str(folder), pairs)
    scores = []
    for v in videos:
        with av.open(str(v)) as c:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        picks = [frames[int((i + 0.5) * len(frames) / 8)] for i in range(8)]
        scores.append(_hf_sigmoid(hf, folder, picks, [c for _, c in pairs]))
    sim = torch.stack(scores)  # (V, T)
    expected = {(c, p.name): 1 + int((sim[:, t] > sim[videos.index(p), t]).sum()) for t, (p, c) in enumerate(pairs)}
    assert t2v_ranks(got) == expected
    assert len(set(expected.values())) > 1


@pytest.mark.slow
def test_tag_with_siglip_writes_every_label_above_the_threshold(tmp_path, sp_models):
    """tag with SigLIP: each window's probabilities are transformers' sigmoids on that window's frames (float16
    rows), ``labels_above`` holds every label whose own probability reaches the threshold (several or none per row,
    not a share), and retag equals a fresh tag."""
    import av
    import numpy as np
    import pandas as pd

    from datasets.synthetic import moving_square_frames, write_video
    from pipeline.jobs.tag.job import TagSettings, tag
    from pipeline.jobs.tag.query import retag
    from pipeline.model.runtime import ProtocolOverrides, RuntimeSettings
    from pipeline.video.open import DecodeRequest, decode_request
    from pipeline.video.samplers import Sampling

    hf, folder = _siglip_folder(tmp_path, sp_models)
    videos = [write_video(tmp_path / "archive" / f"v{i}.mp4", moving_square_frames(a, "red", num_frames=36, seed=i))
              for i, a in enumerate(["moving left", "moving up"])]
    labels = ("playing basketball", "riding a bike", "eating spaghetti", "a red square")
    rt = RuntimeSettings(str(folder), device="cpu", precision="fp32", decode_workers=1)
    settings = TagSettings(rt, labels, overrides=ProtocolOverrides(templates="none", num_frames=4), window_s=1.0, stride_s=0.5, topk=4,
                           above=0.45)
    assert tag(settings, tmp_path / "archive", tmp_path / "a.csv", progress=False).ok == 2
    windows = pd.read_csv(tmp_path / "a.segments.csv", keep_default_na=False).query("kind == 'window'")
    counts = []
    for v in videos:
        ref = decode_request(DecodeRequest(str(v), Sampling("windows", num_frames=4, window_s=1.0, stride_s=0.5)))
        with av.open(str(v)) as c:
            frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
        rows = windows[windows.path == str(v.resolve())].sort_values("window")
        assert len(rows) == len(ref.indices) > 1
        for (_, row), idx in zip(rows.iterrows(), ref.indices):
            probs = _hf_sigmoid(hf, folder, list(frames[idx]), list(labels)).numpy()
            got = {row[f"label_{j}"]: float(row[f"score_{j}"]) for j in range(1, 5)}
            np.testing.assert_allclose([got[label] for label in labels], probs, atol=3e-3)
            listed = row["labels_above"].split("|") if row["labels_above"] else []
            assert listed == [label for label, p in sorted(got.items(), key=lambda kv: -kv[1]) if p >= 0.45]
            counts.append(len(listed))
    assert max(counts) >= 2 or min(counts) == 0  # several labels at once, or none: not one share per row

    retag(tmp_path / "a.csv.index", ["a red square", "riding a bike"], tmp_path / "re.csv", templates="none",
          topk=2, device="cpu", above=0.45)
    fresh = TagSettings(rt, ("a red square", "riding a bike"), overrides=ProtocolOverrides(templates="none", num_frames=4), window_s=1.0,
                        stride_s=0.5, topk=2, above=0.45)
    tag(fresh, tmp_path / "archive", tmp_path / "b.csv", progress=False)
    for suffix in (".csv", ".segments.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / f"re{suffix}"), pd.read_csv(tmp_path / f"b{suffix}"))
