"""The shard plan: which videos go to which shard, decided once from the manifest (pure, deterministic)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from schemas.manifest import SPLITS, VideoRecord


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
