"""Which samples each rank and loader worker reads in an epoch: every sample once, ranks equal. Pure.

Training shuffles the whole split with the epoch's seed (the same permutation on every rank), pads it with its
first samples to a multiple of the ranks, as torch's DistributedSampler does, so that every rank takes the same
number of steps and DDP never waits, then deals it to the ranks and each rank's share to its loader workers.
Dealt by sample, not by shard: a dataset with fewer shards than ranks x workers keeps every worker busy.
Evaluation reads the split in order, each sample once over all ranks (no padding: no video counted twice).
"""

from __future__ import annotations

import math

import numpy as np


def epoch_share(n: int, seed: int, train: bool, rank: int = 0, world: int = 1, worker: int = 0, workers: int = 1) -> np.ndarray:
    """The sample numbers (0..n-1, in reading order) that loader worker `worker` of rank `rank` reads this epoch.

    Args:
        n: samples in the split.
        seed: the epoch's seed (the same on every rank; a different one each epoch).
        train: shuffle and pad (training), or read in order, each sample once (evaluation).
        rank, world: this rank and the number of ranks.
        worker, workers: this loader worker and the rank's number of loader workers.
    Returns:
        The worker's sample numbers; over all ranks and workers every sample once (training: padded to a multiple of
        `world` with the first ones, every rank the same count).
    """
    if train:
        order = np.random.default_rng(seed).permutation(n)
        order = np.resize(order, math.ceil(n / world) * world)  # padded with the first samples, cyclically
    else:
        order = np.arange(n)
    return order[rank::world][worker::workers]


def steps_in_epoch(n: int, world: int, workers: int, batch_size: int) -> int:
    """Training batches each rank takes in an epoch of `n` samples: its share, dealt to `workers` loader workers (0:
    the training process itself), each ending on its own partial batch, as a DataLoader over them batches it."""
    share = math.ceil(n / world)
    workers = max(workers, 1)
    return sum(math.ceil(len(range(w, share, workers)) / batch_size) for w in range(workers))
