"""The preprocessing run: manifest -> plan -> shard tasks on Ray -> index, results and dataset.json.

Re-running with the same manifest and parameters skips the shards already done and redoes nothing else;
a run interrupted at any point (worker or driver killed) finishes on re-run with every video exactly once.
A manifest with rows added grows the dataset: its new videos become a generation of new shards
(`pipeline.generations`), and so do failed videos retried. A run holds its output (`storage.lease`): a second run
on the same output is refused before it writes anything. A fault of the output (no space, quota, permission, a
bucket gone) stops the run with one sentence; no video is failed for it, and the same command later goes on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import pyarrow as pa
import pyarrow.parquet as pq

from schemas.dataset import DATASET_FILE, INDEX_FILE, INDEX_SCHEMA, RESULTS_FILE, RESULTS_SCHEMA, SHARDS_DIR, DatasetInfo
from schemas.manifest import VideoRecord, read_manifest
from schemas.plan import PLAN_FILE
from storage import Location, OutputFault, StorageError, join
from storage.lease import DEFAULT_TTL, holding

from . import __version__
from .forecast import actual_figures, against_plan, format_against, planned_figures
from .generations import grow, latest_results, read_generations, write_generations
from .plan import ShardSpec, plan_generation, plan_generations
from .progress import Progress, format_bytes, format_duration
from .ray_tasks import ClusterConfig, check_visible, node_names, ray_session, run_shards
from .report import REPORT_FILE, build_report, format_report
from .shards import PROGRESS_DIR, ProcessConfig, ShardResult, VideoResult, completed_shards, index_finished_shards, locate_samples

RUN_FILE = "run.json"  # under _progress/: the parameters the existing shards were built with
FINGERPRINT_VERSION = 2  # 1 (flowshard 0.1.0) also held runtime settings
MAX_OBJECT_SHARD_MB = 4096  # shards are copied into place on object stores, and S3 copies at most 5 GB


@dataclass(frozen=True)
class PreprocessConfig:
    """One preprocessing run: which manifest, where to, what each video becomes (`process`) and where the work runs."""

    manifest: str
    out: str
    process: ProcessConfig = ProcessConfig()
    cluster: ClusterConfig = ClusterConfig()
    shard_size_mb: float = 1024.0  # target shard size; videos per shard is estimated from it
    videos_per_shard: int | None = None  # set explicitly instead of estimating
    overwrite: bool = False
    retry_failed: bool = False  # process again, into new shards, the videos whose latest result is a failure
    compare_plan: str | None = None  # the folder of a dry run's plan.json: the run's figures are given beside it
    progress_seconds: float = 10.0
    lease_seconds: float = DEFAULT_TTL  # on S3: how long the run's hold on the output outlives it if it is killed


@dataclass
class RunSummary:
    """What a preprocessing run did, for its closing lines."""

    videos: int
    ok: int
    failed: int
    shards: int
    shards_run: int
    bytes: int
    seconds: float
    failures: list[VideoResult] = field(default_factory=list)


def manifest_fingerprint(records: list[VideoRecord]) -> str:
    """A hash of what the plan depends on (ids, paths, labels, splits, trim windows), in order."""
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps([r.video_id, r.path, r.label, r.split, r.start_sec, r.end_sec]).encode())
    return h.hexdigest()


def run_parameters(cfg: PreprocessConfig, records: list[VideoRecord], videos_per_shard: int) -> dict:
    """The resume fingerprint: only what changes the output (runtime and cluster settings may change)."""
    return {
        "fingerprint_version": FINGERPRINT_VERSION,
        "process": cfg.process.output_parameters(),
        "videos_per_shard": videos_per_shard,
        "manifest": manifest_fingerprint(records),
    }


def _refuse_other_parameters(out: Location, params: dict, estimated_per_shard: bool = False) -> dict | None:
    """The parameters `out`'s shards were built with (None: nothing built yet); ValueError when any besides the
    manifest differ from `params`. An estimated videos per shard (no --videos-per-shard) is named only when nothing
    else changed: it follows the other settings. The manifest is compared row by row (`_generations`)."""
    if not out.exists(PROGRESS_DIR, RUN_FILE):
        return None
    previous = json.loads(out.read_bytes(PROGRESS_DIR, RUN_FILE))
    if previous.get("fingerprint_version") != FINGERPRINT_VERSION:
        raise ValueError(f"{out.uri} was started by an older flowshard; pass --overwrite to rebuild it, or choose another --out")
    old, new = _flatten({**previous, "manifest": None}), _flatten({**params, "manifest": None})
    if old != new:
        keys = sorted(set(old) | set(new), key=lambda k: (k.count("."), k))  # top-level changes (modalities) first
        changed = [f"{k}: {old.get(k)} -> {new.get(k)}" for k in keys if old.get(k) != new.get(k)]
        if estimated_per_shard and len(changed) > 1:
            changed = [c for c in changed if not c.startswith("videos_per_shard:")]
        raise ValueError(
            f"{out.uri} holds shards built with other parameters ({'; '.join(changed[:4])}); "
            "pass --overwrite to rebuild them, or choose another --out"
        )
    return previous


def _flatten(d: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in d.items():
        if isinstance(v, dict):
            flat.update(_flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


@dataclass
class Work:
    """What a run of a configuration would do, found without writing anything (`work_of`)."""

    records: list[VideoRecord]  # the manifest's
    classes: list[str]
    out: Location
    videos_per_shard: int
    params: dict  # the run's output parameters (run.json)
    generations: list[list[VideoRecord]]  # the dataset's, after this run
    grown: list[VideoRecord]  # the generation this run adds to an existing dataset; empty when none
    earlier: dict[str, VideoResult]  # each video's latest result before this run
    specs: list[ShardSpec]  # every planned shard
    done: dict[str, ShardResult]  # the planned shards finished before, by name
    todo: list[ShardSpec]  # the shards this run runs, with the manifest's records

    @property
    def retried(self) -> int:
        """How many of the videos this run adds are failed ones tried again (the rest are new rows)."""
        return sum(r.video_id in self.earlier for r in self.grown)


def work_of(cfg: PreprocessConfig) -> Work:
    """Read the manifest and what `cfg.out` holds, and plan the run: nothing is written.

    Raises:
        ValueError: an unreadable manifest, an output folder built with other parameters or from rows this
            manifest removes or changes (without overwrite); the message says how to fix it.
        StorageError: the output's store cannot be reached, refuses the credentials or lacks the bucket.
    """
    records, classes = read_manifest(cfg.manifest)
    if not records:
        raise ValueError(f"manifest {cfg.manifest} lists no videos")
    out = Location(cfg.out)
    _check_output(cfg, out)
    videos_per_shard = cfg.videos_per_shard or max(1, math.floor(cfg.shard_size_mb / cfg.process.estimated_video_mb()))
    params = run_parameters(cfg, records, videos_per_shard)
    finished = {} if cfg.overwrite else completed_shards(out)
    generations, specs, grown, earlier = _generations(cfg, out, params, records, finished, videos_per_shard)
    done = {s.name: finished[s.name] for s in specs if s.name in finished}
    current = {r.video_id: r for r in records}  # kept rows hold only what the plan needs: run the manifest's
    todo = [replace(s, records=tuple(current[r.video_id] for r in s.records)) for s in specs if s.name not in done]
    return Work(records, classes, out, videos_per_shard, params, generations, grown, earlier, specs, done, todo)


def run_preprocess(cfg: PreprocessConfig, print_fn: Callable[[str], None] = print) -> RunSummary:
    """Run, resume or grow preprocessing and write index.parquet, results.parquet and dataset.json.

    A manifest that keeps every row `cfg.out` was built from and adds rows grows the dataset: only the new videos
    (and with `cfg.retry_failed` the failed ones) are processed, into new shards. Nothing is written before the
    checks pass: parameters, manifest rows, the store, and on several nodes that every node sees a local output
    folder and local videos.

    Raises:
        ValueError: as `work_of`, or a local path some node cannot see; the message says how to fix it.
        StorageError: the output's store cannot be reached, refuses the credentials or lacks the bucket.
        storage.lease.OutputBusy: another run holds the output (it is named).
        OutputFault: the output could not take a write (no space, quota, permission, bucket gone); finished
            shards are kept, and the sentence says what the rest still needs.
    """
    start = time.monotonic()
    work_of(cfg)  # every check that reads, before the output is touched (and before Ray starts)
    with holding(Location(cfg.out), cfg.lease_seconds) as lease:  # a run refused later leaves no folder it made
        work = work_of(cfg)  # again, as the output is now: a run that held it before may have finished shards
        try:
            return _run(cfg, work, lease, start, print_fn)
        except OutputFault as fault:
            with contextlib.suppress(StorageError):  # the stopped tasks' temporary files: room, and a clean folder
                for folder in (SHARDS_DIR, PROGRESS_DIR):
                    work.out.remove_temporaries(folder)
            raise OutputFault(f"{fault}; {_what_is_left(work, cfg)}") from None


def _run(cfg: PreprocessConfig, work: Work, lease, start: float, print_fn: Callable[[str], None]) -> RunSummary:
    """The run of `work`, while this process holds its output (`lease`)."""
    plan = _read_plan(cfg.compare_plan, work.params) if cfg.compare_plan else None
    records, out, params, specs, done, todo = work.records, work.out, work.params, work.specs, work.done, work.todo
    generations, grown = work.generations, work.grown
    _say_growth(work, cfg.retry_failed, print_fn)
    print_fn(
        f"{len(records)} videos in {len(specs)} shards of up to {work.videos_per_shard} videos; "
        f"{len(done)} shards already done, {len(todo)} to run; modalities {','.join(cfg.process.modalities)}"
    )
    running = {r.video_id for s in todo for r in s.records}
    done_videos = len(records) - len(running)
    done_failed = sum(r.status != "ok" for v, r in work.earlier.items() if v not in running)
    progress = Progress(len(records), cfg.progress_seconds, print_fn, already_done=done_videos)

    def on_progress(videos: int, frames: int, failed: int) -> None:
        lease.check()  # a run that lost its hold on the output stops here
        progress.update(done_videos + videos, frames, done_failed + failed)

    new, report = _run_todo(cfg, out, generations, todo, params, on_progress)
    for folder in (SHARDS_DIR, PROGRESS_DIR):  # leftovers of attempts whose worker or node died (Ray retried them)
        out.remove_temporaries(folder)
    indexed = index_finished_shards(out, list(done.values()))
    if indexed:
        print_fn(f"wrote the DALI index of {indexed} shards built before flowshard wrote them")
    results = sorted([*(locate_samples(out, r) for r in done.values()), *new], key=lambda r: r.name)
    latest = latest_results(specs, {r.name: r for r in results})  # one per video: a retry's replaces the failure
    videos = [v for r in results for v in r.videos if latest.get(v.video_id) is v]
    progress.update(len(videos), sum(v.frames for r in new for v in r.videos), sum(v.status != "ok" for v in videos), force=True)
    _write_outputs(out, cfg, work.classes, params, results, videos)
    if report and plan:
        actual = actual_figures(new, time.monotonic() - start, bool(cfg.process.flow_modalities))
        report["against_plan"] = against_plan(planned_figures(plan), actual)
        report["against_plan"]["plan"] = join(cfg.compare_plan, PLAN_FILE)
    if report:
        report["written"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        report["dataset_videos"] = len(records)
        if grown:
            report["grown"] = {"generation": len(generations) - 1, "added": len(grown) - work.retried, "retried": work.retried}
        out.write_bytes(json.dumps(report, indent=2).encode(), REPORT_FILE)
    elif not todo and out.is_file(REPORT_FILE):  # nothing ran: the report stays the one of the run that did the work
        report = json.loads(out.read_bytes(REPORT_FILE))
        when = report.get("written", "an earlier run")
        print_fn(f"nothing to run; {REPORT_FILE} is the report of the run that built the shards ({when}):")
    for line in format_report(report) if report else []:
        print_fn(line)
    for line in format_against(report["against_plan"]) if report and plan else []:
        print_fn(line)
    return _summary(results, videos, new, time.monotonic() - start)


def _what_is_left(work: Work, cfg: PreprocessConfig) -> str:
    """After a fault of the output: what is finished and kept, what the rest still needs (as the finished shards
    measured it, else as estimated) and what the output has free, and what to do."""
    done = completed_shards(work.out)
    finished = [done[s.name] for s in work.specs if s.name in done]
    left = [r for s in work.specs if s.name not in done for r in s.records]
    measured = [v for r in finished for v in r.videos if v.status == "ok"]
    per_video = sum(v.bytes for v in measured) / len(measured) if measured else cfg.process.estimated_video_mb() * 2**20
    free = ""
    if work.out.is_local:
        path = work.out.path()
        while not os.path.isdir(path):
            path = os.path.dirname(path)
        free = f", and {format_bytes(shutil.disk_usage(path).free)} is free there"
    source = "as the finished ones measured" if measured else "estimated"
    return (
        f"the run stopped: {len(finished)} of {len(work.specs)} shards are finished and kept; the other {len(left)} videos need "
        f"about {format_bytes(per_video * len(left))} more ({source}: {format_bytes(per_video)} a video){free}. "
        "No video was recorded as failed for this: make room (or fix the output), then run the same command again, and it "
        "goes on from the finished shards"
    )


def _generations(
    cfg: PreprocessConfig, out: Location, params: dict, records: list[VideoRecord], finished: dict[str, ShardResult], videos_per_shard: int
) -> tuple[list[list[VideoRecord]], list[ShardSpec], list[VideoRecord], dict[str, VideoResult]]:
    """The dataset's generations after this run and their plan; the records of the generation this run adds to
    an existing dataset (new rows, and failed videos retried; empty when it adds none); and each video's latest
    result before this run. Raises ValueError when `out` was built with other parameters or from rows the
    manifest removes or changes."""
    previous = None if cfg.overwrite else _refuse_other_parameters(out, params, estimated_per_shard=cfg.videos_per_shard is None)
    if previous is None:
        return [list(records)], plan_generations([records], videos_per_shard), [], {}
    kept = read_generations(out)
    if kept is None:  # built before flowshard kept its rows: only the very same manifest is known to be the same
        if previous["manifest"] != params["manifest"]:
            raise ValueError(
                f"{out.uri} was built from another manifest before flowshard kept a dataset's rows, so it cannot grow "
                "yet: run once with the manifest it was built from (that keeps them), then with the new one; or pass "
                "--overwrite to rebuild it, or choose another --out"
            )
        kept = [list(records)]
    plan = plan_generations(kept, videos_per_shard)
    earlier = latest_results(plan, finished)
    try:
        grown = grow(kept, records, {v for v, r in earlier.items() if r.status != "ok"}, cfg.retry_failed)
    except ValueError as exc:
        raise ValueError(f"{out.uri}: {exc}") from None
    if not grown:
        return kept, plan, [], earlier
    return [*kept, grown], plan + plan_generation(plan, grown, videos_per_shard, len(kept)), grown, earlier


def _say_growth(work: Work, retry_failed: bool, print_fn) -> None:
    """A line on what this run adds to an existing dataset, or on the failed videos a retry would try again."""
    grown, retried = work.grown, work.retried
    if grown:
        what = [f"{len(grown) - retried} new videos"] if len(grown) > retried else []
        what += [f"{retried} failed {'video' if retried == 1 else 'videos'} retried"] if retried else []
        generation = len(work.generations) - 1
        print_fn(f"growing the dataset: {' and '.join(what)}, in new shards (generation {generation}); finished shards stay as they are")
    failed = sum(r.status != "ok" for r in work.earlier.values())
    if failed and not retry_failed:
        print_fn(f"{failed} {'video' if failed == 1 else 'videos'} failed in earlier runs; --retry-failed tries them again")


def _read_plan(folder: str, params: dict) -> dict:
    """The plan a dry run wrote to `folder`, for a run with these parameters; ValueError where there is none, or
    it was made for other parameters (another manifest, settings, or dataset state)."""
    where = Location(folder)
    if not where.is_file(PLAN_FILE):
        raise ValueError(f"--compare-plan {folder} holds no {PLAN_FILE}; write one with the same command and --dry-run {folder}")
    plan = json.loads(where.read_bytes(PLAN_FILE))
    if plan.get("parameters") != params:
        raise ValueError(
            f"the plan in {folder} was made for other parameters than this run's; make it again with this command and "
            f"--dry-run {folder}, or leave --compare-plan out"
        )
    return plan


def _check_output(cfg: PreprocessConfig, out: Location) -> None:
    """Raise (StorageError, ValueError) now if the output's store is unusable or shards would be too big for it."""
    out.check()
    if not out.is_local and not cfg.videos_per_shard and cfg.shard_size_mb > MAX_OBJECT_SHARD_MB:
        raise ValueError(
            f"--shard-size-mb {cfg.shard_size_mb:g} is too large for object storage (shards are copied into "
            f"place, at most 5 GB on S3); use {MAX_OBJECT_SHARD_MB} or less"
        )


