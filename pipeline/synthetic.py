"""A synthetic motion dataset: classes differ only in the direction textured objects move.

Every frame on its own is a random textured background with randomly placed textured squares, drawn from
the same distribution for every class, so a single frame carries no class information while optical flow
does. This makes a sharp end-to-end test: a flow stream must learn it, an RGB stream must not.
Videos are written as real H.264 files in the UCF101 layout, so the real adapters and decoders are exercised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from storage import Location

from .decode import encode_mp4

TEST_GROUP_FRACTION = 0.3  # like UCF101, whose groups 1-7 of 25 are the test split


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of the generated dataset (defaults: 4 classes x 12 videos, 160x120, 32 frames at 25 fps)."""

    classes: int = 4
    videos_per_class: int = 12
    width: int = 160
    height: int = 120
    frames: int = 32
    fps: int = 25
    camera_pan: float = 0.0  # global horizontal camera motion in pixels per frame, added to every video
    seed: int = 0
    clips_per_group: int = 2  # videos of one group share a background, and groups never straddle splits
    objects: tuple[int, int] = (2, 4)  # min, max moving objects per video
    object_size: tuple[float, float] = (0.2, 0.3)  # side of an object as a fraction of the frame height
    speed: tuple[float, float] = (1.5, 2.5)  # object speed, pixels per frame

    def __post_init__(self):
        if self.classes < 2:
            raise ValueError(f"classes must be at least 2, got {self.classes}")
        if self.videos_per_class < 2:
            raise ValueError(f"videos-per-class must be at least 2 (one train, one test), got {self.videos_per_class}")
        if self.width < 32 or self.height < 32 or self.width % 2 or self.height % 2:
            raise ValueError(f"size must be even and at least 32x32 (H.264 4:2:0), got {self.width}x{self.height}")
        if self.frames < 2:
            raise ValueError(f"frames must be at least 2, got {self.frames}")
        if self.fps <= 0:
            raise ValueError(f"fps must be positive, got {self.fps}")


@dataclass(frozen=True)
class SyntheticVideo:
    """One rendered video and its ground truth."""

    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    object_mask: np.ndarray  # (T, H, W) bool, True where a moving object covers the pixel
    object_velocity: tuple[float, float]  # (dx, dy) of the objects relative to the background, pixels/frame
    background_velocity: tuple[float, float]  # (dx, dy) of the background on screen (the camera pan)


def class_names(num_classes: int) -> list[str]:
    """`Move000`, `Move090`, ...: the direction of motion in degrees (image y axis points down)."""
    return [f"Move{round(360 * k / num_classes):03d}" for k in range(num_classes)]


def class_direction(label: int, num_classes: int) -> tuple[float, float]:
    """Unit (x, y) direction of motion of a class: the classes split the circle evenly."""
    angle = 2 * math.pi * label / num_classes
    return math.cos(angle), math.sin(angle)


