"""Preprocessing throughput: the Ray pipeline against its own stages run standalone, and shards against rawframes.

    python bench/preprocess_throughput.py [--videos ../shared/data/videos] [--repeat 10] [--max-frames 48] [--cpus-per-task 2]

1. RGB only: `jobs.preprocess` (embedded Ray, start-up included) frames/s vs the sum of its stages timed
   standalone in this process on the same videos (decode + resize, JPEG encode).
2. RGB + tvl1: pipeline frame pairs/s vs decode + JPEG + `compute_flow` (+ flow JPEGs) standalone.
3. Files and bytes: the shards vs the same frames written as an mmaction2 rawframes tree
   (img_00001.jpg, flow_x_00001.jpg, flow_y_00001.jpg per video), bytes as allocated on disk.
With --cpus-per-task equal to the machine's cores, one task runs at a time with all threads, like the
standalone loop, so the ratio is the orchestration overhead (Ray start-up, task launch, worker warm-up).
The RGB row lists each clip --repeat times so the work outweighs the fixed start-up, which is measured
on its own (a one-video run) and shown separately.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.decode import DecodeConfig, decode_video  # noqa: E402
from pipeline.flow import compute_flow  # noqa: E402
from pipeline.preprocess import PreprocessConfig, run_preprocess  # noqa: E402
from pipeline.ray_tasks import ClusterConfig  # noqa: E402
from pipeline.shards import ProcessConfig  # noqa: E402
from schemas.manifest import VideoRecord, manifest_table, write_manifest  # noqa: E402
from schemas.sample import encode_flow, encode_jpeg  # noqa: E402

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm")


def disk_bytes(root: Path) -> tuple[int, int]:
    """(files, bytes allocated on disk) under root."""
    files, allocated = 0, 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            st = os.stat(os.path.join(dirpath, name))
            files += 1
            allocated += st.st_blocks * 512
    return files, allocated


def standalone(records: list[VideoRecord], cfg: ProcessConfig, rawframes: Path | None) -> dict:
    """The pipeline's stages in a plain loop; optionally also writes the rawframes tree. Seconds per stage."""
    t = {"decode": 0.0, "jpeg": 0.0, "flow": 0.0, "frames": 0, "pairs": 0}
    for r in records:
        start = time.perf_counter()
        video = decode_video(r.path, cfg.decode)
        t["decode"] += time.perf_counter() - start
        start = time.perf_counter()
        jpegs = [encode_jpeg(f, cfg.jpeg_quality) for f in video.frames]
        t["jpeg"] += time.perf_counter() - start
        t["frames"] += len(video.frames)
        flow_jpegs = []
        if cfg.flow_modalities:
            start = time.perf_counter()
            gray = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in video.frames])
            for i in range(0, len(gray) - 1, cfg.flow_batch or 32):
                j = min(i + (cfg.flow_batch or 32), len(gray) - 1)
                flows = compute_flow(gray[i:j], gray[i + 1 : j + 1], cfg.flow_modalities, cfg.flow_preset)
                flow_jpegs += [encode_flow(f, quality=cfg.jpeg_quality) for f in flows["tvl1"]]
            t["flow"] += time.perf_counter() - start
            t["pairs"] += len(gray) - 1
        if rawframes is not None:
            folder = rawframes / r.video_id
            folder.mkdir(parents=True)
            for i, data in enumerate(jpegs, start=1):  # mmaction2 numbers rawframes from 1
                (folder / f"img_{i:05d}.jpg").write_bytes(data)
            for i, (x, y) in enumerate(flow_jpegs, start=1):
                (folder / f"flow_x_{i:05d}.jpg").write_bytes(x)
                (folder / f"flow_y_{i:05d}.jpg").write_bytes(y)
    return t


