"""What a run will cost, from its census and calibration: videos expected ok and failed, frames and flow pairs,
shard bytes, wall time on the cluster at hand and which stage bounds it, and the price. Pure.

Every figure scales a calibrated rate by what the census found for each video (its frames, its stored and output
pixels); the tar format's own overheads (a 512-byte header per member, data padded to 512 bytes) are added by
count. A figure whose rate nothing measured (no GPU in the cluster, no video decoded) is named in `unmeasured`
and left out, never guessed. Bytes and wall time also come as a range: the same sums at the low and the high
rates of `Calibration.rate_bounds` (the calibration videos drawn again), the bytes also with each member's padding
at its least (none) and its most (511 bytes): for samples of small members that is most of the uncertainty.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from schemas.sample import flow_members

from .census import VideoCensus
from .report import failure_reason
from .shards import ProcessConfig, ShardResult

TAR_BLOCK = 512
PADDING = TAR_BLOCK // 2  # a member's data is padded to whole blocks: half a block on average, 0 to 511 bytes
SAMPLE_FIXED_BYTES = 3 * (TAR_BLOCK + TAR_BLOCK // 2) + 1024  # cls, json (about 1 KB) and the member table's header
TABLE_BYTES_PER_MEMBER = 16  # the member table: two int64 per later member
SHARD_END_BYTES = 2 * TAR_BLOCK + 10240 // 2  # tar's end blocks, and the last record half filled on average


@dataclass(frozen=True)
class Cluster:
    """The resources a run would get: what Ray reports for the attached cluster."""

    nodes: int
    cpus: float
    gpus: int
    cpus_per_task: float = 1.0


def video_figures(
    row: VideoCensus, modalities: tuple[str, ...], flow_encoding: str, fps: float | None, rates: dict, padding: float = PADDING
) -> dict:
    """One expected-ok video's frames, pairs, bytes and seconds per stage, from the calibrated `rates`
    (`Calibration.per_pixel`) at a run's `--fps` (None: every frame), each member's data padded by `padding`
    bytes; a quantity whose rate is unmeasured is None."""
    frames = row.estimated_frames
    pairs = max(frames - 1, 0)
    flows = [m for m in modalities if m != "rgb"]
    solves = 1 + ("warp_tvl1" in flows)  # warped flow solves the plain flow first (its points find the camera motion)
    pixels = row.out_width * row.out_height
    decoded = frames * row.fps / fps if fps and row.fps else frames  # resampled: every source frame up to the last kept
    members = 3 + (frames if "rgb" in modalities else 0) + pairs * len(flows) * len(flow_members("flow", 0, flow_encoding))
    data: float | None = 0.0
    rgb_fixed, pair_fixed = rates.get("rgb_bytes_per_frame", 0.0), rates.get("flow_bytes_per_pair", 0.0)  # whatever the size
    if "rgb" in modalities:
        data = None if rates["rgb_bytes_per_pixel"] is None else data + (rates["rgb_bytes_per_pixel"] * pixels + rgb_fixed) * frames
    for m in flows:
        per = rates["flow_bytes_per_pixel"].get(m)
        data = None if data is None or per is None else data + (per * pixels + pair_fixed) * pairs
    seconds = {
        "decode": _times(rates["decode_ns_per_pixel"], 1e-9 * row.width * row.height * decoded),
        "encode": _times(rates["encode_ns_per_pixel"], 1e-9 * pixels * frames),
        "flow": _times(rates["flow_ns_per_pixel"], 1e-9 * pixels * pairs * solves) if flows else 0.0,
        "homography": _times(rates["homography_ms_per_pair"], 1e-3 * pairs) if "warp_tvl1" in flows else 0.0,
    }
    overhead = SAMPLE_FIXED_BYTES + members * (TAR_BLOCK + padding + TABLE_BYTES_PER_MEMBER)
    return {
        "frames": frames,
        "pairs": pairs if flows else 0,
        "bytes": None if data is None else data + overhead,
        "seconds": seconds,
    }


def forecast(
    census: list[VideoCensus],
    shards: list[list[str]],
    process: ProcessConfig,
    rates: dict,
    cluster: Cluster,
    flow_device: str,
    startup_seconds: float,
    prices: dict[str, float | None] | None = None,
    bounds: tuple[dict, dict] | None = None,
) -> dict:
    """The plan's figures (see the module) for the videos of `census`, to go into new `shards` (each its videos'
    ids) made at `process`'s settings.

    Args:
        rates: `Calibration.per_pixel()`, measured with the flow on `flow_device` ("cpu", "cuda" or "").
        startup_seconds: what a run spends before and after its videos (starting Ray's workers and the flow
            service), measured by the dry run.
        prices: {"cpu_hour": ..., "gpu_hour": ...}, either None where not given.
        bounds: (lowest, highest) rates (`Calibration.rate_bounds`), for the bytes' and the wall time's ranges.
    """
    prices = prices or {}
    ok = [r for r in census if r.status == "ok"]
    failures = Counter(failure_reason(r.reason) for r in census if r.status != "ok")
    modalities = process.modalities
    figures = [video_figures(r, modalities, process.flow_encoding, process.decode.fps, rates) for r in ok]
    flows = [m for m in modalities if m != "rgb"]
    per_split: dict[str, dict] = {}
    for row, f in zip(ok, figures):
        split = per_split.setdefault(row.split, {"videos": 0, **({"rgb": 0} if "rgb" in modalities else {}), **{m: 0 for m in flows}})
        split["videos"] += 1
        if "rgb" in modalities:
            split["rgb"] += f["frames"]
        for m in flows:
            split[m] += f["pairs"]
    unmeasured: list[str] = []
    expected = {r.video_id for r in ok}
    written = sum(any(v in expected for v in shard) for shard in shards)  # a shard of failures leaves no tar
    total_bytes = _total_bytes(figures, written, bool(census), unmeasured)
    time = _wall_of(ok, figures, shards, cluster, flow_device, flows, startup_seconds, unmeasured)
    cost = _cost(time, cluster, prices, unmeasured)
    bytes_range, time["seconds_range"] = None, None
    if bounds is not None:  # the same sums at the lowest and at the highest rates
        ends = [
            [video_figures(r, modalities, process.flow_encoding, process.decode.fps, rates, padding) for r in ok]
            for rates, padding in zip(bounds, (0, TAR_BLOCK - 1))
        ]
        sizes = [_total_bytes(f, written, bool(census), []) for f in ends]
        walls = [_wall_of(ok, f, shards, cluster, flow_device, flows, startup_seconds, [])["seconds"] for f in ends]
        bytes_range = None if None in sizes or total_bytes is None else [min(*sizes, total_bytes), max(*sizes, total_bytes)]
        if None not in walls and time["seconds"] is not None:
            time["seconds_range"] = [min(*walls, time["seconds"]), max(*walls, time["seconds"])]
    return {
        "videos": {
            "to_run": len(census),
            "expected_ok": len(ok),
            "expected_failed": len(census) - len(ok),
            "failures": dict(failures.most_common()),
        },
        "per_split": per_split,
        "frames": sum(f["frames"] for f in figures),
        "pairs": sum(f["pairs"] for f in figures),
        "shards": len(shards),
        "shards_written": written,
        "bytes": total_bytes,
        "bytes_range": bytes_range,  # [lowest, highest]: every video as the cheapest / the dearest calibration video
        "mean_sample_bytes": total_bytes / len(ok) if total_bytes is not None and ok else None,
        "time": time,
        "cost": cost,
        "unmeasured": unmeasured,
    }


def _total_bytes(figures: list[dict], written: int, any_videos: bool, unmeasured: list[str]) -> float | None:
    """The shards' bytes: every sample's, and each written tar's end."""
    sizes = [f["bytes"] for f in figures]
    if figures and None in sizes:
        unmeasured.append("shard bytes: no calibration video could be processed")
        return None
    return sum(sizes) + written * SHARD_END_BYTES if figures or not any_videos else None


