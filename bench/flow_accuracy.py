"""Flow accuracy on Middlebury: mean end-point error of compute_flow beside OpenCV's DualTVL1, same run.

    python bench/flow_accuracy.py [--middlebury ../shared/data/middlebury] [--device cpu]

Prints one row per sequence: the error and seconds of OpenCV (defaults, and a deeper pyramid with 10 scales
at 0.7), of flowshard's `opencv` and `accurate` presets and of `warp_tvl1`, and the error ratio of the
`opencv` preset to OpenCV's (the acceptance bound is 1.05 on every sequence).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.flow import compute_flow  # noqa: E402
from pipeline.flow.flo import MIDDLEBURY_PAIRS, end_point_error, read_flo  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--middlebury", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "middlebury"))
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    args = parser.parse_args()
    root = Path(args.middlebury)
    if not root.is_dir():
        print(f"error: no Middlebury data at {root}; pass --middlebury DIR", file=sys.stderr)
        return 2

    # Warm up: compile the solver kernels once so the timings below are steady-state.
    warm = cv2.imread(str(root / "Yosemite" / "yos9.png"), cv2.IMREAD_GRAYSCALE)
    for preset in ("opencv", "accurate"):
        compute_flow(warm, warm, preset=preset, device=args.device)

    methods = {
        "OpenCV": lambda a, b: cv2.optflow.DualTVL1OpticalFlow_create().calc(a, b, None),
        "OpenCV deep": lambda a, b: cv2.optflow.DualTVL1OpticalFlow_create(nscales=10, scaleStep=0.7).calc(a, b, None),
        "opencv": lambda a, b: compute_flow(a, b, preset="opencv", device=args.device),
        "accurate": lambda a, b: compute_flow(a, b, preset="accurate", device=args.device),
        "warp_tvl1": lambda a, b: compute_flow(a, b, "warp_tvl1", preset="opencv", device=args.device),
    }
    print("End-point error (pixels) and seconds per pair; `opencv`, `accurate`, `warp_tvl1` are flowshard.\n")
    header = "| sequence | size | " + " | ".join(methods) + " | opencv / OpenCV |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    totals = {name: [] for name in methods}
    for name, (a, b, f) in MIDDLEBURY_PAIRS.items():
        prev = cv2.imread(str(root / name / a), cv2.IMREAD_GRAYSCALE)
        nxt = cv2.imread(str(root / name / b), cv2.IMREAD_GRAYSCALE)
        truth = read_flo(root / name / f)
        cells = []
        for method, fn in methods.items():
            flow, seconds = timed(functools.partial(fn, prev, nxt))
            epe = end_point_error(flow, truth)
            totals[method].append(epe)
            cells.append(f"{epe:.3f} ({seconds:.2f}s)")
        ratio = totals["opencv"][-1] / totals["OpenCV"][-1]
        print(f"| {name} | {prev.shape[1]}x{prev.shape[0]} | " + " | ".join(cells) + f" | {ratio:.3f} |", flush=True)
    means = " | ".join(f"{np.mean(v):.3f}" for v in totals.values())
    print(f"| mean | | {means} | {np.mean(totals['opencv']) / np.mean(totals['OpenCV']):.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
