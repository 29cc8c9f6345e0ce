"""Contact sheets: what a dataset's samples look like, one row per sample. RGB frames across the video, then for
each flow modality the flow in Middlebury colours (with the colour-wheel key and the tile's largest speed) and
the x and y images as stored; warped flow beside plain flow, with its homography's inliers. Tiles are scaled to
a readable height and labelled (video id, class, split, frame index). Also the frames of an animation of one
sample (RGB | flow colours). Pure: decoded samples in, pixels or encoded bytes out; `jobs.visualize` does the I/O.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipeline.flow.visualize import color_wheel_legend, flow_to_color
from schemas.sample import FLOW_MODALITIES, Sample, quantize

LABEL_PX = 30  # two lines of 8-point text above each tile
TITLE_PX = 24  # the row's title line
GAP_PX = 8
HEADER_PX = 44
DPI = 100


@dataclass(frozen=True)
class Tile:
    """One picture of a row and what it shows."""

    image: np.ndarray  # (h, w, 3) uint8 RGB at the stored size
    label: str  # one or two lines
    smooth: bool = True  # scaled with interpolation (frames); False keeps the stored pixels visible (flow)
    legend: bool = False  # a colour-wheel key in its corner


@dataclass(frozen=True)
class Row:
    title: str
    tiles: list[Tile]


@dataclass(frozen=True)
class Sheet:
    """The laid-out sheet: the pixels, and where each text and tile went (pixels from the top left)."""

    canvas: np.ndarray  # (H, W, 3) uint8
    texts: list[tuple[int, int, str]]  # (x, y of the text's top, text)
    tiles: list[tuple[int, int, int, int, str]]  # (x, y, width, height, label)


def choose_samples(keys: list[str], splits: list[str], labels: list[int], n: int) -> list[int]:
    """Positions of up to `n` samples spread across classes, then splits: every class once (in its first split),
    then every class in its next split, and so on, then second videos of each; a sheet of 8 from 4 classes and 2
    splits shows every (class, split) once, a sheet of 4 every class."""
    groups: dict[tuple[str, int], list[int]] = {}
    for i in sorted(range(len(keys)), key=lambda i: (splits[i], labels[i], keys[i])):
        groups.setdefault((splits[i], labels[i]), []).append(i)
    rank = {}  # (split, class) -> how many splits of that class come before it
    for split, label in sorted(groups):
        rank[split, label] = sum(1 for s, c in groups if c == label and s < split)
    order = sorted(groups, key=lambda g: (rank[g], g[1], g[0]))
    chosen, depth = [], 0
    while len(chosen) < n and any(depth < len(groups[g]) for g in order):
        chosen += [groups[g][depth] for g in order if depth < len(groups[g])]
        depth += 1
    return chosen[:n]


def sample_row(sample: Sample, class_name: str, flow_index: int | None = None) -> Row:
    """The tiles of one sample: RGB frames across the video, then per flow modality at `flow_index` (default:
    the middle flow) its colours and its x and y images as stored.

    Raises:
        ValueError: `flow_index` is outside the sample's flows.
    """
    meta = sample.meta
    tiles = []
    if sample.rgb:
        last = meta.num_frames - 1
        for i in sorted({0, last // 2, last}):  # first, middle, last
            tiles.append(Tile(sample.rgb_frame(i), f"RGB\nframe {i} of {meta.num_frames}"))
    flows = [m for m in FLOW_MODALITIES if m in sample.flow]
    if flows and meta.num_flows:
        index = meta.num_flows // 2 if flow_index is None else flow_index
        if not 0 <= index < meta.num_flows:
            raise ValueError(f"flow index {index} is outside 0..{meta.num_flows - 1} for {sample.key}")
        for modality in flows:
            tiles += flow_tiles(sample, modality, index)
    title = f"{sample.key}   class {class_name} ({meta.label})   {meta.split}   {meta.num_frames} frames {meta.width}x{meta.height}"
    return Row(title, tiles)


def flow_tiles(sample: Sample, modality: str, index: int) -> list[Tile]:
    """Flow `index` of `modality`: Middlebury colours scaled to its largest speed, and x and y as 8-bit images
    the way they are stored (128 = still, 0 and 255 = minus and plus the flow bound; lossless flow is shown
    quantized to 8 bits the same way)."""
    meta = sample.meta
    flow = sample.flow_frame(modality, index)
    speed = float(np.hypot(flow[..., 0], flow[..., 1]).max())
    head = f"{modality} {index}->{index + 1}"
    found = ""
    if modality == "warp_tvl1" and index < len(meta.homographies):
        h = meta.homographies[index]
        found = f", homography {h['inliers']} inliers" if h.get("found") else ", no homography"
    x, y = quantize(flow, meta.flow_bound)  # for 8-bit jpeg flow exactly the stored images
    gray = lambda p: np.repeat(p[..., None], 3, axis=-1)  # noqa: E731
    shown = "as stored" if meta.flow_encoding == "jpeg" else f"in 8 bits ({meta.flow_encoding} stored)"
    return [
        Tile(flow_to_color(flow, max_flow=max(speed, 1e-6)), f"{head}\nmax {speed:.1f} px{found}", smooth=False, legend=True),
        Tile(gray(x), f"{modality} x {shown}\n128 = 0, +-{meta.flow_bound:g} px", smooth=False),
        Tile(gray(y), f"{modality} y {shown}\n128 = 0, +-{meta.flow_bound:g} px", smooth=False),
    ]


def scaled(image: np.ndarray, height: int, smooth: bool) -> np.ndarray:
    """`image` scaled to `height` rows, its aspect kept."""
    h, w = image.shape[:2]
    width = max(1, round(w * height / h))
    if smooth:
        interpolation = cv2.INTER_AREA if height < h else cv2.INTER_CUBIC
    else:
        interpolation = cv2.INTER_NEAREST
    return cv2.resize(image, (width, height), interpolation=interpolation)


def layout(rows: list[Row], header: str, tile_height: int = 180) -> Sheet:
    """The rows laid out on a white canvas, each tile scaled to `tile_height` with its label above it."""
    sizes = [[scaled(t.image, tile_height, t.smooth) for t in row.tiles] for row in rows]
    widths = [GAP_PX + sum(img.shape[1] + GAP_PX for img in images) for images in sizes]
    width = max([*widths, 640])
    row_px = TITLE_PX + LABEL_PX + tile_height + GAP_PX
    canvas = np.full((HEADER_PX + row_px * len(rows), width, 3), 255, np.uint8)
    texts, tiles = [(GAP_PX, 6, header)], []
    y = HEADER_PX
    for row, images in zip(rows, sizes, strict=True):
        texts.append((GAP_PX, y + 4, row.title))
        x, top = GAP_PX, y + TITLE_PX + LABEL_PX
        for tile, img in zip(row.tiles, images, strict=True):
            h, w = img.shape[:2]
            side = min(max(24, tile_height // 4), w - 6, h - 6)  # fits a narrow (portrait) tile too
            if tile.legend and side >= 8:
                img = img.copy()
                img[2 : side + 4, w - side - 4 : w - 2] = 0  # a dark frame around the key
                img[3 : side + 3, w - side - 3 : w - 3] = color_wheel_legend(side)
            canvas[top : top + h, x : x + w] = img
            texts.append((x, y + TITLE_PX, tile.label))
            tiles.append((x, top, w, h, tile.label))
            x += w + GAP_PX
        y += row_px
    return Sheet(canvas, texts, tiles)


def sheet_png(sheet: Sheet) -> bytes:
    """The sheet as PNG bytes, exactly its canvas's size, the texts drawn by matplotlib."""
    height, width = sheet.canvas.shape[:2]
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    FigureCanvasAgg(figure)
    figure.figimage(sheet.canvas, 0, 0, origin="upper")
    for x, y, text in sheet.texts:
        big = y < HEADER_PX
        figure.text(x / width, 1 - y / height, text, va="top", ha="left", fontsize=10 if big else 8, linespacing=1.15)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def animation_frames(sample: Sample, height: int = 180) -> list[np.ndarray]:
    """One picture per flow of `sample`: RGB frame i beside the colours of each flow modality i -> i+1, all
    scaled to `height`, colours on one scale for the whole video so that speeds compare across frames, under a
    strip naming the video, the frame pair and the panels. Even sizes, for video encoders.

    Raises:
        ValueError: the sample has no flow to animate.
    """
    flows = [m for m in FLOW_MODALITIES if m in sample.flow]
    if not flows or not sample.meta.num_flows:
        raise ValueError(f"{sample.key} has no flow to animate (modalities: {', '.join(sample.meta.modalities)})")
    fields = {m: [sample.flow_frame(m, i) for i in range(sample.meta.num_flows)] for m in flows}
    scale = max(float(np.hypot(f[..., 0], f[..., 1]).max()) for fs in fields.values() for f in fs) or 1.0
    height += height % 2
    shown = (["rgb"] if sample.rgb else []) + flows
    frames = []
    for i in range(sample.meta.num_flows):
        panels = [scaled(sample.rgb_frame(i), height, True)] if sample.rgb else []
        panels += [scaled(flow_to_color(fields[m][i], max_flow=scale), height, False) for m in flows]
        picture = np.concatenate(panels, axis=1)
        strip = np.full((24, picture.shape[1] + picture.shape[1] % 2, 3), 255, np.uint8)  # even sizes
        text = f"{sample.key}  {i}->{i + 1}:  {' | '.join(shown)}  (colours up to {scale:.1f} px)"
        cv2.putText(strip, text, (6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        picture = np.concatenate([strip, np.pad(picture, ((0, 0), (0, picture.shape[1] % 2), (0, 0)))])
        frames.append(picture)
    return frames


def encode_gif(frames: list[np.ndarray], fps: float) -> bytes:
    """RGB frames as an endlessly looping GIF (Pillow, matplotlib's own image library)."""
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    return buffer.getvalue()