def _wall_of(ok, figures, shards, cluster: Cluster, flow_device: str, flows: list[str], startup: float, unmeasured: list[str]) -> dict:
    """`_wall` of these videos' figures, planned into `shards`."""
    stage_seconds = {stage: _sum(f["seconds"][stage] for f in figures) for stage in ("decode", "encode", "flow", "homography")}
    # a shard task decodes and encodes its videos one after another: the longest is a bound of its own
    own = {r.video_id: _sum(f["seconds"][s] for s in ("decode", "encode", "homography")) for r, f in zip(ok, figures)}
    per_shard = [_sum(own.get(v, 0.0) for v in shard) for shard in shards]
    longest = None if None in per_shard else max(per_shard, default=0.0)
    return _wall(stage_seconds, longest, cluster, flow_device, flows, startup, unmeasured)


def _wall(
    stages: dict, longest_shard: float | None, cluster: Cluster, flow_device: str, flows: list[str], startup: float, unmeasured: list[str]
) -> dict:
    """Wall time on `cluster`: the CPU work (decode, encode, homographies, and the flow where it runs on CPUs)
    spread over the CPUs, against the GPU flow work spread over the GPUs, and against the longest shard's own work
    (one task's, serial); the largest bounds the run."""
    if any(v is None for k, v in stages.items() if k != "flow") or (flows and stages["flow"] is None):
        unmeasured.append("wall time: a stage's rate was not measured (no calibration video could be processed)")
        return {"seconds": None, "bound_by": None, "stages": stages, "startup": startup}
    cpu_work = stages["decode"] + stages["encode"] + stages["homography"]
    on_gpu = bool(flows) and flow_device == "cuda" and cluster.gpus > 0
    if flows and cluster.gpus > 0 and not on_gpu:
        unmeasured.append("GPU flow rate: the calibration solved on the CPU; the wall time assumes flow on the CPUs")
    if on_gpu:
        cpu_slots = max(cluster.cpus - cluster.gpus, 1.0)  # each GPU flow worker holds a CPU
        bounds = {
            "decoding and encoding on the CPUs": cpu_work / cpu_slots,
            "flow on the GPUs": stages["flow"] / cluster.gpus,
        }
    else:  # the CPU flow workers share the cores with the shard tasks
        flow = stages["flow"] or 0.0
        what = "flow on the CPUs" if flows and flow > cpu_work else "decoding and encoding on the CPUs"
        bounds = {what: (cpu_work + flow) / max(cluster.cpus, 1.0)}
    bounds["the longest shard (fewer videos per shard would spread it)"] = longest_shard or 0.0
    bound = max(bounds, key=bounds.get)
    return {"seconds": startup + bounds[bound], "bound_by": bound, "stages": stages, "startup": startup}


