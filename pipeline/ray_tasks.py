"""The Ray layer: one task per shard around `pipeline.shards.process_shard`, a flow service of long-lived
flow workers, and the checks a cluster needs.

Shard tasks ask for `cpus_per_task` CPUs and never touch a GPU: they decode, encode and write, and send
frames to the flow workers (`pipeline.flow_service.FlowWorker` as threaded actors): one per GPU
(`num_gpus=1`) where the cluster has GPUs, else one single-threaded worker per CPU core of each node.
A task whose worker dies (killed, out of memory, node lost) is retried by Ray up to `max_retries` times;
the retry rewrites its shard from scratch. A flow worker that dies is restarted and the requests it held
are sent again. At most `max_in_flight` tasks are submitted at once and results are handled in the order
they finish. Progress comes from a small actor that tasks report to and that nothing depends on. Before a
run on several nodes, `check_visible` proves that every node sees a local output folder and local videos.
A dry run (`pipeline.dry_run`) uses the same cluster: `run_census` (tasks of many videos) and `run_calibration`
(a few videos processed as shard tasks would, through the run's flow service).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import ray
from ray.exceptions import RayError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from schemas.manifest import VideoRecord
from storage import Location, OutputFault, is_uri

from .calibration import Calibration, calibrate, merged, with_solver
from .census import VideoCensus, census_video
from .decode import DecodeConfig
from .flow_requests import default_batch
from .forecast import Cluster
from .plan import ShardSpec
from .shards import ProcessConfig, ShardResult, VideoResult, process_shard


@dataclass(frozen=True)
class ClusterConfig:
    """Where and how shard tasks run."""

    address: str | None = None  # None and no RAY_ADDRESS: start an embedded local Ray
    cpus_per_task: float = 1.0
    flow_workers: int | None = None  # None: one per GPU, or one per CPU core on a cluster without GPUs; N: N in all
    # on a GPU cluster (one GPU each), N per node without GPUs; 0: no flow service, each shard task computes its own
    max_retries: int = 3  # re-runs of a task whose worker died
    max_in_flight: int | None = None  # default: twice the tasks the cluster can run at once
    poll_seconds: float = 2.0

    def __post_init__(self):
        if self.address and self.address.startswith(("http://", "https://")):
            raise ValueError(
                f"--address {self.address} is a dashboard URL (for `ray job submit`); pass the cluster address "
                "instead, e.g. 10.0.0.1:6379 or ray://10.0.0.1:10001, or leave it out inside `ray job submit`"
            )
        if self.cpus_per_task <= 0 or self.max_retries < 0 or (self.flow_workers is not None and self.flow_workers < 0):
            raise ValueError("cpus per task must be positive, flow workers and max retries not negative")


class ProgressTracker:
    """Per-shard progress reported by tasks; a retried shard reports from zero again and replaces its entry.

    Best effort by design: the driver counts finished shards from their results, and uses this only for the
    shards still running, so losing the tracker (it restarts, empty) never costs the run.
    """

    def __init__(self):
        self.shards: dict[str, tuple[int, int, int]] = {}

    def report(self, shard: str, videos: int, frames: int, failed: int) -> None:
        """A shard task's latest counts."""
        self.shards[shard] = (videos, frames, failed)

    def snapshot(self) -> dict[str, tuple[int, int, int]]:
        """The latest counts of every shard that reported."""
        return dict(self.shards)


class _FlowActor:
    """A flow worker (`pipeline.flow_service.FlowWorker`) as a Ray actor; its stats say which node it runs on.

    The worker, and with it torch, is imported in the actor's own process: the driver and the shard tasks, which
    only hold its handle, start without torch."""

    def __init__(self, *args, **kwargs):
        from .flow_service import FlowWorker

        self.worker = FlowWorker(*args, **kwargs)

    def compute(self, request):
        """`FlowWorker.compute` (called concurrently: the actor is threaded, the worker thread-safe)."""
        return self.worker.compute(request)

    def node(self) -> str:
        """The Ray node this worker runs on."""
        return ray.get_runtime_context().get_node_id()

    def stats(self) -> dict:
        """`FlowWorker.stats()` and the node."""
        return {**self.worker.stats(), "node": self.node()}


FlowActor = ray.remote(_FlowActor)


