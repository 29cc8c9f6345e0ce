"""Object storage against local disk: preprocessing (videos in, shards out) and the training loader.

    python bench/storage_throughput.py [--videos ../shared/data/videos] [--modalities rgb] [--repeat 3]

Starts moto's S3 server on 127.0.0.1 (the tests' fixture code), copies the clips into a bucket, and runs in
one embedded Ray session: a warm-up run, then `run_preprocess` local -> local and S3 -> S3 (same clips, same
parameters), then
TSN test loading (25 segments, 112 px centre crop, 2 loader workers) of the two datasets. moto is a Python
server sharing this machine's cores, so the S3 figures are a floor, not what a real store gives.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import boto3  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from pipeline.datasets import load_dataset  # noqa: E402
from pipeline.preprocess import PreprocessConfig, run_preprocess  # noqa: E402
from pipeline.ray_tasks import ray_session  # noqa: E402
from pipeline.shards import ProcessConfig  # noqa: E402
from schemas.manifest import manifest_table, write_manifest  # noqa: E402
from storage import Location, join  # noqa: E402
from tests.conftest import s3_env, start_moto, stop_process  # noqa: E402
from trainers.data import ExampleConfig, make_loader  # noqa: E402

CLIPS = ["demo.mp4", "test.avi", "part_0.mp4", "Kop0sDqOn-c.mp4", "flipping_a_pancake.mkv", "S001C001P001R001A001_rgb.avi"]


def make_manifest(videos: str, names: list[str], out: str) -> None:
    listing = Location(out + ".csv")
    listing.write_text("".join(f"{n},clip,test\n" for n in names))
    manifest = load_dataset("csv", listing.uri, videos)
    write_manifest(manifest_table(manifest.records, manifest.classes, manifest.dataset), out)


def preprocess(manifest: str, out: str, modalities: tuple[str, ...]) -> tuple[float, int, int]:
    """(seconds, videos ok, frames stored) of one run."""
    cfg = PreprocessConfig(manifest, out, ProcessConfig(modalities=modalities), videos_per_shard=2, progress_seconds=1e9)
    start = time.monotonic()
    summary = run_preprocess(cfg, print_fn=lambda line: None)
    seconds = time.monotonic() - start
    frames = sum(pq.read_table(Location(out).open_input_file("index.parquet")).column("frames").to_pylist())
    return seconds, summary.ok, frames


def load(data: str, repeat: int) -> tuple[float, int]:
    """Best clips/s over `repeat` passes of TSN test loading."""
    example = ExampleConfig(arch="tsn", modality="rgb", segments=25, input_size=112)
    best, count = 0.0, 0
    for _ in range(repeat):
        start = time.monotonic()
        count = sum(len(y) for _, y, _ in make_loader(data, "test", example, train=False, batch_size=2, workers=2))
        best = max(best, count / (time.monotonic() - start))
    return best, count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "videos"))
    parser.add_argument("--modalities", default="rgb", help="comma-separated (default rgb: the storage-heavy case)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    videos = Path(args.videos)
    names = [n for n in CLIPS if (videos / n).is_file()]
    if not names:
        print(f"no clips in {videos}")
        return 2
    modalities = tuple(args.modalities.split(","))
    server, port = start_moto()
    try:
        os.environ.update(s3_env(port))
        bucket = f"s3://bench-{uuid.uuid4().hex[:8]}"
        boto3.client("s3").create_bucket(Bucket=bucket.removeprefix("s3://"))
        remote_videos = Location(join(bucket, "videos"))
        for n in names:
            remote_videos.write_bytes((videos / n).read_bytes(), n)
        local = tempfile.mkdtemp(prefix="storage-bench-")
        make_manifest(str(videos), names, f"{local}/m.parquet")
        make_manifest(remote_videos.uri, names, f"{bucket}/m.parquet")
        rows = []
        with ray_session(None):
            preprocess(f"{local}/m.parquet", f"{local}/warm-up", modalities)  # workers started and imports done for both
            for manifest, out in ((f"{local}/m.parquet", f"{local}/out"), (f"{bucket}/m.parquet", f"{bucket}/out")):
                rows.append((*preprocess(manifest, out, modalities), out))
        loads = [load(out, args.repeat) for *_, out in rows]
    finally:
        stop_process(server)
    (t_local, ok_local, frames, _), (t_s3, ok_s3, _, _) = rows
    print(
        f"{len(names)} clips ({frames} frames), modalities {','.join(modalities)}; videos and shards on local disk vs "
        "moto S3 on 127.0.0.1; one embedded Ray session (start-up excluded), 2 videos per shard"
    )
    print("\n| step | local disk | S3 (moto) | S3 / local |")
    print("|---|---|---|---|")
    print(
        f"| preprocess (videos -> shards) | {frames / t_local:.1f} frames/s ({ok_local} ok) | {frames / t_s3:.1f} frames/s "
        f"({ok_s3} ok) | {t_local / t_s3:.2f} |"
    )
    (r_local, n_local), (r_s3, n_s3) = loads
    print(
        f"| loader (TSN 25 x 112 px, 2 workers) | {r_local:.1f} clips/s ({n_local}) | {r_s3:.1f} clips/s ({n_s3}) | {r_s3 / r_local:.2f} |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
