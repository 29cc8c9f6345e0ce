"""The run report: where a preprocessing run's time went, throughput per node and per flow worker, and
failures by reason, so a user tuning a cluster sees what to change. Pure: built from shard results and
flow-worker stats; `pipeline.preprocess` prints it and writes it beside the shards (report.json).
"""

from __future__ import annotations

from collections import Counter, defaultdict

from .shards import ShardResult, Timings

REPORT_FILE = "report.json"


def failure_reason(reason: str) -> str:
    """A reason without its per-video details ("cut off: decoded 3 of 30 ..." -> "cut off")."""
    return reason.split(" (")[0].split(":")[0].strip()


def build_report(results: list[ShardResult], flow_stats: list[dict], seconds: float, node_names: dict[str, str] | None = None) -> dict:
    """The report of one run.

    Args:
        results: the shards run in this run (not those done by an earlier run).
        flow_stats: `FlowWorker.stats()` of every flow worker (empty when flow was computed in the shard tasks).
        seconds: the run's wall time.
        node_names: Ray node id -> a readable name (its address).
    """
    names = node_names or {}
    name = lambda node: names.get(node, node[:8] or "local")  # noqa: E731
    wall = max(seconds, 1e-9)
    videos = [v for r in results for v in r.videos]
    stages = {stage: sum(r.stages.get(stage, 0.0) for r in results) for stage in Timings.STAGES}
    per_node = _per_node(results, flow_stats, name, wall)
    workers = [_flow_worker_row(st, name(st.get("node", "")), wall) for st in flow_stats]
    # flow computed by the flow workers (whose flow seconds include compiling), or inside the shard tasks
    compile_seconds = sum(s["compile_seconds"] for s in flow_stats) + sum(r.stages.get("compile", 0.0) for r in results)
    flow_seconds = sum(s["flow_seconds"] - s["compile_seconds"] for s in flow_stats) + sum(r.stages.get("flow", 0.0) for r in results)
    pairs = sum(s["pairs"] for s in flow_stats) + sum(r.flow_pairs for r in results)
    return {
        "seconds": seconds,
        "videos": len(videos),
        "ok": sum(v.status == "ok" for v in videos),
        "videos_per_s": len(videos) / wall,
        "pairs": pairs,
        "pairs_per_s": pairs / wall,
        # seconds summed over processes: shard tasks (decode, encode, write, waiting for flow) and flow workers
        "time": {
            "decode": stages["decode"],
            "encode": stages["encode"],
            "write": stages["write"],
            "flow": flow_seconds,
            "compile": compile_seconds,
            "waiting_for_flow": stages["flow_wait"],
            "flow_workers_idle": sum(max(s["seconds"] - s["flow_seconds"], 0.0) for s in flow_stats),
            # warped flow's camera motion: estimated by the shard tasks, so that the flow workers only solve
            "homography_in_shard_tasks": stages["homography"],
            "homography_in_flow_workers": sum(s["homography_seconds"] for s in flow_stats),
        },
        "nodes": per_node,
        "flow_workers": workers,
        "failures": dict(Counter(failure_reason(v.reason) for v in videos if v.status != "ok").most_common()),
        # videos kept without the frames damaged packets lost (results.parquet: frames_lost, lost_at)
        "damaged": {"videos": sum(v.frames_lost > 0 for v in videos), "frames_lost": sum(v.frames_lost for v in videos)},
    }


def _per_node(results: list[ShardResult], flow_stats: list[dict], name, wall: float) -> dict[str, dict]:
    """Videos, frames, flow pairs and task seconds per node, with rates over the run's wall time."""
    per_node: dict[str, dict] = defaultdict(lambda: {"videos": 0, "ok": 0, "frames": 0, "pairs": 0, "task_seconds": 0.0})
    for r in results:
        node = per_node[name(r.node)]
        node["videos"] += len(r.videos)
        node["ok"] += sum(v.status == "ok" for v in r.videos)
        node["frames"] += sum(v.frames for v in r.videos)
        node["task_seconds"] += r.seconds
        node["pairs"] += r.flow_pairs
    for s in flow_stats:
        per_node[name(s.get("node", ""))]["pairs"] += s["pairs"]
    for node in per_node.values():
        node["videos_per_s"] = node["videos"] / wall
        node["pairs_per_s"] = node["pairs"] / wall
    return dict(per_node)


