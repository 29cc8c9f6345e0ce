"""The Ray layer: one task per shard around `pipeline.shards.process_shard`, and the checks a cluster needs.

Tasks ask for `cpus_per_task` CPUs and, when the cluster has GPUs, a fraction `gpus_per_task` of one, so
several tasks share a GPU. A task whose worker dies (killed, out of memory, node lost) is retried by Ray up
to `max_retries` times; the retry rewrites its shard from scratch. At most `max_in_flight` tasks are
submitted at once and results are handled in the order they finish. Progress comes from a small actor
that tasks report to and that nothing depends on. Before a run on several nodes, `check_visible` proves
that every node sees a local output folder and local videos.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from dataclasses import dataclass
from typing import Callable

import ray
from ray.exceptions import RayError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from storage import Location, is_uri

from .shards import ProcessConfig, ShardResult, ShardSpec, VideoResult, process_shard


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


class ProgressTracker:
    """Per-shard progress reported by tasks; a retried shard reports from zero again and replaces its entry.

    Best effort by design: the driver counts finished shards from their results, and uses this only for the
    shards still running, so losing the tracker (it restarts, empty) never costs the run.
    """

    def __init__(self):
        self.shards: dict[str, tuple[int, int, int]] = {}

    def report(self, shard: str, videos: int, frames: int, failed: int) -> None:
        self.shards[shard] = (videos, frames, failed)

    def snapshot(self) -> dict[str, tuple[int, int, int]]:
        return dict(self.shards)


def _run_shard(spec: ShardSpec, cfg: ProcessConfig, out_uri: str, tracker) -> ShardResult:
    counts = [0, 0, 0]  # videos, frames, failed

    def on_video(result: VideoResult) -> None:
        counts[0] += 1
        counts[1] += result.frames
        counts[2] += result.status != "ok"
        tracker.report.remote(spec.name, *counts)  # fire and forget: a lost tracker must not fail the shard

    return process_shard(spec, cfg, Location(out_uri), on_video)


process_shard_task = ray.remote(_run_shard)


def _missing_here(paths: list[str]) -> list[str]:
    """Which of these local paths this node cannot see."""
    return [p for p in paths if not os.path.exists(p)]


missing_here_task = ray.remote(num_cpus=0)(_missing_here)


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


@contextlib.contextmanager
def ray_session(address: str | None):
    """Connected to Ray (see `connect`) for the duration; an embedded Ray started here is shut down after."""
    started = connect(address)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def _worker_nodes() -> list[dict]:
    return [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0]


def check_visible(out: Location, video_paths: list[str], samples: int = 8) -> None:
    """On a cluster of several nodes, check that every node sees a local `out` and the local videos.

    The driver writes a probe file where `out` will be and a task on each alive node looks for it and for
    a few of the videos (object-storage URIs need no check).

    Raises:
        ValueError: a node cannot see them; the message names the node and the fix.
    """
    nodes = _worker_nodes()
    local_videos = [p for p in video_paths if not is_uri(p)]
    if len(nodes) < 2 or (not out.is_local and not local_videos):
        return
    picks = [local_videos[i * len(local_videos) // samples] for i in range(min(samples, len(local_videos)))]
    probe, folder = None, None
    if out.is_local:
        path = out.path()
        while not os.path.isdir(path):  # the deepest existing folder: nothing is created for a refused run
            path = os.path.dirname(path)
        folder, name = Location(path), f".flowshard-probe-{uuid.uuid4().hex[:12]}"
        folder.write_text("flowshard: is this folder shared by every node?\n", name)
        probe = folder.path(name)
    try:
        refs = {
            missing_here_task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
                [*([probe] if probe else []), *picks]
            ): n
            for n in nodes
        }
        for ref, node in refs.items():
            try:
                missing = ray.get(ref, timeout=120)
            except RayError:  # the node went away meanwhile: it will run nothing
                continue
            where = f"node {node['NodeManagerAddress']} (id {node['NodeID'][:8]})"
            if probe in missing:
                raise ValueError(
                    f"--out {out.uri} is a local folder that {where} cannot see; on several nodes write to object "
                    "storage (--out s3://bucket/prefix) or to a shared file system mounted at the same path on every node"
                )
            if missing:
                raise ValueError(
                    f"videos such as {missing[0]} are not visible on {where}; keep the videos on a shared file system "
                    "mounted at the same path on every node, or on object storage (s3://...), and list them from there"
                )
    finally:
        if probe:
            folder.delete_file(name)


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
) -> list[ShardResult]:
    """Run `process_shard` for every spec as Ray tasks (on the connected cluster, see `ray_session`) and
    return their results in completion order.

    A task whose worker or node is lost is re-run by Ray (up to `max_retries` times), on any node.
    `on_progress(videos, frames, failed)` is called every `poll_seconds` with totals over running and
    finished shards.
    """
    has_gpus = ray.cluster_resources().get("GPU", 0) > 0
    options = {
        "num_cpus": cluster.cpus_per_task,
        "num_gpus": cluster.gpus_per_task if has_gpus else 0,
        "max_retries": cluster.max_retries,
    }
    slots = max(1, int(ray.cluster_resources().get("CPU", 1) // cluster.cpus_per_task))
    max_in_flight = cluster.max_in_flight or 2 * slots
    # Beside the driver (which lives on the head), restarted wherever its worker process dies.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    tracker = ray.remote(ProgressTracker).options(num_cpus=0, max_restarts=-1, max_task_retries=-1, scheduling_strategy=here).remote()
    cfg_ref = ray.put(cfg)
    queue, pending, results, running = list(specs), {}, [], {}
    finished = [0, 0, 0]  # videos, frames, failed of the finished shards
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
            running.pop(spec.name, None)
            finished = [a + b for a, b in zip(finished, _counts(result))]
        if on_progress is not None:
            running.update(_snapshot(tracker, exclude={r.name for r in results}))
            on_progress(*(f + sum(c[i] for c in running.values()) for i, f in enumerate(finished)))
    return results


def _counts(result: ShardResult) -> tuple[int, int, int]:
    return len(result.videos), sum(v.frames for v in result.videos), sum(v.status != "ok" for v in result.videos)


def _snapshot(tracker, exclude: set[str]) -> dict[str, tuple[int, int, int]]:
    """The tracker's counts of unfinished shards; {} while it is unreachable (the run goes on without it)."""
    try:
        shards = ray.get(tracker.snapshot.remote(), timeout=5)
    except (RayError, TimeoutError):
        return {}
    return {name: counts for name, counts in shards.items() if name not in exclude}


def _last_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(exc).__name__
