"""The preprocessing run: manifest -> plan -> shard tasks on Ray -> index, results and dataset.json.

Re-running with the same manifest and parameters skips the shards already done and redoes nothing else;
a run interrupted at any point (worker or driver killed) finishes on re-run with every video exactly once.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from schemas.dataset import DATASET_FILE, INDEX_FILE, INDEX_SCHEMA, RESULTS_FILE, RESULTS_SCHEMA, SHARDS_DIR, DatasetInfo
from schemas.manifest import VideoRecord, read_manifest
from storage import Location, join

from . import __version__
from .plan import ShardSpec, plan_shards
from .progress import Progress, format_duration
from .ray_tasks import ClusterConfig, check_visible, node_names, ray_session, run_shards
from .report import REPORT_FILE, build_report, format_report
from .shards import PROGRESS_DIR, ProcessConfig, ShardResult, VideoResult, completed_shards, index_finished_shards, locate_samples

RUN_FILE = "run.json"  # under _progress/: the parameters the existing shards were built with
ROWS_FILE = "manifest_rows.parquet"  # under _progress/: the manifest rows they were built from, to name what changed
ROW_FIELDS = ("video_id", "path", "label", "split", "start_sec", "end_sec")  # what the plan and the shards depend on
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
    progress_seconds: float = 10.0


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


def manifest_rows(records: list[VideoRecord]) -> pa.Table:
    """The fields of the manifest's rows that the output depends on (`ROW_FIELDS`), as kept beside the shards."""
    return pa.Table.from_pylist(
        [{name: getattr(r, name) for name in ROW_FIELDS} for r in records],
        schema=pa.schema(
            [
                ("video_id", pa.string()),
                ("path", pa.string()),
                ("label", pa.int64()),
                ("split", pa.string()),
                ("start_sec", pa.float64()),
                ("end_sec", pa.float64()),
            ]
        ),
    )


def manifest_changes(old: list[dict], new: list[VideoRecord], named: int = 3) -> str:
    """What changed from the rows a dataset was built from (`old`, as `manifest_rows` keeps them) to `new`, in
    words: "2 videos added (v_a, v_b), 1 removed (v_c), 1 changed (v_d: path)". Pure."""
    before = {row["video_id"]: row for row in old}
    after = {r.video_id: {name: getattr(r, name) for name in ROW_FIELDS} for r in new}
    added = [v for v in after if v not in before]
    removed = [v for v in before if v not in after]
    changed = [
        f"{v}: {', '.join(k for k in ROW_FIELDS if before[v][k] != after[v][k])}" for v in after if v in before and before[v] != after[v]
    ]

    def some(ids: list[str]) -> str:
        return ", ".join(ids[:named]) + (f", ... {len(ids) - named} more" if len(ids) > named else "")

    parts = [
        f"{len(ids)} {'video' if len(ids) == 1 else 'videos'} {what} ({some(ids)})"
        for what, ids in (("added", added), ("removed", removed))
        if ids
    ]
    parts += [f"{len(changed)} changed ({some(changed)})"] if changed else []
    return ", ".join(parts) or "the same rows in another order"


def run_parameters(cfg: PreprocessConfig, records: list[VideoRecord], videos_per_shard: int) -> dict:
    """The resume fingerprint: only what changes the output (runtime and cluster settings may change)."""
    return {
        "fingerprint_version": FINGERPRINT_VERSION,
        "process": cfg.process.output_parameters(),
        "videos_per_shard": videos_per_shard,
        "manifest": manifest_fingerprint(records),
    }


