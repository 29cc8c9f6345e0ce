"""The flow service benchmark: one command for a GPU machine (and, with --smoke, a quick CPU check in the suite).

    python bench/flow_service.py [--videos ../shared/data/videos] [--middlebury ../shared/data/middlebury]
                                 [--batches 32,64,128,256,512] [--reference GIT_REF] [--sections host,reads,...]
                                 [--smoke] [--json out.json]

1. Host cost (what a GPU waits for): microseconds per solver iteration on tiny frames (8 pairs of 2x2 and
   24x24, one level, one warp, 300 iterations that never converge, compiled, the GPU code path, one CPU
   thread, best of 20), for a convergence check every iteration (one host call per iteration, as the solver
   worked before blocks) against every 10 (one call per block); blocking host reads per launch of 8 real pairs at 128x96
   (counted with `pipeline.flow.host_reads.HostReads`), with none allowed in setting pairs aside.
2. Tails: iterations per warp (mean / p99 / max over every warp of every level) of 8 real 340x256 pairs,
   and on a GPU the share of a launch's wall time the device was busy (the profiler's kernel time).
3. Solver: flow pairs/s of one `FlowWorker` on the default device (cuda when present) at 340x256 on real
   frames, per batch size, with the peak device memory of each (host peak RSS on the CPU); tvl1 alone and the
   two solves of warp_tvl1 (whose homographies the shard tasks estimate, not timed here).
4. Accuracy: end-point error on the Middlebury pairs of the device path (tensor ops, compiled) beside the CPU
   path (OpenCV's remap and median), their difference, and OpenCV's own DualTVL1 (ratio bound 1.05).
5. End to end: `python -m jobs.preprocess` as a user runs it (embedded Ray and start-up included; compiles
   cached on disk by one warm-up run of each code first) on 3 real clips of up to 60 frames, flow pairs/s
   for rgb+tvl1 and rgb+warp_tvl1 with the flow service and with flow computed inside the shard tasks
   (`--flow-workers 0`), against warm `compute_flow` on the same frames in this process; with `--reference
   GIT_REF` the same runs of that commit's code (taken with `git archive`) beside this checkout's, and the
   ratio between them. `report.json`'s homography seconds per role show where warped flow's CPU work ran.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.decode import DecodeConfig, decode_video  # noqa: E402
from pipeline.flow import PRESETS, TVL1Config, compute_flow, default_device, tvl1_flow  # noqa: E402
from pipeline.flow.flo import MIDDLEBURY_PAIRS, end_point_error, read_flo  # noqa: E402
from pipeline.flow.host_reads import HostReads  # noqa: E402
from pipeline.flow.tvl1 import SolveTrace  # noqa: E402
from pipeline.flow_requests import FlowRequest, FlowSpec  # noqa: E402
from pipeline.flow_service import FlowWorker  # noqa: E402
from schemas.manifest import VideoRecord, manifest_table, write_manifest  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm")
SECTIONS = ("host", "reads", "tails", "solver", "accuracy", "end_to_end")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def gray_frames(path: Path, size: tuple[int, int], frames: int) -> np.ndarray:
    video = decode_video(str(path), DecodeConfig(size=size, max_frames=frames))
    return np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in video.frames])


def as_batch(frames: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(frames))[:, None].to(device).float() / 255.0


def host_rows(device: torch.device, smoke: bool) -> list[dict]:
    """Microseconds per iteration of 300 iterations of 8 pairs of tiny frames, per frame size and check interval.

    One CPU thread: what is measured is the host's cost per call (Python, Dynamo's guards, Inductor's wrapper),
    which runs on one thread; with more, the CPU kernels' own fork and join per loop would be counted too, a
    cost of the CPU's arithmetic that a GPU does not have."""
    rows, rng = [], np.random.default_rng(0)
    iterations = 20 if smoke else 300
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for size in (2, 24):
            frames = rng.integers(0, 255, (8, size, size), dtype=np.uint8)
            I0, I1 = as_batch(frames, device), as_batch(np.roll(frames, 1, axis=2), device)
            seconds = {}
            for check_every in (1, 10):
                cfg = TVL1Config(
                    nscales=1, warps=1, outer_iterations=iterations // 10, inner_iterations=10, epsilon=1e-12,
                    compile=not smoke, opencv_cpu_ops=False, check_every=check_every,
                )  # fmt: skip
                with torch.inference_mode():
                    tvl1_flow(I0, I1, cfg)  # compiles (once per process for every size)
                    best = float("inf")
                    for _ in range(2 if smoke else 20):  # best of 20: this machine is shared, its noise is one-sided
                        synchronize(device)
                        start = time.perf_counter()
                        tvl1_flow(I0, I1, cfg)
                        synchronize(device)
                        best = min(best, time.perf_counter() - start)
                seconds[check_every] = best
                rows.append({"frames": f"{size}x{size}", "check_every": check_every, "us_per_iteration": best / iterations * 1e6})
            rows[-1]["vs_every_iteration"] = seconds[1] / seconds[10]
            for row in rows[-2:]:
                ratio = f"{row['vs_every_iteration']:.1f}x less" if "vs_every_iteration" in row else "reference"
                print(f"| {row['frames']} | {row['check_every']} | {row['us_per_iteration']:.1f} | {ratio} |", flush=True)
    finally:
        torch.set_num_threads(threads)
    return rows