def _run_todo(cfg: PreprocessConfig, out: Location, generations: list[list[VideoRecord]], todo: list[ShardSpec], params: dict, on_progress):
    """Check the cluster, prepare the output, and run the shards still to do: (their results, the run report or None).
    Without shards to run, Ray is not started; the output is still prepared (parameters recorded, leftovers removed)."""
    if not todo:
        _prepare(out, params, generations, cfg.overwrite)
        return [], None
    with ray_session(cfg.cluster.address):
        check_visible(out, [r.path for s in todo for r in s.records if r.exists])
        _prepare(out, params, generations, cfg.overwrite)
        start = time.monotonic()
        new, flow_stats = run_shards(todo, cfg.process, cfg.out, cfg.cluster, on_progress)
        return new, build_report(new, flow_stats, time.monotonic() - start, node_names())


def _summary(results: list[ShardResult], videos: list[VideoResult], new: list[ShardResult], seconds: float) -> RunSummary:
    failures = [v for v in videos if v.status != "ok"]
    return RunSummary(
        videos=len(videos),
        ok=len(videos) - len(failures),
        failed=len(failures),
        shards=sum(r.tar is not None for r in results),
        shards_run=len(new),
        bytes=sum(r.bytes for r in results),
        seconds=seconds,
        failures=failures,
    )


