"""Video and audio I/O."""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np


def read_video_frames(path: str | Path) -> np.ndarray:
    """All frames of the first video stream as (T, H, W, 3) uint8 RGB."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    if not frames:
        raise ValueError(f"{path}: no decodable video frames")
    return np.stack(frames)