def _cost(time: dict, cluster: Cluster, prices: dict, unmeasured: list[str]) -> dict:
    """Machine hours for the wall time (a cluster is paid for while it runs), priced where prices were given."""
    if time["seconds"] is None:
        return {"cpu_hours": None, "gpu_hours": None, "total": None}
    hours = time["seconds"] / 3600
    cost = {"cpu_hours": hours * cluster.cpus, "gpu_hours": hours * cluster.gpus}
    priced = [(cost["cpu_hours"], prices.get("cpu_hour")), (cost["gpu_hours"], prices.get("gpu_hour"))]
    if any(h and p is None for h, p in priced):
        unmeasured.append("cost: pass --price-cpu-hour and --price-gpu-hour (where the cluster has GPUs) to price the run")
        cost["total"] = None
    else:
        cost["total"] = sum(h * (p or 0.0) for h, p in priced)
    return cost


def _times(rate: float | None, amount: float) -> float | None:
    return None if rate is None else rate * amount


def _sum(values) -> float | None:
    values = list(values)
    return None if any(v is None for v in values) else sum(values)


COMPARED = ("expected_ok", "expected_failed", "frames", "pairs", "bytes", "seconds")  # a plan's figures a run is held to


def actual_figures(results: list[ShardResult], seconds: float, with_flow: bool) -> dict:
    """A run's figures as a plan states them, from the shards it ran (`results`), its wall time, and whether it
    computed flow."""
    videos = [v for r in results for v in r.videos]
    ok = [v for v in videos if v.status == "ok"]
    return {
        "expected_ok": len(ok),
        "expected_failed": len(videos) - len(ok),
        "frames": sum(v.frames for v in ok),
        "pairs": sum(max(v.frames - 1, 0) for v in ok) if with_flow else 0,
        "bytes": sum(r.bytes for r in results),
        "seconds": seconds,
        "failures": dict(Counter(failure_reason(v.reason) for v in videos if v.status != "ok").most_common()),
    }


def planned_figures(plan: dict) -> dict:
    """plan.json's figures in `actual_figures`' terms."""
    v = plan["videos"]
    return {
        "expected_ok": v["expected_ok"],
        "expected_failed": v["expected_failed"],
        "frames": plan["frames"],
        "pairs": plan["pairs"],
        "bytes": plan["bytes"],
        "seconds": plan["time"]["seconds"],
        "failures": v["failures"],
        "ranges": {"bytes": plan.get("bytes_range"), "seconds": plan["time"].get("seconds_range")},
    }


def against_plan(planned: dict, actual: dict) -> dict:
    """Each compared figure, planned and actual, and actual / planned (None where the plan has no figure)."""
    rows = {}
    for name in COMPARED:
        p, a = planned.get(name), actual.get(name)
        rows[name] = {"planned": p, "actual": a, "ratio": a / p if p else None}
        span = planned.get("ranges", {}).get(name)
        if span:
            rows[name] |= {"range": span, "inside": span[0] <= a <= span[1]}
    rows["failures"] = {"planned": planned.get("failures", {}), "actual": actual.get("failures", {})}
    return rows


def format_against(rows: dict) -> list[str]:
    """The comparison as the lines a run ends with."""
    shown = {"bytes": lambda b: f"{b / 2**20:.1f} MiB", "seconds": lambda s: f"{s:.0f} s"}
    parts = []
    for name in COMPARED:
        row = rows[name]
        show = shown.get(name, lambda n: f"{n:,}")
        planned = "unmeasured" if row["planned"] is None else show(row["planned"])
        measured = row["ratio"] is not None and name in ("frames", "pairs", "bytes", "seconds")
        ratio = f" ({100 * (row['ratio'] - 1):+.0f}%)" if measured else ""
        if "range" in row:
            low, high = (show(v) for v in row["range"])
            ratio += f", {'inside' if row['inside'] else 'OUTSIDE'} its range {low}-{high}"
        parts.append(f"{name.replace('expected_', '').replace('_', ' ')} {show(row['actual'])} of {planned} planned{ratio}")
    lines = ["against the plan: " + "; ".join(parts)]
    if rows["failures"]["planned"] != rows["failures"]["actual"]:
        lines.append(f"  failures planned {rows['failures']['planned']}, actual {rows['failures']['actual']}")
    return lines
