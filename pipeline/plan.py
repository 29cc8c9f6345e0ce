"""The shard plan: which videos go to which shard, decided once from the manifest (pure, deterministic)."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from schemas.manifest import SPLITS, VideoRecord


@dataclass(frozen=True)
class ShardSpec:
    """One unit of work: the videos of one shard, in manifest order."""

    name: str  # "<split>-<NNNNNN>", also the tar's file name without ".tar"
    split: str
    records: tuple[VideoRecord, ...]
    generation: int = 0  # the run that added its videos: 0 the first build, then one per append or retry


def plan_shards(
    records: Sequence[VideoRecord], videos_per_shard: int, first: Mapping[str, int] | None = None, generation: int = 0
) -> list[ShardSpec]:
    """Assign videos to shards deterministically: per split, `videos_per_shard` each, in an order that mixes
    classes (sorted by a hash of the video id), so that every shard holds many classes.

    Annotation files list videos class by class; shards cut in that order would each hold one class and a
    streaming trainer's shuffle buffer could not mix them. The plan depends only on the manifest and this
    number, so a re-run finds the same shards. Each split's shards are numbered from `first[split]` (0).
    """
    if videos_per_shard < 1:
        raise ValueError(f"videos per shard must be at least 1, got {videos_per_shard}")
    specs = []
    for split in SPLITS:
        rows = sorted((r for r in records if r.split == split), key=lambda r: hashlib.sha1(r.video_id.encode()).hexdigest())
        start = (first or {}).get(split, 0)
        for i in range(0, len(rows), videos_per_shard):
            name = f"{split}-{start + i // videos_per_shard:06d}"
            specs.append(ShardSpec(name, split, tuple(rows[i : i + videos_per_shard]), generation))
    return specs


def plan_generations(generations: Sequence[Sequence[VideoRecord]], videos_per_shard: int) -> list[ShardSpec]:
    """The plan of a dataset grown in generations (its first build, then each append or retry): each generation
    planned on its own by `plan_shards`, its shards numbered after the earlier generations' in each split, so that
    adding videos never moves one already in a shard."""
    specs: list[ShardSpec] = []
    for generation, records in enumerate(generations):
        specs += plan_generation(specs, records, videos_per_shard, generation)
    return specs


def plan_generation(plan: Sequence[ShardSpec], records: Sequence[VideoRecord], videos_per_shard: int, generation: int) -> list[ShardSpec]:
    """The shards of generation `generation`'s `records`, numbered after those of `plan` (the earlier generations')
    in each split."""
    return plan_shards(records, videos_per_shard, Counter(s.split for s in plan), generation)
