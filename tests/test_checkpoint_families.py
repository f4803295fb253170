"""Every family saves into the project's checkpoint format and reloads as itself (issue 24): the same class and
family, the same outputs to 1e-6, the temporal pooler and SigLIP's tokenizer inside the one file. Before, the family
was not stored: Open-VCLIP and FROSTER came back as plain CLIP (their neighbour attention gone), X-CLIP's file did
not load, ViFi-CLIP and ActionCLIP lost their protocols."""
from __future__ import annotations

import pytest
import torch

import clip_model
from clip_model.adapted import OpenVCLIP
from clip_model.config import MODEL_CONFIGS
from clip_model.temporal import TemporalConfig, TemporalTransformer

TINY = MODEL_CONFIGS["tiny-vit"]
TEXTS = ["a person riding a bike", "someone juggling", "moving left"]


def _sentencepiece(folder) -> clip_model.siglip.SentencePieceTokenizer:
    import sentencepiece as spm

    from clip_model.sp_tokenizer import SentencePieceTokenizer

    corpus = [f"{a} {b} {c}" for a in ("a", "the", "someone") for b in ("person", "cat", "thing")
              for c in ("riding", "juggling", "moving left", "moving right", "a bike")]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_prefix=str(folder / "sp"), vocab_size=40, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        hard_vocab_limit=False, minloglevel=2)
    return SentencePieceTokenizer(folder / "sp.model", "siglip", 16)


def _model(family: str, folder):
    """A randomly initialised model of ``family`` (and its temporal pooler, for ActionCLIP), as loading builds it."""
    torch.manual_seed(0)
    head = None
    if family in ("openvclip", "froster"):
        model = OpenVCLIP(TINY, family=family)
    elif family == "xclip":
        model = clip_model.XCLIP(clip_model.XCLIPConfig(TINY, num_frames=4, mit_heads=2, prompt_heads=2))
    elif family == "siglip":
        config = clip_model.SigLIPConfig(image_size=32, patch_size=8, vision_width=64, vision_layers=1,
                                         vision_heads=2, vision_mlp=128, context_length=16, vocab_size=40,
                                         text_width=64, text_layers=1, text_heads=2, text_mlp=128, embed_dim=64)
        model = clip_model.SigLIP(config, tokenizer=_sentencepiece(folder))
    else:
        model = clip_model.CLIP(TINY, family=family)  # a CLIP fine-tuned for video, marked as loading marks it
        if family == "actionclip":
            head = TemporalTransformer(TemporalConfig(64, 8, 1, 2))
            for p in head.parameters():  # away from the zero init, so a lost pooler would show
                p.data.normal_(0, 0.05)
    with torch.no_grad():  # every weight drawn (some are left uninitialised until a checkpoint fills them)
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model.eval(), head


def _outputs(model, head) -> list[torch.Tensor]:
    frames = torch.randn(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(1))  # (B, T, 3, S, S)
    with torch.no_grad():
        if isinstance(model, clip_model.XCLIP):
            video = list(model.encode_video_tokens(frames))
        elif isinstance(model, OpenVCLIP):
            video = [model.encode_clip_frames(frames)]
        else:
            video = [model.encode_image(frames.flatten(0, 1))]
        if head is not None:
            video.append(head(video[0].view(2, 4, -1)))
        return video + [model.encode_text(model.tokenize(TEXTS))]


@pytest.mark.parametrize("family", ["clip", "vificlip", "actionclip", "openvclip", "froster", "xclip", "siglip"])
def test_every_family_saves_and_reloads_as_itself(tmp_path, family):
    model, head = _model(family, tmp_path)
    path = clip_model.save_checkpoint(model, tmp_path / "model.pt", temporal=head)
    (tmp_path / "sp.model").unlink(missing_ok=True)  # SigLIP's tokenizer travels inside the file
    loaded = clip_model.load_video_model(path)
    assert type(loaded.model) is type(model) and loaded.model.family == family
    assert (loaded.head is None) == (head is None)
    for ours, theirs in zip(_outputs(loaded.model, loaded.head), _outputs(model, head), strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
    from pipeline.model.loading import load_model

    job_model = load_model(str(path), torch.device("cpu"))
    assert job_model.family == family and job_model.pooling == ("temporal" if family == "actionclip" else
                                                                job_model.protocol.pooling)


def test_each_file_names_its_format_layout_family_and_architecture(tmp_path):
    """``Checkpoint.format`` is the container, ``layout`` the entry of ``LAYOUTS`` that read it."""
    model, _ = _model("openvclip", tmp_path)
    ours = clip_model.save_checkpoint(model, tmp_path / "ours.pt")
    plain = tmp_path / "plain.pt"
    torch.save(clip_model.create_model("tiny-vit", seed=0).state_dict(), plain)
    got = [(c.format, c.layout, c.family, c.architecture) for c in map(clip_model.read_checkpoint, (ours, plain))]
    assert got == [("pickle", "clip_video", "openvclip", "OpenVCLIP"), ("pickle", "openai state dict", "clip", "CLIP")]


def test_a_version_2_file_still_reloads_as_its_family(tmp_path):
    """Version 2 stored the family alone (stop 31); version 3 adds the class. Files already written keep loading."""
    model, _ = _model("froster", tmp_path)
    path = clip_model.save_checkpoint(model, tmp_path / "v3.pt")
    obj = torch.load(path, weights_only=True)
    del obj["architecture"]
    obj["version"] = 2
    torch.save(obj, tmp_path / "v2.pt")
    loaded, _ = clip_model.load(tmp_path / "v2.pt")
    assert type(loaded) is OpenVCLIP and loaded.family == "froster"


def test_a_file_no_layout_takes_is_refused_with_the_layout_names(tmp_path):
    torch.save({"encoder.weight": torch.zeros(2, 2)}, tmp_path / "other.pt")
    with pytest.raises(clip_model.CheckpointError) as e:
        clip_model.read_checkpoint(tmp_path / "other.pt")
    names = [layout.name for layout in clip_model.checkpoint.LAYOUTS]
    assert str(tmp_path / "other.pt") in str(e.value) and all(n in str(e.value) for n in names) and "\n" not in str(e.value)
