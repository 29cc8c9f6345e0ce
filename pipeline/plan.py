"""The shard plan: which videos go to which shard, decided once from the manifest (pure, deterministic)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from schemas.manifest import SPLITS, VideoRecord
from schemas.sample import RGB

if TYPE_CHECKING:
    from .shards import ProcessConfig


@dataclass(frozen=True)
class ShardSpec:
    """One unit of work: the videos of one shard, in manifest order."""

    name: str  # "<split>-<NNNNNN>", also the tar's file name without ".tar"
    split: str
    records: tuple[VideoRecord, ...]


def plan_shards(records: list[VideoRecord], videos_per_shard: int) -> list[ShardSpec]:
    """Assign videos to shards deterministically: per split, `videos_per_shard` each, in an order that mixes
    classes (sorted by a hash of the video id), so that every shard holds many classes.

    Annotation files list videos class by class; shards cut in that order would each hold one class and a
    streaming trainer's shuffle buffer could not mix them. The plan depends only on the manifest and this
    number, so a re-run finds the same shards.
    """
    if videos_per_shard < 1:
        raise ValueError(f"videos per shard must be at least 1, got {videos_per_shard}")
    specs = []
    for split in SPLITS:
        rows = sorted((r for r in records if r.split == split), key=lambda r: hashlib.sha1(r.video_id.encode()).hexdigest())
        for i in range(0, len(rows), videos_per_shard):
            specs.append(ShardSpec(f"{split}-{i // videos_per_shard:06d}", split, tuple(rows[i : i + videos_per_shard])))
    return specs


def estimate_video_mb(cfg: ProcessConfig, frames: int = 300) -> float:
    """Rough size of one stored video (default: 10 s at 30 fps), for choosing videos per shard."""
    w, h = cfg.decode.size or (340, cfg.decode.short_side or 256)
    pixels = w * h / (340 * 256)
    per_frame = 0.0
    if RGB in cfg.modalities:
        per_frame += 0.030 * pixels * cfg.jpeg_quality / 95  # an RGB JPEG at q95 is ~30 KB at 340x256
    per_flow = {"jpeg": 0.012, "png16": 0.2, "float16": 0.35}[cfg.flow_encoding] * pixels
    per_frame += per_flow * len(cfg.flow_modalities)
    frames = min(frames, cfg.decode.max_frames or frames)
    return max(per_frame * frames, 1e-3)