def _prepare(out: Location, params: dict, generations: list[list[VideoRecord]], overwrite: bool) -> None:
    """Clear the output (with overwrite), record the parameters and the manifest rows of every generation, and
    remove what interrupted writes left. The rows are kept before the parameters: with no parameters, an output
    holds nothing built yet."""
    if overwrite:
        for folder in (SHARDS_DIR, PROGRESS_DIR):
            out.delete_dir(folder)
        for name in (INDEX_FILE, RESULTS_FILE, DATASET_FILE):
            out.delete_file(name)
    write_generations(out, generations)
    out.write_bytes(json.dumps(params, indent=2).encode(), PROGRESS_DIR, RUN_FILE)
    for folder in (SHARDS_DIR, PROGRESS_DIR):
        out.remove_temporaries(folder)


def _write_outputs(
    out: Location, cfg: PreprocessConfig, classes: list[str], params: dict, results: list[ShardResult], videos: list[VideoResult]
) -> None:
    """index.parquet, results.parquet and dataset.json, each written atomically, after all shards closed: every
    shard with a tar, and each video's latest result (`videos`)."""
    tar_of = {r.name: r.tar for r in results}
    index_rows = [
        {
            "key": v.video_id,
            "shard": tar_of[v.shard],
            "label": v.label,
            "split": v.split,
            "frames": v.frames,
            "bytes": v.bytes,
            "offset": v.offset,
            "head": v.head,
        }
        for v in videos
        if v.status == "ok"
    ]
    _write_parquet(out, INDEX_FILE, pa.Table.from_pylist(index_rows, schema=INDEX_SCHEMA))
    result_rows = [{**asdict(v), "shard": f"{v.shard}.tar"} for v in videos]  # named as index.parquet names them
    _write_parquet(out, RESULTS_FILE, pa.Table.from_pylist(result_rows, schema=RESULTS_SCHEMA))
    shards: dict[str, list[str]] = {}
    for r in results:
        if r.tar is not None:
            shards.setdefault(r.split, []).append(r.tar)
    info = DatasetInfo(
        classes=list(classes),
        modalities=list(cfg.process.modalities),
        parameters={**params["process"], "videos_per_shard": params["videos_per_shard"]},
        counts={
            "videos": len(videos),
            "ok": sum(v.status == "ok" for v in videos),
            "failed": sum(v.status != "ok" for v in videos),
            "samples": dict(Counter(v.split for v in videos if v.status == "ok")),
            "shards": {split: len(names) for split, names in shards.items()},
            "frames": sum(v.frames for v in videos),
        },
        shards=shards,
        flowshard_version=__version__,
    )
    out.write_bytes(info.to_json().encode(), DATASET_FILE)


def _write_parquet(out: Location, name: str, table: pa.Table) -> None:
    with out.atomic_write(name) as stream:
        pq.write_table(table, stream)


def format_summary(summary: RunSummary, out: str, show_failures: int = 10) -> str:
    """The end-of-run lines: counts, failures by reason (a few named), and where the outputs are."""
    lines = [
        f"{summary.ok} ok, {summary.failed} failed of {summary.videos} videos; {summary.shards} shards "
        f"({summary.shards_run} written in this run), {summary.bytes / 2**20:.1f} MB, {format_duration(summary.seconds)}",
    ]
    if summary.failures:
        reasons = Counter(v.reason.split(" (")[0] for v in summary.failures)
        lines.append("failures by reason: " + "; ".join(f"{n} x {reason}" for reason, n in reasons.most_common()))
        lines += [f"  {v.video_id}: {v.reason}" for v in summary.failures[:show_failures]]
        if len(summary.failures) > show_failures:
            lines.append(f"  ... {len(summary.failures) - show_failures} more in {join(out, RESULTS_FILE)}")
    lines.append(f"shards in {join(out, SHARDS_DIR)}, index {join(out, INDEX_FILE)}, per-video results {join(out, RESULTS_FILE)}")
    return "\n".join(lines)