def _refuse_other_parameters(out: Location, params: dict, records: list[VideoRecord], estimated_per_shard: bool = False) -> None:
    """Raise ValueError when `out` holds shards built with other output parameters. An estimated videos per
    shard (no --videos-per-shard) is named only when nothing else changed: it follows the other settings. A
    changed manifest alone is named in words (videos added, removed, changed) where its rows were kept."""
    if not out.exists(PROGRESS_DIR, RUN_FILE):
        return
    previous = json.loads(out.read_bytes(PROGRESS_DIR, RUN_FILE))
    if previous.get("fingerprint_version") != FINGERPRINT_VERSION:
        raise ValueError(f"{out.uri} was started by an older flowshard; pass --overwrite to rebuild it, or choose another --out")
    if {**previous, "manifest": None} == {**params, "manifest": None} and previous != params and out.is_file(PROGRESS_DIR, ROWS_FILE):
        with out.open_input_file(PROGRESS_DIR, ROWS_FILE) as f:
            old_rows = pq.read_table(f).to_pylist()
        raise ValueError(
            f"{out.uri} was built from another manifest: {manifest_changes(old_rows, records)}; a dataset cannot grow or "
            "change in place yet: pass --overwrite to rebuild it, or choose another --out"
        )
    if previous != params:
        old, new = _flatten(previous), _flatten(params)
        keys = sorted(set(old) | set(new), key=lambda k: (k.count("."), k))  # top-level changes (modalities) first
        changed = [f"{k}: {old.get(k)} -> {new.get(k)}" for k in keys if old.get(k) != new.get(k)]
        if estimated_per_shard and len(changed) > 1:
            changed = [c for c in changed if not c.startswith("videos_per_shard:")]
        raise ValueError(
            f"{out.uri} holds shards built with other parameters ({'; '.join(changed[:4])}); "
            "pass --overwrite to rebuild them, or choose another --out"
        )