def shifted_pairs(frame: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """8 pairs of one real frame shifted by 0-2 px (they converge at different checks)."""
    nxt = np.stack([np.roll(frame, (i % 3, i // 3), (1, 0)) for i in range(8)])
    return as_batch(np.stack([frame] * 8), device), as_batch(nxt, device)


def read_rows(frame: np.ndarray, device: torch.device, overrides: dict) -> list[dict]:
    """Blocking host reads of one launch (opencv preset with `overrides`, eager, the GPU code path), per check interval."""
    I0, I1 = shifted_pairs(frame, device)
    rows = []
    for check_every in (1, 10):
        trace = SolveTrace()
        cfg = PRESETS["opencv"].replace(compile=False, opencv_cpu_ops=False, check_every=check_every, **overrides)
        with torch.no_grad(), HostReads() as reads:  # not inference mode, where .item() escapes the count
            tvl1_flow(I0, I1, cfg, trace)
        row = {
            "check_every": check_every,
            "reads": reads.total,
            "by_op": dict(reads.by_op),
            "checks": trace.reads,
            "compactions": trace.compactions,
            "iterations": sum(trace.iterations),
        }
        rows.append(row)
        ops = ", ".join(f"{n} {op}" for op, n in row["by_op"].items())
        print(f"| {check_every} | {row['reads']} ({ops}) | {row['checks']} | {row['compactions']} | {row['iterations']} |", flush=True)
    return rows


def tail_row(videos: list[Path], device: torch.device, smoke: bool) -> dict:
    """Iterations per warp of 8 real 340x256 pairs (frames 5->6 and 20->21 of four clips), and the device's busy share."""
    size, picks = ((64, 48), (1, 2)) if smoke else ((340, 256), (5, 20))
    prev, nxt = [], []
    for path in (videos * 4)[:4]:
        g = gray_frames(path, size, picks[1] + 2)
        for i in picks:
            i = min(i, len(g) - 2)
            prev.append(g[i])
            nxt.append(g[i + 1])
    I0, I1 = as_batch(np.stack(prev), device), as_batch(np.stack(nxt), device)
    cfg = PRESETS["opencv"].replace(opencv_cpu_ops=False)
    with torch.inference_mode():
        tvl1_flow(I0, I1, cfg)  # warm-up (compiles)
        trace = SolveTrace()
        start = time.perf_counter()
        busy = device_busy(lambda: tvl1_flow(I0, I1, cfg, trace), device)
        seconds = time.perf_counter() - start
    it = np.asarray(trace.iterations)
    row = {
        "pairs": len(prev),
        "warps": len(it),
        "iterations_mean": float(it.mean()),
        "iterations_p99": float(np.percentile(it, 99)),
        "iterations_max": int(it.max()),
        "warps_at_cap": int((it == cfg.outer_iterations * cfg.inner_iterations).sum()),
        "seconds": seconds,
        "device_busy": busy,
    }
    busy_text = f"{100 * busy:.0f}%" if busy is not None else "n/a (no GPU)"
    print(
        f"| {row['pairs']} x {size[0]}x{size[1]} | {row['iterations_mean']:.0f} / {row['iterations_p99']:.0f} / {row['iterations_max']} | "
        f"{row['warps_at_cap']} of {row['warps']} | {seconds:.2f} | {busy_text} |",
        flush=True,
    )
    return row


def device_busy(run, device: torch.device) -> float | None:
    """The share of `run`'s wall time the GPU spent in kernels (the profiler's device time); None on the CPU."""
    if device.type != "cuda":
        run()
        return None
    from torch.profiler import ProfilerActivity, profile

    synchronize(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        run()
        synchronize(device)
        wall = time.perf_counter() - start
    kernel_us = sum(e.self_device_time_total for e in prof.key_averages())
    return kernel_us / 1e6 / wall


def solver_rows(frames: np.ndarray, batches: list[int], device: torch.device, launches: int) -> list[dict]:
    """Pairs/s of one worker per batch size: one launch to warm up (compile), then `launches` timed ones; for
    warp_tvl1 its two solves (the homographies are the shard tasks' work)."""
    rows = []
    for algorithm in ("tvl1", "warp_tvl1"):
        solves = 2 if algorithm == "warp_tvl1" else 1
        for batch in batches:
            worker = FlowWorker(FlowSpec(), batch_size=batch, device=str(device))
            chunk = np.concatenate([frames] * (batch // (len(frames) - 1) + 1))[: batch + 1]  # exactly one launch
            request = FlowRequest(chunk, store_as="tvl1", points=[np.zeros((100, 2), np.int64)] * batch)
            second = FlowRequest(chunk[:-1], targets=np.roll(chunk[1:], 1, axis=2), store_as="warp_tvl1")
            worker.compute(request)
            synchronize(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            for _ in range(launches):
                worker.compute(request)
                if solves == 2:
                    worker.compute(second)
            synchronize(device)
            seconds = time.perf_counter() - start
            stats = worker.stats()
            rows.append(
                {
                    "algorithm": algorithm,
                    "batch": batch,
                    "pairs_per_s": batch * launches / seconds,
                    "peak_mb": peak_memory_mb(device),
                    "compiles": stats["compiles"],
                    "host_reads_per_launch": stats["host_reads"] / stats["batches"],
                }
            )
            print(
                f"| {algorithm} | {batch} | {rows[-1]['pairs_per_s']:.1f} | {rows[-1]['peak_mb']:.0f} | "
                f"{rows[-1]['host_reads_per_launch']:.0f} |",
                flush=True,
            )
    return rows


def accuracy_rows(root: Path, device: torch.device, sequences: list[str], compile: bool | None = None) -> list[dict]:
    """End-point errors per Middlebury sequence; `compile` for both paths (None: where it pays, False: eager)."""
    rows = []
    for name in sequences:
        a, b, f = MIDDLEBURY_PAIRS[name]
        prev, nxt = (cv2.imread(str(root / name / x), cv2.IMREAD_GRAYSCALE) for x in (a, b))
        truth = read_flo(root / name / f)
        # the device path: tensor ops (the GPU code, also on the CPU), compiled where the device allows
        on_device = compute_flow(prev, nxt, device=str(device), opencv_cpu_ops=False, compile=compile)
        cpu = compute_flow(prev, nxt, device="cpu", compile=compile)
        opencv = cv2.optflow.DualTVL1OpticalFlow_create().calc(prev, nxt, None)
        row = {
            "sequence": name,
            "device_epe": end_point_error(on_device, truth),
            "cpu_epe": end_point_error(cpu, truth),
            "device_vs_cpu": float(np.linalg.norm(on_device - cpu, axis=-1).mean()),
            "opencv_epe": end_point_error(opencv, truth),
        }
        row["ratio"] = row["device_epe"] / row["opencv_epe"]
        rows.append(row)
        print(
            f"| {name} | {row['device_epe']:.3f} | {row['cpu_epe']:.3f} | {row['device_vs_cpu']:.3f} | {row['opencv_epe']:.3f} | "
            f"{row['ratio']:.3f} |",
            flush=True,
        )
    return rows


def warm_compute(paths: list[Path], decode: DecodeConfig, algorithms: tuple[str, ...], device: torch.device) -> tuple[int, float]:
    """(pairs, seconds) of compute_flow on every clip's frames, in batches of 32, after a warm-up."""
    grays = [np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in decode_video(str(p), decode).frames]) for p in paths]
    for g in grays:  # every resolution compiled before timing
        compute_flow(g[:3], g[1:4], algorithms, device=str(device))
    pairs, start = 0, time.perf_counter()
    for g in grays:
        for i in range(0, len(g) - 1, 32):
            j = min(i + 32, len(g) - 1)
            compute_flow(g[i:j], g[i + 1 : j + 1], algorithms, device=str(device))
            pairs += j - i
    return pairs, time.perf_counter() - start


def checkout(ref: str, into: Path) -> Path:
    """The tree of git commit `ref` under `into` (for running the reference code in the same benchmark run)."""
    tar = subprocess.run(["git", "-C", str(REPO), "archive", ref], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        archive.extractall(into, filter="data")
    return into


def end_to_end(paths: list[Path], work: Path, modalities: str, decode_args: list[str], extra: list[str], code: Path) -> dict:
    """Flow pairs, wall seconds, the report's homography seconds and lines of `python -m jobs.preprocess` from
    the tree `code` in a fresh process."""
    manifest = work / "clips.parquet"
    records = [VideoRecord(p.stem.replace(".", "_"), str(p), 0, "clip", "train", "csv") for p in paths]
    write_manifest(manifest_table(records, ["clip"], "csv"), str(manifest))
    out = work / f"out-{len(list(work.iterdir()))}"
    command = [sys.executable, "-m", "jobs.preprocess", "--manifest", str(manifest), "--out", str(out), "--modalities", modalities]
    command += ["--progress-seconds", "1000", *decode_args, *extra]
    env = {**os.environ, "PYTHONPATH": str(code)}  # the Ray workers import the same tree as the driver
    start = time.perf_counter()
    result = subprocess.run(command, cwd=code, capture_output=True, text=True, timeout=3600, env=env)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"preprocess failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    report = json.loads((out / "report.json").read_text())
    frames = json.loads((out / "dataset.json").read_text())["counts"]["frames"]
    lines = [line for line in result.stdout.splitlines() if line.startswith(("report:", "  node", "  flow worker", "  hint"))]
    homography = {k: v for k, v in report["time"].items() if "homography" in k}
    return {"pairs": frames - len(paths), "seconds": seconds, "homography": homography, "report": "\n".join(lines)}


def end_to_end_rows(clips, decode, decode_args, device, layouts, modalities_list, reference: str | None, warm_up: bool) -> list[dict]:
    """Each layout and modality set as a `jobs.preprocess` run, for this checkout and the reference; `warm_up`
    first runs each code once so that compiles come from the on-disk cache (the smoke run compiles nothing)."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="flowshard-bench-") as work:
        trees = [("this checkout", REPO)]
        if reference:
            trees.append((f"reference {reference}", checkout(reference, Path(work) / "reference")))
        for _, tree in trees if warm_up else ():  # each code's kernels compiled once into Inductor's on-disk cache
            end_to_end(clips[:1], Path(work), modalities_list[-1], decode_args, [], tree)
        for modalities in modalities_list:
            pairs_ref, seconds_ref = warm_compute(clips, decode, (modalities.split(",")[1],), device)
            for layout, extra in layouts:
                runs = {}
                for name, tree in trees:
                    run = end_to_end(clips, Path(work), modalities, decode_args, extra, tree)
                    run.update(modalities=modalities, layout=layout, code=name, pairs_per_s=run["pairs"] / run["seconds"])
                    run["vs_warm_compute_flow"] = run["pairs_per_s"] / (pairs_ref / seconds_ref)
                    runs[name] = run
                    rows.append(run)
                this = runs["this checkout"]
                if reference:
                    this["vs_reference"] = this["pairs_per_s"] / runs[f"reference {reference}"]["pairs_per_s"]
                for run in runs.values():
                    h = run["homography"]
                    where = "not reported"
                    if h:
                        where = f"{h['homography_in_shard_tasks']:.1f} / {h['homography_in_flow_workers']:.1f}"
                    vs = f"{run['vs_reference']:.2f}x" if "vs_reference" in run else "-"
                    print(
                        f"| {modalities} | {layout} | {run['code']} | {run['pairs']} | {run['seconds']:.1f} | {run['pairs_per_s']:.1f} | "
                        f"{run['vs_warm_compute_flow']:.2f}x | {vs} | {where} |",
                        flush=True,
                    )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", default=str(SHARED / "videos"))
    parser.add_argument("--middlebury", default=str(SHARED / "middlebury"))
    parser.add_argument("--batches", default=None, help="batch sizes for the solver rows (default 32,64,128,256,512; 8,32 on the CPU)")
    parser.add_argument("--short-side", type=int, default=None, help="end-to-end frame size (default 256 on a GPU, 128 on the CPU)")
    parser.add_argument("--clips", type=int, default=3, help="real clips in the end-to-end runs (default %(default)s)")
    parser.add_argument("--max-frames", type=int, default=60, help="frames per clip in the end-to-end runs (default %(default)s)")
    parser.add_argument("--reference", help="a git commit whose code runs the end-to-end rows too (e.g. the commit before a change)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="which sections to run (default: all, %(default)s)")
    parser.add_argument("--smoke", action="store_true", help="a quick check of every section (tiny sizes), for the test suite")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    device = default_device()
    videos = sorted(p for p in Path(args.videos).iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS) if Path(args.videos).is_dir() else []
    if not videos or not Path(args.middlebury).is_dir():
        print(
            f"error: needs the real clips ({args.videos}) and Middlebury ({args.middlebury}); pass --videos / --middlebury", file=sys.stderr
        )
        return 2
    cpu = device.type == "cpu"
    batches = [int(b) for b in (args.batches or ("2,4" if args.smoke else "8,32" if cpu else "32,64,128,256,512")).split(",")]
    size = (64, 48) if args.smoke else (340, 256)
    short_side = 64 if args.smoke else args.short_side or (128 if cpu else 256)
    clips = videos[:2] if args.smoke else videos[: args.clips]
    max_frames = 6 if args.smoke else args.max_frames
    decode_args = ["--short-side", str(short_side), "--max-frames", str(max_frames)]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    figures: dict = {"device": name, "torch": torch.__version__}
    print(f"## Flow service benchmark on {name}, torch {torch.__version__}\n")

    sections = set(args.sections.split(","))
    if sections - set(SECTIONS):
        print(f"error: unknown --sections {','.join(sorted(sections - set(SECTIONS)))}; choose from {','.join(SECTIONS)}", file=sys.stderr)
        return 2
    if "host" in sections:
        print("Host cost per solver iteration (8 pairs, 300 iterations, compiled GPU code path, one thread), per check interval:\n")
        print("| frames | check every | us per iteration | vs a check every iteration |\n|---|---|---|---|")
        figures["host"] = host_rows(device, args.smoke)
    if "reads" in sections:
        reads_size = (64, 48) if args.smoke else (128, 96)
        w, h = reads_size
        print(f"\nBlocking host reads of one launch (8 real pairs at {w}x{h} shifted 0-2 px, opencv preset, eager):\n")
        print("| check every | blocking reads (by op) | checks | compactions | iterations |\n|---|---|---|---|---|")
        quick = {"nscales": 1, "warps": 2, "epsilon": 0.05} if args.smoke else {}  # the smoke run: a few dozen iterations
        figures["reads"] = read_rows(gray_frames(videos[0], reads_size, 2)[0], device, quick)
    if "tails" in sections:
        print("\nTails: iterations per warp of one launch (opencv preset; cap 300):\n")
        print("| pairs | mean / p99 / max | warps at the cap | seconds | device busy |\n|---|---|---|---|---|")
        figures["tails"] = tail_row(videos, device, args.smoke)
    if "solver" in sections:
        print(f"\nSolver, one flow worker, {size[0]}x{size[1]} real frames:\n")
        print("| flow | batch | pairs/s | peak memory (MB) | host reads per launch |\n|---|---|---|---|---|")
        figures["solver"] = solver_rows(gray_frames(videos[0], size, 33), batches, device, 1 if args.smoke or cpu else 5)
    if "accuracy" in sections:
        print("\nAccuracy on Middlebury (end-point error, px): device path vs CPU path vs OpenCV's DualTVL1:\n")
        print("| sequence | device | CPU path | device vs CPU | OpenCV | device / OpenCV |\n|---|---|---|---|---|---|")
        sequences = ["Yosemite"] if args.smoke else list(MIDDLEBURY_PAIRS)  # the smoke run: the smallest pair, eager
        figures["accuracy"] = accuracy_rows(Path(args.middlebury), device, sequences, compile=False if args.smoke else None)
    if "end_to_end" in sections:
        warm = "no warm-up (smoke)" if args.smoke else "after one warm-up run of each code (compiles cached)"
        print(
            f"\nEnd to end, `jobs.preprocess` on {len(clips)} real clips (up to {max_frames} frames, short side {short_side}), "
            f"{warm}, vs warm compute_flow on the same frames; homography seconds in shard "
            "tasks / flow workers from report.json:\n"
        )
        print(
            "| modalities | layout | code | pairs | seconds | pairs/s | vs warm compute_flow | vs reference "
            "| homography s (tasks / workers) |\n|---|---|---|---|---|---|---|---|---|"
        )
        decode = DecodeConfig(short_side=short_side, max_frames=max_frames)
        layouts = [("flow service", [])] + ([] if args.smoke else [("flow in shard tasks", ["--flow-workers", "0"])])
        torch.set_num_threads(os.cpu_count() or 1)
        modalities = ("rgb,tvl1",) if args.smoke else ("rgb,tvl1", "rgb,warp_tvl1")
        figures["end_to_end"] = end_to_end_rows(
            clips, decode, decode_args, device, layouts, modalities, args.reference, warm_up=not args.smoke
        )
        for row in figures["end_to_end"]:
            print(f"\n{row['modalities']}, {row['layout']}, {row['code']}:\n{row['report']}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