class ServiceFlow:
    """A shard task's client of the flow service: requests go round-robin to the flow workers on its own node
    (to any worker when none is there), with one more request in flight than there are such workers."""

    def __init__(self, workers: list[tuple[str, object]], batch_size: int):
        here = ray.get_runtime_context().get_node_id()
        local = [handle for node, handle in workers if node == here]
        self.handles = local or [handle for _, handle in workers]
        self.batch_size = batch_size
        self.in_flight = len(self.handles) + 1
        self._next = 0

    def submit(self, request):
        """Send a FlowRequest to the next flow worker (round robin); returns a callable that waits for the chunk."""
        handle = self.handles[self._next % len(self.handles)]
        self._next += 1
        ref = handle.compute.remote(request)
        return lambda: ray.get(ref)


def _run_shard(spec: ShardSpec, cfg: ProcessConfig, out_uri: str, tracker, flow_workers, batch_size) -> ShardResult:
    counts = [0, 0, 0]  # videos, frames, failed

    def on_video(result: VideoResult) -> None:
        counts[0] += 1
        counts[1] += result.frames
        counts[2] += result.status != "ok"
        tracker.report.remote(spec.name, *counts)  # fire and forget: a lost tracker must not fail the shard

    flow = ServiceFlow(flow_workers, batch_size) if flow_workers else None
    result = process_shard(spec, cfg, Location(out_uri), on_video, flow)
    result.node = ray.get_runtime_context().get_node_id()
    return result


process_shard_task = ray.remote(_run_shard)


@dataclass
class FlowService:
    """The flow workers of a run: (node id, actor handle) each, and the batch size they launch."""

    workers: list[tuple[str, object]]
    batch_size: int
    device: str

    def stats(self, timeout: float = 30.0) -> list[dict]:
        """Every reachable worker's stats (a worker lost for good is left out)."""
        out = []
        for _, handle in self.workers:
            try:
                out.append(ray.get(handle.stats.remote(), timeout=timeout))
            except (RayError, TimeoutError):
                continue
        return out

    def stop(self) -> None:
        """End every flow worker (not restarted)."""
        for _, handle in self.workers:
            ray.kill(handle, no_restart=True)


def start_flow_service(cfg: ProcessConfig, cluster: ClusterConfig) -> FlowService | None:
    """Start the flow workers of a run: one per GPU (each `num_gpus=1`), else one single-threaded worker per
    CPU core of each node (they take no CPU from Ray's accounting: shard tasks mostly wait for them).
    None when no flow is asked for or `flow_workers` is 0."""
    if not cfg.flow_modalities or cluster.flow_workers == 0:
        return None
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if cfg.device == "cuda" and not gpus:
        raise ValueError("--device cuda, but the Ray cluster has no GPUs; leave --device out to compute flow on the CPUs")
    options = {"max_concurrency": 256, "max_restarts": -1, "max_task_retries": -1}
    spec = cfg.flow_spec()
    if gpus and cfg.device != "cpu":
        batch = cfg.flow_batch or default_batch("cuda")
        count = cluster.flow_workers or gpus
        handles = [
            FlowActor.options(num_gpus=1, num_cpus=1, **options).remote(spec, batch, "cuda", exit_on_device_loss=True) for _ in range(count)
        ]
        # where each landed, for the shard tasks' choice of a worker on their own node
        nodes = ray.get([h.node.remote() for h in handles], timeout=600)
        return FlowService(list(zip(nodes, handles)), batch, "cuda")
    batch = cfg.flow_batch or default_batch("cpu")
    workers = []
    for node in _worker_nodes():
        per_node = cluster.flow_workers or max(1, int(node["Resources"].get("CPU", 1)))
        place = NodeAffinitySchedulingStrategy(node["NodeID"], soft=True)
        for _ in range(per_node):
            handle = FlowActor.options(num_cpus=0, scheduling_strategy=place, **options).remote(spec, batch, "cpu", threads=1)
            workers.append((node["NodeID"], handle))
    return FlowService(workers, batch, "cpu")


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
        return True
    notices = logging.getLogger("ray._private.authentication.authentication_token_setup")
    quiet = _EmbeddedTokenNotice()
    notices.addFilter(quiet)
    try:
        ray.init(address="local", include_dashboard=dashboard, log_to_driver=True)
    finally:
        notices.removeFilter(quiet)
    return True


