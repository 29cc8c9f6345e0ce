"""The Ray layer: one task per shard around `pipeline.shards.process_shard`, nothing more.

Tasks ask for `cpus_per_task` CPUs and, when the cluster has GPUs, a fraction `gpus_per_task` of one, so
several tasks share a GPU. A task whose worker dies (killed, out of memory, node lost) is retried by Ray up
to `max_retries` times; the retry rewrites its shard from scratch. At most `max_in_flight` tasks are
submitted at once and results are handled in the order they finish.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import ray
from ray.exceptions import RayError, RayTaskError

from .shards import ProcessConfig, ShardResult, ShardSpec, VideoResult, process_shard
from .storage import OutputDir


@dataclass(frozen=True)
class ClusterConfig:
    """Where and how shard tasks run."""

    address: str | None = None  # None and no RAY_ADDRESS: start an embedded local Ray
    cpus_per_task: float = 1.0
    gpus_per_task: float = 0.25  # used only when the cluster has GPUs
    max_retries: int = 3  # re-runs of a task whose worker died
    max_in_flight: int | None = None  # default: twice the tasks the cluster can run at once
    poll_seconds: float = 2.0

    def __post_init__(self):
        if self.address and self.address.startswith(("http://", "https://")):
            raise ValueError(
                f"--address {self.address} is a dashboard URL (for `ray job submit`); pass the cluster address "
                "instead, e.g. 10.0.0.1:6379 or ray://10.0.0.1:10001, or leave it out inside `ray job submit`"
            )
        if self.cpus_per_task <= 0 or self.gpus_per_task < 0 or self.max_retries < 0:
            raise ValueError("cpus per task must be positive, gpus per task and max retries not negative")


@ray.remote
class ProgressTracker:
    """Per-shard progress reported by tasks; a retried shard reports from zero again and replaces its entry."""

    def __init__(self):
        self.shards: dict[str, tuple[int, int, int]] = {}

    def report(self, shard: str, videos: int, frames: int, failed: int) -> None:
        self.shards[shard] = (videos, frames, failed)

    def totals(self) -> tuple[int, int, int]:
        return tuple(sum(v[i] for v in self.shards.values()) for i in range(3))


def _run_shard(spec: ShardSpec, cfg: ProcessConfig, out_uri: str, tracker) -> ShardResult:
    counts = [0, 0, 0]  # videos, frames, failed

    def on_video(result: VideoResult) -> None:
        counts[0] += 1
        counts[1] += result.frames
        counts[2] += result.status != "ok"
        tracker.report.remote(spec.name, *counts)

    return process_shard(spec, cfg, OutputDir(out_uri), on_video)


process_shard_task = ray.remote(_run_shard)


def connect(address: str | None, dashboard: bool = False) -> bool:
    """Join the cluster at `address` (or RAY_ADDRESS), else start an embedded local Ray (with its dashboard
    and state API only when asked: Ray Train's controller uses them, shard tasks do not).

    Returns whether this call started Ray (and so should shut it down).
    """
    if ray.is_initialized():
        return False
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(address="local", include_dashboard=dashboard, log_to_driver=True)
    return True


def failed_shard(spec: ShardSpec, reason: str) -> ShardResult:
    """The result of a shard whose task could not finish: every video failed with `reason`; no record written."""
    videos = [VideoResult(r.video_id, spec.split, spec.name, "failed", reason, 0.0, label=r.label) for r in spec.records]
    return ShardResult(spec.name, spec.split, None, 0, 0, "", 0.0, videos)


def run_shards(
    specs: list[ShardSpec],
    cfg: ProcessConfig,
    out_uri: str,
    cluster: ClusterConfig,
    on_progress: Callable[[int, int, int], None] | None = None,
    on_shard: Callable[[ShardResult], None] | None = None,
) -> list[ShardResult]:
    """Run `process_shard` for every spec as Ray tasks and return their results (in completion order).

    `on_progress(videos, frames, failed)` is called every `poll_seconds` with totals over running and
    finished shards; `on_shard(result)` as each shard finishes.
    """
    started = connect(cluster.address)
    try:
        has_gpus = ray.cluster_resources().get("GPU", 0) > 0
        options = {
            "num_cpus": cluster.cpus_per_task,
            "num_gpus": cluster.gpus_per_task if has_gpus else 0,
            "max_retries": cluster.max_retries,
        }
        slots = max(1, int(ray.cluster_resources().get("CPU", 1) // cluster.cpus_per_task))
        max_in_flight = cluster.max_in_flight or 2 * slots
        tracker = ProgressTracker.remote()
        cfg_ref = ray.put(cfg)
        queue, pending, results = list(specs), {}, []
        while queue or pending:
            while queue and len(pending) < max_in_flight:
                spec = queue.pop(0)
                pending[process_shard_task.options(**options).remote(spec, cfg_ref, out_uri, tracker)] = spec
            done, _ = ray.wait(list(pending), num_returns=1, timeout=cluster.poll_seconds)
            for ref in done:
                spec = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except RayTaskError as exc:  # an exception inside the task (not a bad video: those are results)
                    result = failed_shard(spec, f"shard task failed: {_last_line(exc)}")
                except RayError as exc:  # the worker died more than max_retries times
                    result = failed_shard(spec, f"worker died {cluster.max_retries + 1} times: {_last_line(exc)}")
                results.append(result)
                if on_shard is not None:
                    on_shard(result)
            if on_progress is not None:
                on_progress(*ray.get(tracker.totals.remote()))
        return results
    finally:
        if started:
            ray.shutdown()


def _last_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(exc).__name__
