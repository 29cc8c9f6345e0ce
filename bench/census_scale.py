"""How fast a dry run's census goes through a big manifest: rows on object storage, most of them missing, and
real small files on local disk.

    python bench/census_scale.py [--s3-rows 20000] [--local-files 1000]

Starts moto's S3 server on 127.0.0.1 and writes two manifests: `--s3-rows` rows under a bucket where only 1 in
100 videos exists (a copy of ../shared/data/videos/part_0.mp4; the rest are missing, as a download that ended
short), and `--local-files` links to real small clips on local disk. Each goes through `jobs.preprocess
--dry-run --calibration-videos 0` (the census alone, on the embedded Ray, in tasks of many videos with 8 files
open at once), timed from the command's own progress lines. The reference, measured in the same run: the same
census in one thread of this process (`census.census_video`, one video after another) on the first 500 rows.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.census import census_video  # noqa: E402
from pipeline.decode import DecodeConfig  # noqa: E402
from schemas.manifest import VideoRecord, manifest_table, write_manifest  # noqa: E402
from storage import Location  # noqa: E402
from tests.conftest import SHARED_DATA, s3_env, start_moto, stop_process  # noqa: E402

CLIPS = ["part_0.mp4", "demo.mp4", "Kop0sDqOn-c.mp4", "test.avi"]  # small real clips, ~0.2-1.5 MB


def dry_run(manifest: str, work: Path, name: str) -> tuple[float, float, str]:
    """The census of `manifest` by jobs.preprocess --dry-run: (census seconds, videos/s, the last progress line)."""
    command = [sys.executable, "-m", "jobs.preprocess", "--manifest", manifest, "--out", str(work / f"out_{name}")]
    command += ["--dry-run", str(work / f"plan_{name}"), "--calibration-videos", "0", "--progress-seconds", "5"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"the dry run failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    lines = [line for line in result.stdout.splitlines() if re.match(r"\[\S+\] \d+/\d+ videos", line)]
    seconds = _seconds(lines[-1].split("]")[0].strip("["))
    for line in lines:
        print(f"  {line}")
    rate = float(re.search(r"([\d.]+) videos/s", lines[-1]).group(1))
    return seconds, rate, lines[-1]


def _seconds(text: str) -> float:
    """'1m05s' -> 65."""
    parts = dict((unit, int(n)) for n, unit in re.findall(r"(\d+)([hms])", text))
    return 3600 * parts.get("h", 0) + 60 * parts.get("m", 0) + parts.get("s", 0)


def serial_rate(records: list[VideoRecord], count: int = 500) -> float:
    """Videos/s of the census one video after another, in this process."""
    start = time.monotonic()
    for record in records[:count]:
        census_video(record, DecodeConfig())
    return min(count, len(records)) / (time.monotonic() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--s3-rows", type=int, default=20000)
    parser.add_argument("--local-files", type=int, default=1000)
    args = parser.parse_args()
    clips = [SHARED_DATA / "videos" / c for c in CLIPS if (SHARED_DATA / "videos" / c).exists()]
    if not clips:
        raise SystemExit(f"the real clips are absent ({SHARED_DATA / 'videos'})")
    work = Path(tempfile.mkdtemp(prefix="census_scale_"))
    local = work / "videos"
    local.mkdir()
    local_records = []
    for i in range(args.local_files):
        clip = clips[i % len(clips)]
        (local / f"v{i:05d}{clip.suffix}").symlink_to(clip)
        local_records.append(VideoRecord(f"v{i:05d}", str(local / f"v{i:05d}{clip.suffix}"), i % 2, f"c{i % 2}", "train", "csv"))
    write_manifest(manifest_table(local_records, ["c0", "c1"], "csv"), str(work / "local.parquet"))

    server, port = start_moto()
    try:
        os.environ.update(s3_env(port))
        import boto3

        bucket = f"census-{uuid.uuid4().hex[:8]}"
        boto3.client("s3").create_bucket(Bucket=bucket)
        present = clips[0].read_bytes()
        s3_records = []
        for i in range(args.s3_rows):
            path = f"s3://{bucket}/videos/v{i:06d}.mp4"
            if i % 100 == 0:
                Location(path).write_bytes(present)
            s3_records.append(VideoRecord(f"v{i:06d}", path, i % 2, f"c{i % 2}", "train", "csv"))
        manifest = f"s3://{bucket}/manifest.parquet"
        write_manifest(manifest_table(s3_records, ["c0", "c1"], "csv"), manifest)
        rows = []
        for name, records, where in (("s3", s3_records, manifest), ("local", local_records, str(work / "local.parquet"))):
            print(f"{name}: {len(records)} rows", flush=True)
            reference = serial_rate(records)
            seconds, rate, _ = dry_run(where, work, name)
            rows.append((name, len(records), seconds, rate, reference))
    finally:
        stop_process(server)
    print(f"\n{'manifest':<10}{'rows':>8}{'census':>10}{'videos/s':>10}{'one thread':>12}{'ratio':>8}")
    for name, count, seconds, rate, reference in rows:
        print(f"{name:<10}{count:>8}{seconds:>9.0f}s{rate:>10.1f}{reference:>12.1f}{rate / reference:>8.2f}")


if __name__ == "__main__":
    main()
