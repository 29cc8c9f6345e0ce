"""Middlebury `.flo` files: float32 (u, v) flow with a magic tag; values above 1e9 mean unknown."""

from __future__ import annotations

from pathlib import Path

import numpy as np

TAG = 202021.25
UNKNOWN = 1e9

# The Middlebury "other" training sequences in ../shared/data/middlebury: (first frame, second frame, ground truth)
MIDDLEBURY_PAIRS = {
    "RubberWhale": ("frame10.png", "frame11.png", "flow10.flo"),
    "Grove2": ("frame10.png", "frame11.png", "flow10.flo"),
    "Urban2": ("frame10.png", "frame11.png", "flow10.flo"),
    "Venus": ("frame10.png", "frame11.png", "flow10.flo"),
    "Yosemite": ("yos9.png", "yos10.png", "correct_yos.flo"),
}


def read_flo(path: str | Path) -> np.ndarray:
    """(H, W, 2) float32 flow from a .flo file.

    Raises:
        ValueError: the file does not start with the .flo tag or is truncated.
    """
    data = Path(path).read_bytes()
    if len(data) < 12 or np.frombuffer(data[:4], np.float32)[0] != TAG:
        raise ValueError(f"{path} is not a Middlebury .flo file (bad tag)")
    w, h = (int(v) for v in np.frombuffer(data[4:12], np.int32))
    values = np.frombuffer(data[12:], np.float32)
    if values.size != 2 * w * h:
        raise ValueError(f"{path} is truncated: {values.size} values for a {w}x{h} flow")
    return values.reshape(h, w, 2).copy()


def write_flo(path: str | Path, flow: np.ndarray) -> None:
    """Write (H, W, 2) flow as a .flo file."""
    flow = np.asarray(flow, np.float32)
    h, w = flow.shape[:2]
    Path(path).write_bytes(np.float32(TAG).tobytes() + np.int32([w, h]).tobytes() + flow.tobytes())


def valid_mask(flow: np.ndarray) -> np.ndarray:
    """Pixels whose ground truth is known."""
    return np.abs(flow).max(axis=-1) < UNKNOWN


def end_point_error(flow: np.ndarray, truth: np.ndarray) -> float:
    """Mean end-point error over the pixels whose ground truth is known."""
    return float(np.linalg.norm(flow - truth, axis=-1)[valid_mask(truth)].mean())