def _flatten(d: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in d.items():
        if isinstance(v, dict):
            flat.update(_flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def run_preprocess(cfg: PreprocessConfig, print_fn: Callable[[str], None] = print) -> RunSummary:
    """Run (or resume) preprocessing and write index.parquet, results.parquet and dataset.json.

    Nothing is written before the checks pass: parameters, the store, and on several nodes that every node
    sees a local output folder and local videos.

    Raises:
        ValueError: an unreadable manifest, an output folder built with other parameters (without
            overwrite), or a local path some node cannot see; the message says how to fix it.
        StorageError: the output's store cannot be reached, refuses the credentials or lacks the bucket.
    """
    start = time.monotonic()
    records, classes = read_manifest(cfg.manifest)
    if not records:
        raise ValueError(f"manifest {cfg.manifest} lists no videos")
    out = Location(cfg.out)
    _check_output(cfg, out)
    videos_per_shard = cfg.videos_per_shard or max(1, math.floor(cfg.shard_size_mb / cfg.process.estimated_video_mb()))
    params = run_parameters(cfg, records, videos_per_shard)
    if not cfg.overwrite:
        _refuse_other_parameters(out, params, records, estimated_per_shard=cfg.videos_per_shard is None)
    specs = plan_shards(records, videos_per_shard)
    done = _finished_shards(out, specs, cfg.overwrite)
    todo = [s for s in specs if s.name not in done]
    print_fn(
        f"{len(records)} videos in {len(specs)} shards of up to {videos_per_shard} videos; "
        f"{len(done)} shards already done, {len(todo)} to run; modalities {','.join(cfg.process.modalities)}"
    )
    done_videos = sum(len(r.videos) for r in done.values())
    done_failed = sum(v.status != "ok" for r in done.values() for v in r.videos)
    progress = Progress(len(records), cfg.progress_seconds, print_fn, already_done=done_videos)

    def on_progress(videos: int, frames: int, failed: int) -> None:
        progress.update(done_videos + videos, frames, done_failed + failed)

    new, report = _run_todo(cfg, out, records, todo, params, on_progress)
    for folder in (SHARDS_DIR, PROGRESS_DIR):  # leftovers of attempts whose worker or node died (Ray retried them)
        out.remove_temporaries(folder)
    indexed = index_finished_shards(out, list(done.values()))
    if indexed:
        print_fn(f"wrote the DALI index of {indexed} shards built before flowshard wrote them")
    results = sorted([*(locate_samples(out, r) for r in done.values()), *new], key=lambda r: r.name)
    videos = [v for r in results for v in r.videos]
    progress.update(len(videos), sum(v.frames for r in new for v in r.videos), sum(v.status != "ok" for v in videos), force=True)
    _write_outputs(out, cfg, classes, params, results)
    if report:
        report["written"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        out.write_bytes(json.dumps(report, indent=2).encode(), REPORT_FILE)
    elif not todo and out.is_file(REPORT_FILE):  # nothing ran: the report stays the one of the run that did the work
        report = json.loads(out.read_bytes(REPORT_FILE))
        when = report.get("written", "an earlier run")
        print_fn(f"nothing to run; {REPORT_FILE} is the report of the run that built the shards ({when}):")
    for line in format_report(report) if report else []:
        print_fn(line)
    return _summary(results, new, time.monotonic() - start)


def _check_output(cfg: PreprocessConfig, out: Location) -> None:
    """Raise (StorageError, ValueError) now if the output's store is unusable or shards would be too big for it."""
    out.check()
    if not out.is_local and not cfg.videos_per_shard and cfg.shard_size_mb > MAX_OBJECT_SHARD_MB:
        raise ValueError(
            f"--shard-size-mb {cfg.shard_size_mb:g} is too large for object storage (shards are copied into "
            f"place, at most 5 GB on S3); use {MAX_OBJECT_SHARD_MB} or less"
        )


def _finished_shards(out: Location, specs: list[ShardSpec], overwrite: bool) -> dict[str, ShardResult]:
    """The planned shards an earlier run finished (none with overwrite), by name."""
    if overwrite:
        return {}
    planned = {s.name for s in specs}
    return {name: r for name, r in completed_shards(out).items() if name in planned}


def _run_todo(cfg: PreprocessConfig, out: Location, records: list[VideoRecord], todo: list[ShardSpec], params: dict, on_progress):
    """Check the cluster, prepare the output, and run the shards still to do: (their results, the run report or None).
    Without shards to run, Ray is not started; the output is still prepared (parameters recorded, leftovers removed)."""
    if not todo:
        _prepare(out, params, records, cfg.overwrite)
        return [], None
    with ray_session(cfg.cluster.address):
        check_visible(out, [r.path for r in records if r.exists])
        _prepare(out, params, records, cfg.overwrite)
        start = time.monotonic()
        new, flow_stats = run_shards(todo, cfg.process, cfg.out, cfg.cluster, on_progress)
        return new, build_report(new, flow_stats, time.monotonic() - start, node_names())


def _summary(results: list[ShardResult], new: list[ShardResult], seconds: float) -> RunSummary:
    videos = [v for r in results for v in r.videos]
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


def _prepare(out: Location, params: dict, records: list[VideoRecord], overwrite: bool) -> None:
    """Clear the output (with overwrite), record the parameters and the manifest rows, and remove what interrupted
    writes left."""
    if overwrite:
        for folder in (SHARDS_DIR, PROGRESS_DIR):
            out.delete_dir(folder)
        for name in (INDEX_FILE, RESULTS_FILE, DATASET_FILE):
            out.delete_file(name)
    with out.atomic_write(PROGRESS_DIR, ROWS_FILE) as stream:
        pq.write_table(manifest_rows(records), stream)
    out.write_bytes(json.dumps(params, indent=2).encode(), PROGRESS_DIR, RUN_FILE)
    for folder in (SHARDS_DIR, PROGRESS_DIR):
        out.remove_temporaries(folder)


def _write_outputs(out: Location, cfg: PreprocessConfig, classes: list[str], params: dict, results: list[ShardResult]) -> None:
    """index.parquet, results.parquet and dataset.json, each written atomically, after all shards closed."""
    videos = [v for r in results for v in r.videos]
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
