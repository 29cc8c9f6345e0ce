"""A dry run: what a preprocessing run would do and cost, found before it spends anything, written nowhere
near its output.

It plans the run as the run would (`preprocess.work_of`: on an existing dataset, only what is left or added),
takes a census of the videos to run (`census`, in Ray tasks of many videos each), puts a few of them through
the real stages on the devices the run would use (`calibration`), and forecasts the run (`forecast`). Outputs,
in a folder the user names: plan.json, census.parquet (a row per video), plan.png and the printed table.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from schemas.plan import CENSUS_FILE, CENSUS_SCHEMA, PLAN_FILE, PLAN_PICTURE, PLAN_VERSION
from storage import Location, join, redact, relative_to

from .calibration import CALIBRATION_FRAMES, CALIBRATION_VIDEOS, Calibration, choose
from .forecast import forecast
from .plan_figure import plan_png
from .preprocess import PreprocessConfig, work_of
from .progress import Progress, format_bytes, format_duration
from .ray_tasks import cluster_shape, ray_session, run_calibration, run_census


@dataclass(frozen=True)
class DryRunConfig:
    """Where a dry run writes, how much it calibrates, and the prices it costs the run at."""

    plan_dir: str  # plan.json and census.parquet go here (a local path or URI), never under the run's --out
    calibration_videos: int = CALIBRATION_VIDEOS  # drawn at random (seeded) from the videos expected to be ok
    calibration_frames: int = CALIBRATION_FRAMES  # each cut to its first frames
    seed: int = 0
    price_cpu_hour: float | None = None  # per CPU core and hour
    price_gpu_hour: float | None = None  # per GPU and hour

    def __post_init__(self):
        if self.calibration_videos < 0 or self.calibration_frames < 2:
            raise ValueError("calibration needs at least 0 videos of at least 2 frames")
        if any(p is not None and p < 0 for p in (self.price_cpu_hour, self.price_gpu_hour)):
            raise ValueError("prices cannot be negative")


def dry_run(cfg: PreprocessConfig, dry: DryRunConfig, print_fn: Callable[[str], None] = print) -> dict:
    """Plan `cfg`'s run without running it: census, calibration and forecast (see the module); returns plan.json's
    content. Nothing is written under `cfg.out`.

    Raises:
        ValueError: as the run would refuse (`preprocess.work_of`), or a plan folder inside the run's output.
    """
    if relative_to(join(dry.plan_dir, PLAN_FILE), cfg.out) is not None:
        raise ValueError(f"--dry-run {dry.plan_dir} is inside --out {cfg.out}; a dry run writes nothing there: choose another folder")
    start = time.monotonic()
    work = work_of(cfg)
    records = [r for s in work.todo for r in s.records]
    print_fn(
        f"dry run: {len(records)} videos to run of {len(work.records)} in the manifest, in {len(work.todo)} shards; "
        f"nothing is written to {cfg.out}"
    )
    init = time.monotonic()
    with ray_session(cfg.cluster.address) as started:
        init = time.monotonic() - init if started else 0.0  # a cluster already running costs a run nothing to start
        cluster = cluster_shape(cfg.cluster.cpus_per_task)
        progress = Progress(len(records), cfg.progress_seconds, print_fn)
        census = run_census(records, cfg.process.decode, cfg.cluster, lambda n, failed: progress.update(n, None, failed))
        progress.update(len(census), None, sum(r.status != "ok" for r in census), force=True)
        by_id = {r.video_id: r for r in census}
        drawn = set(choose(census, dry.calibration_videos, dry.seed))
        chosen = [r for r in records if r.video_id in drawn]
        calibration, overhead = run_calibration(chosen, cfg.process, by_id, cfg.cluster, dry.calibration_frames) if chosen else (None, 0.0)
    rates = (calibration or Calibration(flow_bytes={m: 0 for m in cfg.process.flow_modalities})).per_pixel()
    device = calibration.device if calibration else ""
    startup = init + overhead + (calibration.compile_seconds if calibration else 0.0)
    shards = [[r.video_id for r in s.records] for s in work.todo]
    bounds = calibration.rate_bounds() if calibration else None
    figures = forecast(census, shards, cfg.process, rates, cluster, device, startup, _prices(dry), bounds)
    plan = {
        "plan_version": PLAN_VERSION,
        "written": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "manifest": redact(cfg.manifest),
        "out": redact(cfg.out),
        "parameters": work.params,  # what a run must match to be compared with this plan
        "cluster": asdict(cluster),
        "calibration": calibration.to_dict() if calibration else None,
        **figures,
        "dry_run_seconds": time.monotonic() - start,
    }
    where = Location(dry.plan_dir)
    with where.atomic_write(CENSUS_FILE) as stream:
        pq.write_table(pa.Table.from_pylist([asdict(r) for r in census], schema=CENSUS_SCHEMA), stream)
    where.write_bytes(json.dumps(plan, indent=2).encode(), PLAN_FILE)
    lines = format_plan(plan)
    where.write_bytes(plan_png(census, f"the census of {len(census)} videos to run: {redact(cfg.manifest)}", lines), PLAN_PICTURE)
    for line in lines:
        print_fn(line)
    print_fn(
        f"plan in {join(dry.plan_dir, PLAN_FILE)}, a row per video in {join(dry.plan_dir, CENSUS_FILE)}, "
        f"the census at a glance in {join(dry.plan_dir, PLAN_PICTURE)}"
    )
    return plan


def format_plan(plan: dict) -> list[str]:
    """plan.json as the lines a user reads before deciding."""
    v, t, c = plan["videos"], plan["time"], plan["cost"]
    lines = [f"videos: {v['to_run']} to run, {v['expected_ok']} expected ok, {v['expected_failed']} expected to fail"]
    lines += [f"  {n} x {reason}" for reason, n in v["failures"].items()]
    lines.append(f"{'split':<8}{'videos':>8}" + "".join(f"{m:>14}" for m in _modalities(plan)))
    for split, row in sorted(plan["per_split"].items()):
        lines.append(f"{split:<8}{row['videos']:>8}" + "".join(f"{row[m]:>14,}" for m in _modalities(plan)))
    lines.append("  (rgb: frames; flow modalities: frame pairs)")
    size = "unmeasured"
    if plan["bytes"] is not None:
        size = f"{format_bytes(plan['bytes'])} ({format_bytes(plan['mean_sample_bytes'] or 0)} a sample)"
        if plan.get("bytes_range"):
            size += f", {_span(plan['bytes_range'], format_bytes)} from the cheapest to the dearest calibration video"
    lines.append(f"shards: {plan['shards']}, {size}")
    cluster = plan["cluster"]
    if t["seconds"] is None:
        lines.append("wall time: unmeasured")
    else:
        stages = ", ".join(f"{k} {format_duration(v)}" for k, v in t["stages"].items() if v)
        lines.append(
            f"wall time on this cluster ({cluster['nodes']} nodes, {cluster['cpus']:g} CPUs, {cluster['gpus']} GPUs): "
            f"{format_duration(t['seconds'])}{_in_range(t.get('seconds_range'))}, bound by {t['bound_by']} "
            f"(work summed over processes: {stages}; starting {t['startup']:.0f} s)"
        )
    if c["cpu_hours"] is not None:
        hours = f"{c['cpu_hours']:.3g} CPU-hours" + (f", {c['gpu_hours']:.3g} GPU-hours" if cluster["gpus"] else "")
        lines.append(f"machine time: {hours}" + ("" if c["total"] is None else f", cost {c['total']:.3g}"))
    calibration = plan["calibration"]
    if calibration:
        rate = calibration["flow_pairs_per_s"]
        flow = f", flow {rate:.1f} pairs/s per {calibration['device_name'] or 'worker'}" if rate else ""
        videos = len(calibration["videos"])
        lines.append(f"calibrated on {videos} videos, {calibration['frames']} frames{flow}")
    lines += [f"unmeasured: {u}" for u in plan["unmeasured"]]
    return lines


def _span(span: list[float], show) -> str:
    return f"{show(span[0])} to {show(span[1])}"


def _in_range(span: list[float] | None) -> str:
    return f" ({_span(span, format_duration)})" if span else ""


def _modalities(plan: dict) -> list[str]:
    return [m for m in plan["parameters"]["process"]["modalities"]]


def _prices(dry: DryRunConfig) -> dict:
    return {"cpu_hour": dry.price_cpu_hour, "gpu_hour": dry.price_gpu_hour}