class _EmbeddedTokenNotice(logging.Filter):
    """Drops Ray's notice that a local Ray it starts uses token authentication (the safe default): a user who
    started no cluster has nothing to act on. Its warning when authentication is turned off stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled")


@contextlib.contextmanager
def ray_session(address: str | None):
    """Connected to Ray (see `connect`) for the duration; an embedded Ray started here is shut down after. Gives
    whether it started one."""
    started = connect(address)
    try:
        yield started
    finally:
        if started:
            ray.shutdown()


def node_names() -> dict[str, str]:
    """Ray node id -> its address, with the id's start where several nodes share an address."""
    nodes = ray.nodes()
    shared = Counter(n["NodeManagerAddress"] for n in nodes)
    return {n["NodeID"]: n["NodeManagerAddress"] + (f" ({n['NodeID'][:8]})" if shared[n["NodeManagerAddress"]] > 1 else "") for n in nodes}


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
) -> tuple[list[ShardResult], list[dict]]:
    """Run `process_shard` for every spec as Ray tasks (on the connected cluster, see `ray_session`), with
    the flow service started for the run and stopped after it.

    A task whose worker or node is lost is re-run by Ray (up to `max_retries` times), on any node.
    `on_progress(videos, frames, failed)` is called after each finished shard and at least every
    `poll_seconds`, with totals over running and finished shards; an exception it raises stops the run.

    Returns:
        (shard results in completion order, the flow workers' stats).
    Raises:
        OutputFault: a shard task could not write to the output (no space, quota, permission, bucket gone): the
            run stops at the first one, the tasks still running are cancelled, and no video is failed for it.
    """
    service = start_flow_service(cfg, cluster)
    try:
        results = _run_tasks(specs, cfg, out_uri, cluster, service, on_progress)
        return results, service.stats() if service else []
    finally:
        if service:
            service.stop()


def _run_tasks(specs, cfg, out_uri, cluster: ClusterConfig, service: FlowService | None, on_progress) -> list[ShardResult]:
    options = {"num_cpus": cluster.cpus_per_task, "max_retries": cluster.max_retries}
    slots = _task_slots(cluster)
    max_in_flight = cluster.max_in_flight or 2 * slots
    # Beside the driver (which lives on the head), restarted wherever its worker process dies.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    tracker = ray.remote(ProgressTracker).options(num_cpus=0, max_restarts=-1, max_task_retries=-1, scheduling_strategy=here).remote()
    cfg_ref = ray.put(cfg)
    workers, batch = (service.workers, service.batch_size) if service else ([], None)
    queue, pending, results, running = list(specs), {}, [], {}
    finished = [0, 0, 0]  # videos, frames, failed of the finished shards
    try:
        while queue or pending:
            while queue and len(pending) < max_in_flight:
                spec = queue.pop(0)
                pending[process_shard_task.options(**options).remote(spec, cfg_ref, out_uri, tracker, workers, batch)] = spec
            done, _ = ray.wait(list(pending), num_returns=1, timeout=cluster.poll_seconds)
            for ref in done:
                spec = pending.pop(ref)
                result = _shard_result(ref, spec, cluster)
                results.append(result)
                running.pop(spec.name, None)
                finished = [a + b for a, b in zip(finished, _counts(result))]
            if on_progress is not None:
                running.update(_snapshot(tracker, exclude={r.name for r in results}))
                on_progress(*(f + sum(c[i] for c in running.values()) for i, f in enumerate(finished)))
    except BaseException:  # a fault of the output, a lost lease, an interrupt: the rest would be lost work or worse
        for ref in pending:
            ray.cancel(ref, force=True)
        ray.wait(list(pending), num_returns=len(pending), timeout=30)  # ended, so that what they left can be removed
        raise
    return results


def _shard_result(ref, spec: ShardSpec, cluster: ClusterConfig) -> ShardResult:
    """A finished task's result; a failed task's videos failed with its reason, except for a fault of the output
    (raised: it is the run's, not the videos')."""
    try:
        return ray.get(ref)
    except RayTaskError as exc:  # an exception inside the task (not a bad video: those are results)
        if isinstance(exc.cause, OutputFault):
            raise OutputFault(str(exc.cause)) from None
        return failed_shard(spec, f"shard task failed: {_last_line(exc)}")
    except RayError as exc:  # the worker died more than max_retries times
        return failed_shard(spec, f"worker died {cluster.max_retries + 1} times: {_last_line(exc)}")


