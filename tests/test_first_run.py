"""What a new user trips on first (issue 23): shipped configs found by name from anywhere and inside the wheel, the
precision decision cached per host, summaries that count stored failures, help on every option."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from configs.schema import ConfigError, TrainConfig, load_config, shipped_configs

ROOT = Path(__file__).resolve().parents[1]


def test_a_shipped_config_is_found_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the repository, as after a pip install
    by_name = load_config("ucf101_zero_shot")
    assert by_name == load_config("configs/ucf101_zero_shot.yaml") == load_config(str(ROOT / "configs" /
                                                                                       "ucf101_zero_shot.yaml"))
    assert load_config("train_world.yaml", cls=TrainConfig).name == load_config(
        str(ROOT / "configs" / "train_world.yaml"), cls=TrainConfig).name
    with pytest.raises(ConfigError, match=r"nope: no such config file, and no shipped config of that name \(shipped: "
                                          r"actionclip_hmdb51_zero_shot, .*ucf101_zero_shot"):
        load_config("nope")
    (tmp_path / "ucf101_zero_shot.yaml").write_text("name: mine\n")  # a file of that name here wins
    with pytest.raises(ConfigError, match=r"^ucf101_zero_shot.yaml: "):
        load_config("ucf101_zero_shot.yaml")


def test_the_wheel_carries_every_shipped_config(tmp_path):
    source = tmp_path / "src"  # a copy of the tracked files: setuptools writes build/ beside the sources
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for rel in tracked:
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, source / rel)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(tmp_path), str(source)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    [wheel] = tmp_path.glob("clip_video-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"configs/{name}.yaml" for name in shipped_configs()} <= names
    assert len(shipped_configs()) >= 20
