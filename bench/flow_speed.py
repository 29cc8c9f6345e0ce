"""Flow speed: frame pairs per second at 340x256 on real video frames, beside OpenCV's CPU DualTVL1.

    python bench/flow_speed.py [--videos ../shared/data/videos] [--batches 1,8,32] [--device cpu|cuda]
                               [--pairs N] [--preset opencv|accurate]

--pairs consecutive frame pairs are taken from the 340x256 clips in --videos, spread evenly over them (a pair
never spans two clips). Every row computes the same pairs (in batches of its size); OpenCV's
`DualTVL1OpticalFlow` (defaults, all cores) is timed on those pairs in the same run. The table gives pairs/s,
the ratio to OpenCV, the mean absolute difference between the two flows, the peak memory per pair (host RSS
growth on the CPU, `torch.cuda.max_memory_allocated` on a GPU) and the warm-up (compilation) time, which is
not part of the timing.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import av
import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.flow import compute_flow, default_device  # noqa: E402

CLIPS = ("demo.mp4", "Kop0sDqOn-c.mp4")  # 340x256 stored


def load_pairs(videos: Path, count: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` (prev, next) gray pairs of consecutive frames, spread over the clips so the motion varies."""
    frames, starts = [], []
    for name in CLIPS:
        with av.open(str(videos / name)) as container:
            clip = [frame.to_ndarray(format="gray") for frame in container.decode(video=0)]
        starts += range(len(frames), len(frames) + len(clip) - 1)  # a pair starts anywhere but a clip's last frame
        frames += [cv2.resize(g, (340, 256)) if g.shape != (256, 340) else g for g in clip]
    frames = np.stack(frames)
    picked = np.asarray(starts)[np.linspace(0, len(starts) - 1, count).astype(int)]
    return frames[picked], frames[picked + 1]


def rss_bytes() -> int:
    """Resident memory of this process (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


class PeakRSS:
    """Samples this process's resident memory in a thread; `peak` is the growth over the start."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()

    def __enter__(self):
        self.base = rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes() - self.base)
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "videos"))
    parser.add_argument("--batches", default=None, help="batch sizes, comma-separated (default 1,8,32; on a GPU also 128,512)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--pairs", type=int, default=None, help="pairs every row computes (default: the largest batch, at least 16)")
    parser.add_argument("--preset", default="opencv")
    args = parser.parse_args()
    device = torch.device(args.device) if args.device else default_device()
    batches = [int(b) for b in args.batches.split(",")] if args.batches else ([1, 8, 32, 128, 512] if device.type == "cuda" else [1, 8, 32])
    videos = Path(args.videos)
    if not all((videos / c).is_file() for c in CLIPS):
        print(f"error: the clips {', '.join(CLIPS)} are not in {videos}; pass --videos DIR", file=sys.stderr)
        return 2
    pairs = args.pairs or max(16, max(batches))
    prev, nxt = load_pairs(videos, pairs)

    tvl1 = cv2.optflow.DualTVL1OpticalFlow_create()
    start = time.perf_counter()
    reference = [tvl1.calc(prev[i], nxt[i], None) for i in range(pairs)]
    cv_rate = pairs / (time.perf_counter() - start)

    print(
        f"340x256 frame pairs from {', '.join(CLIPS)}; device {device}, torch threads {torch.get_num_threads()}, "
        f"OpenCV threads {cv2.getNumThreads()}, preset {args.preset}, {pairs} pairs per row\n"
    )
    print("| method | batch | pairs/s | vs OpenCV | mean abs diff to OpenCV (px) | peak MB per pair | warm-up s |")
    print("|---|---|---|---|---|---|---|")
    print(f"| OpenCV DualTVL1 (CPU) | 1 | {cv_rate:.2f} | 1.00 | - | - | - |", flush=True)
    for batch in batches:
        start = time.perf_counter()
        compute_flow(prev[:batch], nxt[:batch], preset=args.preset, device=device)  # compiles for this shape
        warmup = time.perf_counter() - start
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        flows = []
        with PeakRSS() as rss:
            start = time.perf_counter()
            for i in range(0, pairs, batch):
                flows.extend(compute_flow(prev[i : i + batch], nxt[i : i + batch], preset=args.preset, device=device))
            elapsed = time.perf_counter() - start
        rate = pairs / elapsed
        peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else rss.peak
        diff = float(np.mean([np.abs(f - r).mean() for f, r in zip(flows, reference)]))
        print(
            f"| flowshard {device.type} | {batch} | {rate:.2f} | {rate / cv_rate:.2f} | {diff:.4f} | "
            f"{peak / batch / 2**20:.1f} | {warmup:.1f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