def _texture(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """Smooth random colour texture: noise at 1/cell resolution, upsampled, plus fine detail. float32 0..255."""
    coarse = rng.uniform(0, 255, size=(max(2, height // cell), max(2, width // cell), 3)).astype(np.float32)
    fine = rng.uniform(-40, 40, size=(max(2, height // 2), max(2, width // 2), 3)).astype(np.float32)
    tex = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    tex += cv2.resize(fine, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(tex, 0, 255)


def _translate(img: np.ndarray, dx: float, dy: float, border: int) -> np.ndarray:
    """Shift an image by a sub-pixel (dx, dy) with bilinear interpolation."""
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(img, m, (img.shape[1], img.shape[0]), flags=cv2.INTER_LINEAR, borderMode=border)


def render_video(cfg: SyntheticConfig, label: int, background_seed: int, video_seed: int) -> SyntheticVideo:
    """Render one video of class `label`. Deterministic in (cfg, label, background_seed, video_seed)."""
    H, W, T = cfg.height, cfg.width, cfg.frames
    bg_rng = np.random.default_rng(background_seed)
    rng = np.random.default_rng(video_seed)
    pan = cfg.camera_pan
    margin = int(math.ceil(abs(pan) * (T - 1))) + 2
    background = _texture(bg_rng, H, W + margin, cell=12)

    n_objects = int(rng.integers(cfg.objects[0], cfg.objects[1] + 1))
    ux, uy = class_direction(label, cfg.classes)
    speed = float(rng.uniform(*cfg.speed))
    vx, vy = speed * ux, speed * uy
    objects = []
    for _ in range(n_objects):
        side = int(rng.uniform(*cfg.object_size) * H)
        layer = np.zeros((H, W, 3), np.float32)
        alpha = np.zeros((H, W), np.float32)
        layer[:side, :side] = _texture(rng, side, side, cell=4)
        alpha[:side, :side] = 1.0
        objects.append((layer, alpha, rng.uniform(0, W), rng.uniform(0, H)))

    frames = np.empty((T, H, W, 3), np.uint8)
    masks = np.empty((T, H, W), bool)
    # The camera window slides over the wider background canvas by `pan` pixels per frame, so the
    # background moves by -pan on screen; `base` keeps the window inside the canvas for either sign.
    base = 0.0 if pan >= 0 else abs(pan) * (T - 1)
    for t in range(T):
        frame = _translate(background, -(base + pan * t), 0.0, cv2.BORDER_REFLECT)[:, :W]
        coverage = np.zeros((H, W), np.float32)
        for layer, alpha, x0, y0 in objects:
            # Objects move with the class velocity relative to the scene and wrap around the frame.
            dx, dy = x0 + (vx - pan) * t, y0 + vy * t
            a = _translate(alpha, dx % W, dy % H, cv2.BORDER_WRAP)[..., None]
            obj = _translate(layer, dx % W, dy % H, cv2.BORDER_WRAP)
            frame = frame * (1 - a) + obj * a
            coverage = np.maximum(coverage, a[..., 0])
        frames[t] = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
        masks[t] = coverage > 0.5
    return SyntheticVideo(frames, masks, (vx, vy), (-pan, 0.0))


def write_video(path: Path, frames: np.ndarray, fps: int) -> None:
    """Encode RGB frames (T, H, W, 3) as an MP4 (`encode_mp4`), written atomically."""
    Location(str(path)).write_bytes(encode_mp4(frames, fps))


@dataclass(frozen=True)
class SyntheticEntry:
    """One generated video: where it is, its class, UCF101-style group and clip, and its split."""

    relpath: str  # `Class/v_Class_gXX_cYY.mp4`
    label: int
    group: int
    clip: int
    split: str


def plan_dataset(cfg: SyntheticConfig) -> list[SyntheticEntry]:
    """Every video of the dataset with its UCF101-style name and split (test groups disjoint from train)."""
    names = class_names(cfg.classes)
    per_group = min(cfg.clips_per_group, cfg.videos_per_class // 2)  # at least two groups: one for test
    groups = math.ceil(cfg.videos_per_class / per_group)
    test_groups = min(groups - 1, max(1, round(groups * TEST_GROUP_FRACTION)))
    entries = []
    for label, name in enumerate(names):
        for i in range(cfg.videos_per_class):
            group, clip = i // per_group + 1, i % per_group + 1
            split = "test" if group <= test_groups else "train"
            entries.append(SyntheticEntry(f"{name}/v_{name}_g{group:02d}_c{clip:02d}.mp4", label, group, clip, split))
    return entries


def generate_dataset(cfg: SyntheticConfig, out: Path, progress=None) -> list[SyntheticEntry]:
    """Write the videos and `classInd.txt`, `trainlist01.txt`, `testlist01.txt` under `out` (UCF101 layout).

    Args:
        progress: optional callable(done, total) invoked after each video.
    """
    names = class_names(cfg.classes)
    entries = plan_dataset(cfg)
    seeds = np.random.SeedSequence(cfg.seed)
    # One child seed per (class, group) background and one per video, derived from the dataset seed.
    bg_seeds = {}
    for done, (e, child) in enumerate(zip(entries, seeds.spawn(len(entries))), start=1):
        bg_key = (e.label, e.group)
        if bg_key not in bg_seeds:
            bg_seeds[bg_key] = int(child.generate_state(1)[0])
        video = render_video(cfg, e.label, bg_seeds[bg_key], int(child.generate_state(2)[1]))
        write_video(out / e.relpath, video.frames, cfg.fps)
        if progress is not None:
            progress(done, len(entries))
    out.mkdir(parents=True, exist_ok=True)
    (out / "classInd.txt").write_text("".join(f"{i + 1} {n}\r\n" for i, n in enumerate(names)))
    (out / "trainlist01.txt").write_text("".join(f"{e.relpath} {e.label + 1}\r\n" for e in entries if e.split == "train"))
    (out / "testlist01.txt").write_text("".join(f"{e.relpath}\r\n" for e in entries if e.split == "test"))
    return entries