def _flow_worker_row(s: dict, node: str, wall: float) -> dict:
    """One flow worker's line of the report, from its `FlowWorker.stats()`."""
    return {
        "node": node,
        "device": s["device"],
        "pid": s["pid"],
        "pairs": s["pairs"],
        "pairs_per_s": s["pairs"] / wall,
        "batches": s["batches"],
        "batch_size": s["batch_size"],
        "padded_pairs": s["padded_pairs"],
        "busy": s["flow_seconds"] / max(s["seconds"], 1e-9),
        "flow_seconds": s["flow_seconds"],
        "compiles": s["compiles"],
        "compile_seconds": s["compile_seconds"],
        "compile_failed": s["compile_failed"],
        "failed_batches": s["failed_batches"],
        "out_of_memory": s["out_of_memory"],
        "host_reads_per_launch": s["host_reads"] / max(s["batches"], 1),  # blocking reads of device values
        "iterations_per_warp": s["iterations_per_warp"],
        "homography_seconds": s["homography_seconds"],
    }


def _of_dataset(report: dict) -> str:
    """What the report's videos are of the dataset, where this run processed only some (a resume, append or retry)."""
    total, grown = report.get("dataset_videos", report["videos"]), report.get("grown")
    if grown:
        return f" ({grown['added']} added, {grown['retried']} retried; the dataset holds {total})"
    return f" (the rest of the dataset's {total})" if total != report["videos"] else ""


def format_report(report: dict) -> list[str]:
    """The report as a few lines for the log (failures are in the run summary)."""
    t = report["time"]
    busy = sum(t.values()) or 1e-9
    lines = [
        f"report: {report['videos']} videos{_of_dataset(report)}, {report['videos_per_s']:.2f} videos/s, "
        f"{report['pairs_per_s']:.1f} flow pairs/s; "
        "time (summed over processes): "
        + ", ".join(f"{k.replace('_', ' ')} {v:.0f}s ({100 * v / busy:.0f}%)" for k, v in t.items() if v >= 0.5),
    ]
    for node, n in sorted(report["nodes"].items()):
        lines.append(f"  node {node}: {n['videos']} videos ({n['videos_per_s']:.2f}/s), {n['pairs']} flow pairs ({n['pairs_per_s']:.1f}/s)")
    for w in report["flow_workers"]:
        lines.append(
            f"  flow worker {w['device']} on {w['node']}: {w['pairs']} pairs ({w['pairs_per_s']:.1f}/s), busy {100 * w['busy']:.0f}%, "
            f"{w['batches']} batches of {w['batch_size']} ({w['padded_pairs']} padding), "
            f"{w['compiles']} compiles ({w['compile_seconds']:.0f}s), {w['host_reads_per_launch']:.0f} host reads per launch"
            + (f", {w['out_of_memory']} out-of-memory retries" if w["out_of_memory"] else "")
        )
    damaged = report.get("damaged", {}).get("videos", 0)
    if damaged:
        lost = report["damaged"]["frames_lost"]
        lines.append(
            f"  {damaged} {'video' if damaged == 1 else 'videos'} kept without {lost} frames that damaged packets lost "
            "(results.parquet: frames_lost, lost_at; --strict-decode fails them instead)"
        )
    if report["flow_workers"] and t["flow_workers_idle"] > 2 * (t["flow"] + t["compile"]):
        lines.append("  hint: the flow workers mostly waited for frames; more CPUs for decoding (or fewer flow workers) would help")
    elif t["waiting_for_flow"] > 2 * (t["decode"] + t["encode"]) and report["flow_workers"]:
        lines.append("  hint: flow is the bottleneck (shard tasks mostly waited for it); more flow workers (GPUs) would help")
    return lines
