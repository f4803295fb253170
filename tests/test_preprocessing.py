"""One preprocessing path (issue 24): classify and benchmark hand the model, byte for byte, the inputs tag's decode
workers make from the same decoded frame, for every family's preprocessing. Before, classify resized with torch and
tag with Pillow, which differed by a grey level on some pixels of a real 720p frame."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from clip_model import ClipTransform, PreprocessConfig, adapted
from clip_model.siglip import SigLIPConfig
from clip_model.xclip import XCLIPConfig
from pipeline.features.clip_features import encode_clip
from pipeline.features.frame_geometry import FrameGeometry
from pipeline.features.window_decode import WindowTask, decode_windows
from pipeline.video.open import DecodeRequest, decode_request
from pipeline.video.samplers import Sampling

PREPROCESSING = {
    "clip": PreprocessConfig(224),
    "siglip": SigLIPConfig().default_preprocess(),
    "xclip": XCLIPConfig().default_preprocess(),
    "vificlip": adapted.vificlip_preprocess(224),
    "actionclip": adapted.actionclip_preprocess(224),
    "actionclip (mmaction2)": adapted.mmaction2_actionclip_preprocess(224),
    "openvclip": adapted.openvclip_preprocess(224),
}


class _Recorder:
    """What encode_clip needs of a VideoTextModel, keeping every input the model is given."""

    group = 1

    def __init__(self, preprocess: PreprocessConfig):
        self.preprocess, self.transform, self.inputs = preprocess, ClipTransform(preprocess), []

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x)
        return torch.zeros(len(x), 4)


@pytest.mark.slow
@pytest.mark.parametrize("family", PREPROCESSING)
def test_classify_gives_the_model_what_tag_gives_it(family, sample_videos):
    video = next(v for v in sample_videos if "bigbuckbunny" in v.name.lower())  # 1280x720 H.264
    pre = PREPROCESSING[family]
    cap = 2 * pre.image_size  # what both jobs ask the decoder for
    windows = Sampling("windows", num_frames=4, window_s=1.0, stride_s=1.0)  # the frames tag's windows take
    clip = decode_request(DecodeRequest(str(video), windows, resize=cap))
    recorder = _Recorder(pre)
    encode_clip(recorder, clip)  # classify's and benchmark's path, on those frames
    classify_inputs = torch.cat(recorder.inputs)  # (W·T, 3, S, S), frame clip.indices.flat[i] in row i

    task = WindowTask(str(video), FrameGeometry.of(pre), num_frames=4, window_s=1.0, stride_s=1.0, resize=cap)
    tagged = np.concatenate([c.frames for c in decode_windows(task) if hasattr(c, "frames")])  # (U, S, S, 3)
    distinct, first = np.unique(clip.indices.reshape(-1), return_index=True)  # tag's chunks: distinct, in order
    assert len(tagged) == len(distinct) >= 8
    tag_inputs = recorder.transform.normalize(torch.from_numpy(tagged).permute(0, 3, 1, 2))
    assert torch.equal(classify_inputs[first], tag_inputs)


@pytest.mark.slow
def test_classify_resizes_once_by_default_and_prescales_only_when_asked(sample_videos, monkeypatch):
    """classify asked the decoder to scale frames above twice the model's input and resized again: on this 720p
    video 0.97 grey levels off the references' single resize on average. Now one resize unless --prescale."""
    from pipeline.jobs.classify import ClassifySettings, classify_videos
    from pipeline.model.runtime import RuntimeSettings
    from pipeline.model.video_text import VideoTextModel

    video = next(v for v in sample_videos if "bigbuckbunny" in v.name.lower())
    seen: list[torch.Tensor] = []
    real = VideoTextModel.encode
    monkeypatch.setattr(VideoTextModel, "encode", lambda self, x: seen.append(x) or real(self, x))
    rt = RuntimeSettings("random:tiny-vit", device="cpu", precision="fp32", decode_workers=1)
    inputs = {}
    for prescale in (False, True):
        seen.clear()
        classify_videos(ClassifySettings(rt, ("a", "b"), prescale=prescale), [video])
        inputs[prescale] = torch.cat(seen)
    full = decode_request(DecodeRequest(str(video), Sampling("segments", num_frames=8)))  # full size, as decoded
    once = FrameGeometry(32).resize_crop(full.frames)  # the single resize (tiny-vit's 32 px input)
    expected = ClipTransform(PreprocessConfig(32)).normalize(torch.from_numpy(once).permute(0, 3, 1, 2))
    assert torch.equal(inputs[False], expected)
    assert not torch.equal(inputs[True], expected)


def test_tag_records_its_decoder_prescaling_and_resumes_indexes_written_before(tmp_path):
    """tag pre-scales (its --help says so) and records it in the index's settings; an index written before the
    setting was recorded was pre-scaled the same way and resumes; another value is refused, naming it."""
    import json

    from datasets.synthetic import moving_square_frames, write_video
    from pipeline.jobs.tag.job import TagSettings, tag
    from pipeline.model.runtime import ProtocolOverrides, RuntimeSettings

    write_video(tmp_path / "a" / "v.mp4", moving_square_frames("moving left", "red", num_frames=12))
    rt = RuntimeSettings("random:tiny-vit", device="cpu", precision="fp32", decode_workers=1)
    settings = TagSettings(rt, ("left", "right"), overrides=ProtocolOverrides(templates="none"), window_s=0.5, stride_s=0.5, topk=2)
    out = tmp_path / "t.csv"
    assert tag(settings, tmp_path / "a", out, progress=False).ok == 1
    state_file = tmp_path / "t.csv.index" / "state.json"
    state = json.loads(state_file.read_text())
    assert state["settings"]["decode_prescale"] == 2
    del state["settings"]["decode_prescale"]  # as an index of the previous release holds it
    state_file.write_text(json.dumps(state))
    assert tag(settings, tmp_path / "a", out, progress=False).skipped == 1
    state["settings"]["decode_prescale"] = 3
    state_file.write_text(json.dumps(state))
    with pytest.raises(ValueError, match=r"settings changed since it was written: decode_prescale \(3 -> 2\)"):
        tag(settings, tmp_path / "a", out, progress=False)