def _task_slots(cluster: ClusterConfig) -> int:
    """How many shard tasks the connected cluster runs at once."""
    return max(1, int(ray.cluster_resources().get("CPU", 1) // cluster.cpus_per_task))


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


# --- before a run: the census and the calibration (`pipeline.dry_run`) -------------------------------------

CENSUS_THREADS = 8  # files one census task opens at once: opening is mostly waiting for storage
CENSUS_PER_TASK = 500  # at most this many videos per census task


def _census_batch(records: list[VideoRecord], decode: DecodeConfig) -> list[VideoCensus]:
    with ThreadPoolExecutor(CENSUS_THREADS) as pool:
        return list(pool.map(lambda r: census_video(r, decode), records))


census_task = ray.remote(_census_batch)


def run_census(
    records: list[VideoRecord], decode: DecodeConfig, cluster: ClusterConfig, on_progress: Callable[[int, int], None] | None = None
) -> list[VideoCensus]:
    """`census_video` for every record, in manifest order, as Ray tasks of many videos each (enough tasks for
    four per CPU, at most `CENSUS_PER_TASK` videos each). `on_progress(videos, failed)` after each task and at
    least every `poll_seconds`."""
    slots = max(1, int(ray.cluster_resources().get("CPU", 1)))
    per_task = max(1, min(CENSUS_PER_TASK, -(-len(records) // (4 * slots))))
    options = {"num_cpus": 1, "max_retries": cluster.max_retries}
    decode_ref = ray.put(decode)
    batches = [records[i : i + per_task] for i in range(0, len(records), per_task)]
    pending = {census_task.options(**options).remote(batch, decode_ref): i for i, batch in enumerate(batches)}
    rows: list[list[VideoCensus] | None] = [None] * len(batches)
    videos = failed = 0  # so far, kept as totals: a progress line costs nothing at 650k rows
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1, timeout=cluster.poll_seconds)
        for ref in done:
            part = rows[pending.pop(ref)] = ray.get(ref)
            videos, failed = videos + len(part), failed + sum(r.status != "ok" for r in part)
        if on_progress is not None:
            on_progress(videos, failed)
    return [r for part in rows for r in part]


def _calibrate(records, cfg: ProcessConfig, census: dict[str, VideoCensus], frames: int, flow_workers, batch_size) -> Calibration:
    return calibrate(records, cfg, census, frames, ServiceFlow(flow_workers, batch_size) if flow_workers else None)


calibrate_task = ray.remote(_calibrate)


def run_calibration(
    records: list[VideoRecord], cfg: ProcessConfig, census: dict[str, VideoCensus], cluster: ClusterConfig, frames: int
) -> tuple[Calibration, float]:
    """`calibration.calibrate` as a run would process the videos: tasks as shard tasks (one per CPU slot, the
    records dealt out among them) sending their frames to the run's flow service (started here as the run
    starts it, and stopped). Returns (the parts merged with the flow workers' stats, the seconds before the
    first task measured anything: starting the flow service and the tasks' worker processes, as a run does)."""
    start = time.monotonic()
    service = start_flow_service(cfg, cluster)
    try:
        slots = _task_slots(cluster)
        parts = [records[i :: min(slots, len(records))] for i in range(min(slots, len(records)))]
        options = {"num_cpus": cluster.cpus_per_task, "max_retries": cluster.max_retries}
        workers, batch = (service.workers, service.batch_size) if service else ([], None)
        refs = [
            calibrate_task.options(**options).remote(part, cfg, {r.video_id: census[r.video_id] for r in part}, frames, workers, batch)
            for part in parts
        ]
        measured = ray.get(refs)
        total = with_solver(merged(measured), service.stats()) if service else merged(measured)
    finally:
        if service:
            service.stop()
    overhead = time.monotonic() - start - max((m.seconds for m in measured), default=0.0)
    return total, max(overhead, 0.0)


def cluster_shape(cpus_per_task: float) -> Cluster:
    """The attached cluster's alive nodes, CPUs and GPUs, as Ray reports them."""
    resources = ray.cluster_resources()
    return Cluster(len(_worker_nodes()), resources.get("CPU", 0.0), int(resources.get("GPU", 0)), cpus_per_task)