def pipeline(records: list[VideoRecord], cfg: ProcessConfig, work: Path, cpus_per_task: float, name: str) -> tuple[float, Path]:
    manifest = work / f"{name}.parquet"
    write_manifest(manifest_table(records, ["clip"], "csv"), manifest)
    out = work / name
    run = PreprocessConfig(
        str(manifest), str(out), cfg, ClusterConfig(cpus_per_task=cpus_per_task), videos_per_shard=2, progress_seconds=1e9
    )
    start = time.perf_counter()
    summary = run_preprocess(run, print_fn=lambda line: None)
    elapsed = time.perf_counter() - start
    assert summary.failed == 0, summary.failures
    return elapsed, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "videos"))
    parser.add_argument("--max-frames", type=int, default=48, help="frames per video for the flow rows (default 48)")
    parser.add_argument("--repeat", type=int, default=10, help="times each clip is listed in the RGB row (default 10)")
    parser.add_argument("--cpus-per-task", type=float, default=float(os.cpu_count() or 1))
    args = parser.parse_args()
    paths = sorted(p for p in Path(args.videos).iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS) if Path(args.videos).is_dir() else []
    if not paths:
        print(f"error: no videos in {args.videos}; pass --videos DIR", file=sys.stderr)
        return 2
    records = [VideoRecord(p.stem.replace(".", "_"), str(p), 0, "clip", "train", "csv") for p in paths]
    rgb_cfg = ProcessConfig(modalities=("rgb",))
    flow_cfg = ProcessConfig(modalities=("rgb", "tvl1"), decode=DecodeConfig(max_frames=args.max_frames))

    work = Path(tempfile.mkdtemp(prefix="flowshard-bench-"))
    try:
        # Warm up: compile the flow kernels in this process so the standalone time is steady-state.
        warm = decode_video(str(paths[0]), flow_cfg.decode).frames[:3]
        gray = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in warm])
        compute_flow(gray[:2], gray[1:])
        compute_flow(gray[:1], gray[1:2])

        startup, _ = pipeline(
            records[:1], ProcessConfig(modalities=("rgb",), decode=DecodeConfig(max_frames=2)), work, args.cpus_per_task, "startup"
        )
        rows = []
        many = [VideoRecord(f"{r.video_id}_{k}", r.path, 0, "clip", "train", "csv") for k in range(args.repeat) for r in records]
        t = standalone(many, rgb_cfg, None)
        alone = t["decode"] + t["jpeg"]
        piped, _ = pipeline(many, rgb_cfg, work, args.cpus_per_task, "rgb")
        rows.append(("RGB only", "frames/s", t["frames"], alone, piped, f"decode+resize {t['decode']:.1f}s + JPEG {t['jpeg']:.1f}s"))

        t = standalone(records, flow_cfg, work / "rawframes")
        alone = t["decode"] + t["jpeg"] + t["flow"]
        piped, out = pipeline(records, flow_cfg, work, args.cpus_per_task, "flow")
        rows.append(
            (
                "RGB + tvl1",
                "pairs/s",
                t["pairs"],
                alone,
                piped,
                f"decode {t['decode']:.1f}s + JPEG {t['jpeg']:.1f}s + flow {t['flow']:.1f}s",
            )
        )

        print(
            f"{len(records)} clips from {args.videos}; pipeline = `run_preprocess` on embedded Ray, {args.cpus_per_task:g} CPUs "
            f"per task; RGB row: each clip {args.repeat}x; flow row: first {args.max_frames} frames of each clip\n"
        )
        print(f"fixed start-up (Ray, one worker, imports; a one-video run): {startup:.1f}s\n")
        print(
            "| workload | unit | standalone stages | pipeline | pipeline / standalone | overhead | overhead without start-up "
            "| standalone breakdown |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for name, unit, count, alone, piped, detail in rows:
            a, p = count / alone, count / piped
            steady = 100 * ((piped - startup) / alone - 1)
            print(f"| {name} | {unit} | {a:.1f} | {p:.1f} | {p / a:.2f} | {100 * (piped / alone - 1):+.0f}% | {steady:+.0f}% | {detail} |")

        shard_files, shard_bytes = disk_bytes(out / "shards")
        raw_files, raw_bytes = disk_bytes(work / "rawframes")
        print("\n| storage (RGB + tvl1, same frames) | files | MB on disk |")
        print("|---|---|---|")
        print(f"| rawframes tree (img_/flow_x_/flow_y_ JPEGs) | {raw_files} | {raw_bytes / 2**20:.1f} |")
        print(f"| flowshard shards | {shard_files} | {shard_bytes / 2**20:.1f} |")
        print(f"| ratio rawframes / shards | {raw_files / shard_files:.0f}x | {raw_bytes / shard_bytes:.2f}x |")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
