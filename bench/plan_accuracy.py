"""How far to trust a plan: a dry run against the run it planned, on the real clips, the zoo of files from real
use (copy trims, a damaged middle, a variable frame rate, a file cut at 60%) and every bad kind of file.

    python bench/plan_accuracy.py [--max-frames 64] [--sizes 128 256] [--modalities rgb,tvl1 rgb,warp_tvl1]

For each size and modality set: `jobs.preprocess --dry-run` (census, calibration on 8 videos x 32 frames,
forecast), then the same command without it and with `--compare-plan`, into a fresh folder on this machine
(embedded Ray, flow on the CPUs). The reference is the real run, measured in the same loop. The table gives each
planned figure as a ratio of the actual one; issue 29 asks for failures named exactly, frames within 2% (10%
where a container declares none), shard bytes within +-25% and wall time within +-40%; issue 36 asks that the
actual bytes and wall time lie inside the plan's ranges ("in"). The real clips are ../shared/data/videos;
`--max-frames` bounds each clip so a loop takes minutes, not an hour (0: every frame).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.conftest import SHARED_DATA  # noqa: E402
from tests.helpers import write_bad_inputs, write_zoo  # noqa: E402


def mixed_manifest(root: Path) -> Path:
    """A csv manifest of the real clips and every bad kind of file (one listed as missing), built by jobs.manifest."""
    videos = root / "videos"
    write_bad_inputs(videos)
    (videos / "whole.mp4").unlink()  # the truncated file's source
    write_zoo(videos / "zoo")
    for path in (videos / "zoo").iterdir():
        path.rename(videos / f"zoo_{path.name}")
    (videos / "zoo").rmdir()
    for clip in sorted((SHARED_DATA / "videos").iterdir()):
        shutil.copy(clip, videos / clip.name)
    paths = sorted(videos.iterdir()) + [videos / "missing.mp4"]
    rows = [f"{p},{'ab'[i % 2]},{'train' if i % 3 else 'test'}" for i, p in enumerate(paths)]
    (root / "list.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    manifest = root / "manifest.parquet"
    job("jobs.manifest", "csv", "--annotations", root / "list.csv", "--videos", videos, "--out", manifest, "--allow-missing")
    return manifest


def job(module: str, *args) -> str:
    result = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{module} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


def ratio(against: dict, name: str) -> float:
    """Planned / actual of one figure of a run's `against_plan`."""
    row = against[name]
    return row["planned"] / row["actual"] if row["actual"] and row["planned"] is not None else float("nan")


def inside(row: dict, show=lambda b: f"{b / 2**20:.2f}") -> str:
    """'in 1.20-1.45' where the actual figure lies inside the plan's range, 'OUT ...' where not, '-' for none."""
    if "range" not in row:
        return "-"
    return f"{'in' if row['inside'] else 'OUT'} {show(row['range'][0])}-{show(row['range'][1])}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-frames", type=int, default=64, help="frames kept per clip (default %(default)s)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256], help="short sides (default %(default)s)")
    parser.add_argument("--modalities", nargs="+", default=["rgb,tvl1", "rgb,warp_tvl1"], help="(default %(default)s)")
    args = parser.parse_args()
    if not (SHARED_DATA / "videos").exists():
        raise SystemExit(f"the real clips are absent ({SHARED_DATA / 'videos'})")
    root = Path(tempfile.mkdtemp(prefix="plan_accuracy_"))
    manifest = mixed_manifest(root)
    rows = []
    for size in args.sizes:
        for modalities in args.modalities:
            out, plan = root / f"out_{size}_{modalities}", root / f"plan_{size}_{modalities}"
            flags = ["--manifest", manifest, "--out", out, "--short-side", size, "--modalities", modalities]
            flags += ["--max-frames", args.max_frames] if args.max_frames else []
            flags += ["--progress-seconds", 60]
            start = time.monotonic()
            job("jobs.preprocess", *flags, "--dry-run", plan)
            planning = time.monotonic() - start
            job("jobs.preprocess", *flags, "--compare-plan", plan)
            against = json.loads((out / "report.json").read_text())["against_plan"]
            census = json.loads((plan / "plan.json").read_text())
            rows.append(
                (
                    f"{size} {modalities}",
                    "same" if against["failures"]["planned"] == against["failures"]["actual"] else "DIFFERENT",
                    ratio(against, "frames"),
                    ratio(against, "pairs"),
                    ratio(against, "bytes"),
                    inside(against["bytes"]),
                    against["seconds"]["planned"],
                    against["seconds"]["actual"],
                    ratio(against, "seconds"),
                    inside(against["seconds"], lambda s: f"{s:.0f}"),
                    planning,
                    census["time"]["bound_by"],
                )
            )
            print(f"done: {rows[-1]}", flush=True)
    print(f"\n{len(list((root / 'videos').iterdir()))} files (+1 listed missing), at most {args.max_frames} frames each; planned / actual:")
    print(f"{'run':<20}{'failures':>10}{'frames':>8}{'pairs':>8}{'bytes':>8}{'range (MiB)':>18}{'wall plan':>11}{'actual':>8}", end="")
    print(f"{'ratio':>7}{'range (s)':>14}{'dry run':>9}  bound by")
    for name, failures, frames, pairs, size, size_range, planned, actual, wall, wall_range, planning, bound in rows:
        print(
            f"{name:<20}{failures:>10}{frames:>8.3f}{pairs:>8.3f}{size:>8.3f}{size_range:>18}{planned:>10.0f}s{actual:>7.0f}s"
            f"{wall:>7.2f}{wall_range:>14}{planning:>8.0f}s  {bound}"
        )
    shutil.rmtree(root)


if __name__ == "__main__":
    main()
