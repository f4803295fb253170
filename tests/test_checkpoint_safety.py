"""Unsafe and malformed checkpoints are refused with one clear error, and nothing inside them runs."""
from __future__ import annotations

import json
import pickle
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import clip_model
from clip_model import CheckpointError
from helpers import open_clip_model


class _Payload:
    """Pickles to a call of builtins.exec that would create ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned.txt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "evil": _Payload(marker)}, tmp_path / "evil.pt")
    # weights_only refuses it; the restricted reader that then looks for plain data refuses it too, naming the global
    with pytest.raises(CheckpointError, match=r"evil\.pt: refusing to load: the pickle references "
                                              r"(__builtin__|builtins)\.exec, .*nothing from it was run"):
        clip_model.load(tmp_path / "evil.pt")
    assert not marker.exists()


def test_malicious_legacy_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned.txt"
    (tmp_path / "legacy.pth").write_bytes(pickle.dumps({"x": _Payload(marker)}, protocol=2))
    with pytest.raises(CheckpointError, match="refusing to load"):
        clip_model.read_checkpoint(tmp_path / "legacy.pth")
    assert not marker.exists()


def _tiny_archive(path: Path) -> None:
    oc = open_clip_model("tiny")
    torch.jit.trace(oc, (torch.zeros(1, 3, 32, 32), clip_model.tokenize(["a"])), strict=False, check_trace=False).save(str(path))


def _replace_member(src: Path, dst: Path, suffix: str, data: bytes) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            zout.writestr(item, data if item.filename.endswith(suffix) else zin.read(item))


def test_torchscript_archive_with_payload_is_refused(tmp_path):
    _tiny_archive(tmp_path / "good.pt")
    marker = tmp_path / "pwned.txt"
    _replace_member(tmp_path / "good.pt", tmp_path / "evil.pt", "/data.pkl", pickle.dumps(_Payload(marker), protocol=2))
    assert clip_model.detect_format(tmp_path / "evil.pt") == "torchscript"
    with pytest.raises(CheckpointError, match=r"evil\.pt: refusing TorchScript archive: data\.pkl references (__builtin__|builtins)\.exec"):
        clip_model.load(tmp_path / "evil.pt")
    assert not marker.exists()


def test_torchscript_tensor_record_size_is_checked(tmp_path):
    _tiny_archive(tmp_path / "good.pt")
    _replace_member(tmp_path / "good.pt", tmp_path / "short.pt", "/data/0", b"\x00" * 4)
    with pytest.raises(CheckpointError, match=r"tensor record .*/data/0 holds 4 bytes where \d+ were declared"):
        clip_model.load(tmp_path / "short.pt")


def test_safetensors_header_bomb_is_refused(tmp_path):
    path = tmp_path / "bomb.safetensors"
    path.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(CheckpointError, match="header claims 1099511627776 bytes"):
        clip_model.read_checkpoint(path)


def test_safetensors_tensor_outside_file_is_refused(tmp_path):
    path = tmp_path / "lies.safetensors"
    header = json.dumps({"w": {"dtype": "F32", "shape": [1 << 20], "data_offsets": [0, 4 << 20]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\x00" * 16)
    with pytest.raises(CheckpointError, match="'w'.*does not fit the file's 16 data bytes"):
        clip_model.read_checkpoint(path)


def test_mismatched_keys_are_all_listed(tmp_path):
    oc = open_clip_model("tiny")
    sd = clip_model.checkpoint.convert_open_clip(oc.state_dict())
    del sd["ln_final.bias"]
    sd["extra.weight"] = torch.zeros(1)
    sd["visual.proj"] = sd["visual.proj"][:, :3].contiguous()  # now the inferred embed_dim disagrees with text_projection
    save_file(sd, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointError) as e:
        clip_model.load(tmp_path / "bad.safetensors")
    msg = str(e.value)
    assert "missing keys: ln_final.bias" in msg and "unexpected keys: extra.weight" in msg
    assert "mis-shaped keys: visual.proj: checkpoint (128, 3) vs model (128, 48)" in msg


@pytest.mark.parametrize("content, match", [
    (b"", "unrecognised checkpoint format"),
    (b"hello, I am text", "unrecognised checkpoint format"),
    (b"PK\x03\x04garbage", "unreadable zip checkpoint"),
])
def test_garbage_files_get_one_line_errors(tmp_path, content, match):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match) as e:
        clip_model.load(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_unknown_name_lists_choices():
    with pytest.raises(CheckpointError, match="not a published model name.*ViT-B/32"):
        clip_model.load("ViT-H/99")


def test_non_tensor_state_dict_is_refused(tmp_path):
    torch.save({"state_dict": {"a": 1}}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="holds no state dict of tensors"):
        clip_model.load(tmp_path / "x.pt")


class _SetWithState:
    """Pickles as set() followed by BUILD: setting state on an allowed global's result."""

    def __reduce__(self):
        return set, (), {"x": 1}


def test_restricted_torch_save_reader_refuses_state_on_anything_but_its_stand_ins(tmp_path):
    from yacs.config import CfgNode

    torch.save({"model": {"w": torch.zeros(2)}, "config": CfgNode({"A": 1}), "x": _SetWithState()}, tmp_path / "b.pth")
    with pytest.raises(CheckpointError, match="sets the state of a set; nothing from it was run"):
        clip_model.read_checkpoint(tmp_path / "b.pth")


def test_a_tensor_repeating_its_storage_is_refused_on_both_paths(tmp_path):
    from yacs.config import CfgNode

    grown = torch.zeros(1).expand(1 << 20)  # one stored float viewed as a million
    torch.save({"visual.proj": grown}, tmp_path / "plain.pt")  # weights_only reads it
    with pytest.raises(CheckpointError, match="more elements than its storage"):
        clip_model.read_checkpoint(tmp_path / "plain.pt")
    torch.save({"model": {"w": grown}, "config": CfgNode({"A": 1})}, tmp_path / "cfg.pth")  # the restricted reader
    with pytest.raises(CheckpointError, match="more elements than its storage"):
        clip_model.read_checkpoint(tmp_path / "cfg.pth")
