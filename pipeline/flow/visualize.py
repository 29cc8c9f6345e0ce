"""The Middlebury colour-wheel picture of a flow field (Baker et al. 2011): hue = direction, saturation = speed."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def _color_wheel() -> np.ndarray:
    """(55, 3) float RGB colours around the wheel: red, yellow, green, cyan, blue, magenta segments."""
    segments = [
        (15, (255, 0, 0), (255, 255, 0)),
        (6, (255, 255, 0), (0, 255, 0)),
        (4, (0, 255, 0), (0, 255, 255)),
        (11, (0, 255, 255), (0, 0, 255)),
        (13, (0, 0, 255), (255, 0, 255)),
        (6, (255, 0, 255), (255, 0, 0)),
    ]
    rows = []
    for n, start, end in segments:
        t = np.arange(n)[:, None] / n
        rows.append((1 - t) * np.array(start) + t * np.array(end))
    return np.concatenate(rows) / 255.0


def flow_to_color(flow: np.ndarray, max_flow: float | None = None) -> np.ndarray:
    """(H, W, 2) flow -> (H, W, 3) uint8 RGB. Speeds are scaled by `max_flow` (default: the largest speed)."""
    flow = np.nan_to_num(np.asarray(flow, dtype=np.float32))
    u, v = flow[..., 0], flow[..., 1]
    radius = np.sqrt(u * u + v * v)
    scale = max_flow if max_flow is not None else max(float(radius.max()), 1e-6)
    u, v, radius = u / scale, v / scale, radius / scale
    wheel = _color_wheel()
    ncols = len(wheel)
    angle = np.arctan2(-v, -u) / np.pi  # -1..1
    fk = (angle + 1) / 2 * (ncols - 1)
    k0 = np.floor(fk).astype(int)
    k1 = (k0 + 1) % ncols
    f = (fk - k0)[..., None]
    color = (1 - f) * wheel[k0] + f * wheel[k1]
    inside = (radius <= 1)[..., None]
    color = np.where(inside, 1 - radius[..., None] * (1 - color), color * 0.75)
    return np.clip(np.rint(255 * color), 0, 255).astype(np.uint8)


def color_wheel_legend(size: int) -> np.ndarray:
    """(size, size, 3) uint8 RGB key to `flow_to_color`: the colour of a flow pointing from the centre to each
    pixel, the rim being the scale's speed (`max_flow`); white outside the disc."""
    r = (size - 1) / 2
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    flow = np.stack([(xs - r) / r, (ys - r) / r], axis=-1)
    legend = flow_to_color(flow, max_flow=1.0)
    legend[np.hypot(flow[..., 0], flow[..., 1]) > 1] = 255
    return legend


def write_flow_png(path: str | Path, flow: np.ndarray, max_flow: float | None = None) -> Path:
    """Write the colour-wheel picture of `flow` as a PNG and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(flow_to_color(flow, max_flow), cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
    return path
