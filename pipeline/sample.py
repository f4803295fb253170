"""Frame samplers: pure functions from a video's length to frame indices. No I/O."""
from __future__ import annotations

import numpy as np


def segment_indices(num_frames: int, num_segments: int) -> np.ndarray:
    """TSN test-mode sampling: the middle frame of each of ``num_segments`` equal segments.

    Index i is ``floor((i + 0.5) * num_frames / num_segments)``; shorter videos repeat frames.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames ({num_frames}) must be >= 1")
    if num_segments < 1:
        raise ValueError(f"num_segments ({num_segments}) must be >= 1")
    i = np.arange(num_segments)
    return np.floor((i + 0.5) * num_frames / num_segments).astype(np.int64)
