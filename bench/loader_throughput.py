"""Loader budget: training-time samples/s per loader worker, shards (local disk, S3) against a rawframes tree.

    python bench/loader_throughput.py [--data DATA] [--samples 48] [--repeat 2] [--reference GIT_REF]

The recipes are the published training set-ups: TSN flow (3 segments x 5 flows), TSN RGB (3 segments), I3D flow
(64 consecutive flows), all with TSN's multi-scale crop to 224 px and random flips. Each source runs the same
choice of frames and crops (`trainers.data.choose`) and the same decoding and assembling, in one DataLoader
worker (so the figure is per worker; the main process only receives batches), timed from the first batch on:
- a rawframes tree in mmaction2's layout (<video>/img_00001.jpg, flow_x_00001.jpg, flow_y_00001.jpg, frame
  counts from the annotation list as mmaction2 reads them), each frame a file read then decoded by OpenCV, as
  mmaction2's RawFrameDecode does, written from the shards' own JPEG bytes so both read identical images;
- flowshard's shards on local disk, and on moto's S3 server on 127.0.0.1 (a Python server on the same two
  cores: a floor for a real object store), each example's head and chosen members read by byte range; and the
  same objects through `bench/s3_proxy.py` serving ranges from whole objects it keeps ("ranges served"), as a
  real store serves a range at a cost that does not grow with the object (moto reads the whole object for each);
- the same samples written without member tables, as flowshard wrote them before (each example one ranged read of
  its whole sample): the reference, measured in the same run;
- with --reference, a git commit's own loader (its `make_loader`, one worker, the same recipe) on the samples
  without member tables, locally and from both S3 sources, each in a fresh process: "today" for a change;
- the shards with --decode-on-device: what a worker still does when the JPEGs are decoded on the GPU (the
  decoding itself is not timed, there is no GPU here).
Each source's MB and reads (files opened, or ranged reads and shard opens) per example are counted by the loader
worker. Without --data, the real ~300-frame clips of ../shared/data/videos are preprocessed first (rgb + tvl1,
short side 256, at most 300 frames; TV-L1 with one warp per level: the flow's values do not matter here) into a
temporary folder. Then "cores per GPU" = what a GPU consumes / samples/s per worker, and "GB/s per GPU" = what a
GPU consumes x MB per example.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import boto3  # noqa: E402

from bench.flow_service import checkout  # noqa: E402
from bench.s3_proxy import Counter, s3_proxy  # noqa: E402
from schemas.dataset import read_dataset_info  # noqa: E402
from trainers.data import (  # noqa: E402
    ExampleConfig,
    ReadTotals,
    Selection,
    as_list,
    assemble,
    choose,
    decode_members,
    example_pipeline,
)
from trainers.shard_reader import SampleTable, sample_table, whole_samples  # noqa: E402

CLIPS = ["Kop0sDqOn-c.mp4", "demo.mp4", "flipping_a_pancake.mkv", "test.avi"]  # 300, 280, 310, 164 frames
RECIPES = {
    "TSN flow, 3 x 5 flows": ExampleConfig(arch="tsn", modality="tvl1", segments=3, new_length=5),
    "TSN RGB, 3 segments": ExampleConfig(arch="tsn", modality="rgb", segments=3),
    "I3D flow, 64 flows": ExampleConfig(arch="i3d", modality="tvl1", clip_len=64, interval=1),
}
# What one GPU consumes in training (MMAction2's benchmark tables, V100, ResNet-50): TSN ~110 videos/s, I3D ~570
# frames/s (64-frame clips: 8.9/s). TSN flow differs from TSN RGB in the first convolution only: the same figure.
GPU_DEMAND = {"TSN flow, 3 x 5 flows": 110.0, "TSN RGB, 3 segments": 110.0, "I3D flow, 64 flows": 570.0 / 64}


def export_rawframes(table: SampleTable, root: Path) -> list[tuple[str, int, int, int, int, int]]:
    """The samples as an mmaction2 rawframes tree (1-based file numbers); returns the annotation list:
    (folder, frames, flows, label, height, width) per video."""
    from schemas.sample import decode_sample

    videos = []
    for members in whole_samples(table):
        sample = decode_sample(members)
        folder = root / sample.key
        folder.mkdir(parents=True)
        for i, data in enumerate(sample.rgb, start=1):
            (folder / f"img_{i:05d}.jpg").write_bytes(data)
        for i, (x, y) in enumerate(sample.flow["tvl1"], start=1):
            (folder / f"flow_x_{i:05d}.jpg").write_bytes(x)
            (folder / f"flow_y_{i:05d}.jpg").write_bytes(y)
        meta = sample.meta
        videos.append((str(folder), meta.num_frames, meta.num_flows, meta.label, meta.height, meta.width))
    return videos


class Rawframes(torch.utils.data.Dataset):
    """mmaction2's training read of a rawframes tree: every chosen frame a file, read, then decoded."""

    def __init__(self, videos: list, cfg: ExampleConfig, reads: ReadTotals):
        self.videos, self.cfg, self.reads = videos, cfg, reads
        self.rng = np.random.default_rng(0)

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, i: int):
        folder, frames, flows, label, height, width = self.videos[i]
        cfg = self.cfg
        idx, boxes = choose(flows if cfg.is_flow else frames, height, width, cfg, True, self.rng)
        distinct, order = np.unique(idx, return_inverse=True)
        if cfg.is_flow:
            members = [tuple(Path(f"{folder}/flow_{c}_{j + 1:05d}.jpg").read_bytes() for c in "xy") for j in distinct]
        else:
            members = [Path(f"{folder}/img_{j + 1:05d}.jpg").read_bytes() for j in distinct]
        files = [p for m in members for p in (m if isinstance(m, tuple) else (m,))]
        self.reads.add(sum(map(len, files)), len(files))
        sel = Selection(Path(folder).name, label, members, order.reshape(idx.shape), boxes, True)
        return assemble(sel, decode_members(members, cfg.is_flow), cfg), label, sel.key


def measure(loader, reads: ReadTotals, batch_size: int) -> dict[str, float]:
    """Samples/s from the first batch on (the worker's start and first shard open excluded), and MB and reads per
    example over the whole run."""
    n, start = 0, None
    for batch in loader:
        n += len(batch) if isinstance(batch[0], Selection) else len(batch[1])
        if start is None:
            start, first = time.perf_counter(), n
    return {"rate": (n - first) / (time.perf_counter() - start), **reads.per_example(n)}


def shard_source(root: str, cfg: ExampleConfig, samples: int, batch: int, decode: bool = True) -> dict[str, float]:
    """What `make_loader` gives for training, in one loader worker, its epoch repeated until `samples` samples (a
    worker started once, as an epoch of a large dataset runs)."""
    table, reads = sample_table(root, "train"), ReadTotals(1)
    pipeline = example_pipeline(table, cfg, True, decode=decode, reads=reads).repeat(math.ceil(samples / len(table)))
    loader = torch.utils.data.DataLoader(pipeline, batch_size=batch, num_workers=1, **({} if decode else {"collate_fn": as_list}))
    return measure(loader, reads, batch)


def source_rates(data: dict[str, str], videos: list, cfg: ExampleConfig, samples: int, batch: int) -> dict[str, dict]:
    """Per source, one loader worker's samples/s and MB and reads per example, for one recipe."""
    sampler = torch.utils.data.RandomSampler(range(len(videos)), replacement=True, num_samples=samples)
    reads = ReadTotals(1)
    raw = torch.utils.data.DataLoader(Rawframes(videos, cfg, reads), batch_size=batch, sampler=sampler, num_workers=1)
    return {
        "rawframes": measure(raw, reads, batch),
        **{source: shard_source(root, cfg, samples, batch) for source, root in data.items()},
        "shards, decode on device": shard_source(data["shards, local"], cfg, samples, batch, decode=False),
    }


# Run in a fresh process from a reference commit's tree: that commit's training loader, one worker, an epoch of
# `samples` examples (a loader of resampled shards, as flowshard had before exact epochs: 3361698), samples/s from
# the first batch on.
REFERENCE_RUN = """
import json, sys, time
from trainers.data import ExampleConfig, make_loader
root, cfg, samples, batch = sys.argv[1], ExampleConfig(**json.loads(sys.argv[2])), int(sys.argv[3]), int(sys.argv[4])
n, start = 0, None
for x, y, k in make_loader(root, "train", cfg, True, batch, workers=1, seed=0, epoch_samples=samples):
    n += len(y)
    if start is None:
        start, first = time.perf_counter(), n
print("RATE", (n - first) / (time.perf_counter() - start))
"""


def reference_rate(tree: Path, root: str, cfg: ExampleConfig, samples: int, batch: int) -> dict[str, float]:
    """Samples/s of the reference commit's loader in `tree`, run in a fresh process with that tree's code."""
    args = [root, json.dumps(dataclasses.asdict(cfg)), str(samples), str(batch)]
    run = subprocess.run(
        [sys.executable, "-c", REFERENCE_RUN, *args], cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True
    )
    rates = [float(line.split()[1]) for line in run.stdout.splitlines() if line.startswith("RATE ")]
    if run.returncode or not rates:
        raise SystemExit(f"the reference loader failed (a commit before exact epochs, 3361698, is needed):\n{run.stderr[-2000:]}")
    return {"rate": rates[0]}


def without_member_tables(data: str, out: Path) -> str:
    """The dataset's train samples written again as flowshard wrote them before member tables (read whole)."""
    from schemas.sample import decode_sample
    from tests.helpers import write_dataset

    table = sample_table(data, "train")
    shards: dict[str, list] = {}
    for i, members in enumerate(whole_samples(table)):
        shards.setdefault(f"train-{table.shard[i]:06d}.tar", []).append(decode_sample(members))
    write_dataset(out, shards, member_tables=False)
    return str(out)


def preprocess_clips(videos: Path, out: str) -> str:
    """The real clips as a train split (rgb + tvl1, short side 256, at most 72 frames); returns the dataset."""
    from pipeline.datasets import load_dataset
    from pipeline.decode import DecodeConfig
    from pipeline.preprocess import PreprocessConfig, run_preprocess
    from pipeline.ray_tasks import ray_session
    from pipeline.shards import ProcessConfig
    from schemas.manifest import manifest_table, write_manifest

    names = [n for n in CLIPS if (videos / n).is_file()]
    if not names:
        raise SystemExit(f"no clips in {videos}; pass --data")
    (Path(out) / "list.csv").parent.mkdir(parents=True, exist_ok=True)
    (Path(out) / "list.csv").write_text("".join(f"{n},c{i % 2},train\n" for i, n in enumerate(names)))
    manifest = load_dataset("csv", f"{out}/list.csv", str(videos))
    write_manifest(manifest_table(manifest.records, manifest.classes, manifest.dataset), f"{out}/m.parquet")
    process = ProcessConfig(modalities=("rgb", "tvl1"), decode=DecodeConfig(short_side=256, max_frames=300), flow_params=(("warps", 1),))
    with ray_session(None):
        run_preprocess(PreprocessConfig(f"{out}/m.parquet", f"{out}/data", process, videos_per_shard=2), print_fn=print)
    return f"{out}/data"


def upload(data: str, bucket: str) -> str:
    """A copy of the dataset folder in the bucket; returns its URI."""
    from storage import Location

    target = Location(f"{bucket}/data")
    for path in Path(data).rglob("*"):
        if path.is_file():
            target.write_bytes(path.read_bytes(), str(path.relative_to(data)))
    return target.uri


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="a local dataset with rgb and tvl1 and a train split (default: preprocess the real clips)")
    parser.add_argument("--videos", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "videos"))
    parser.add_argument("--samples", type=int, default=48, help="training samples per source and recipe")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=2, help="runs per source (best one reported)")
    parser.add_argument("--reference", help="a git commit whose loader runs too, on the samples without member tables (e.g. 88d264e)")
    args = parser.parse_args()
    from tests.conftest import s3_env, start_moto, stop_process

    work = Path(tempfile.mkdtemp(prefix="flowshard-loader-"))
    server = proxy = None
    try:
        data = args.data or preprocess_clips(Path(args.videos), str(work))
        info = read_dataset_info(data)
        videos = export_rawframes(sample_table(data, "train"), work / "rawframes")
        whole = without_member_tables(data, work / "whole")
        server, port = start_moto()
        os.environ.update(s3_env(port))
        bucket = f"s3://bench-{uuid.uuid4().hex[:8]}"
        boto3.client("s3").create_bucket(Bucket=bucket.removeprefix("s3://"))
        proxy, proxy_port = s3_proxy(port, Counter(), serve_ranges=True)
        served = f"endpoint_override=127.0.0.1:{proxy_port}&scheme=http"
        sources = {
            "shards, local": data,
            "shards, S3 (moto)": upload(data, f"{bucket}/new"),
            "shards, S3 (ranges served)": f"{bucket}/new/data?{served}",
            "read whole, local": whole,
            "read whole, S3 (moto)": upload(whole, f"{bucket}/whole"),
            "read whole, S3 (ranges served)": f"{bucket}/whole/data?{served}",
        }
        tree = checkout(args.reference, work / "reference") if args.reference else None
        results = {}
        for name, cfg in RECIPES.items():
            runs = [source_rates(sources, videos, cfg, args.samples, args.batch_size) for _ in range(args.repeat)]
            results[name] = {source: max((r[source] for r in runs), key=lambda m: m["rate"]) for source in runs[0]}
            for where in ("local", "S3 (moto)", "S3 (ranges served)") if tree else ():
                root = sources[f"read whole, {where}"]
                results[name][f"{args.reference}, {where}"] = reference_rate(tree, root, cfg, args.samples, args.batch_size)
            print(f"{name}: " + ", ".join(f"{s} {m['rate']:.1f}/s" for s, m in results[name].items()), flush=True)
    finally:
        if proxy is not None:
            proxy.shutdown()
        if server is not None:
            stop_process(server)
        shutil.rmtree(work, ignore_errors=True)
    frames = sum(v[1] for v in videos)
    size = f"{videos[0][5]}x{videos[0][4]}"
    print(
        f"\n{len(videos)} train videos of {data} ({frames} frames, {size} and alike, {', '.join(info.modalities)}); "
        f"{args.samples} training samples per run, batch {args.batch_size}, ONE loader worker, best of {args.repeat}; "
        "224 px multi-scale crops, flips\n"
    )
    sources = list(next(iter(results.values())))
    print("Samples/s per loader worker (against the rawframes tree; 'read whole': the samples without member tables)\n")
    print("| recipe | " + " | ".join(sources) + " |")
    print("|---|" + "---|" * len(sources))
    for name, r in results.items():
        base = r["rawframes"]["rate"]
        print(f"| {name} | " + " | ".join(f"{m['rate']:.1f} ({m['rate'] / base:.2f}x)" for m in r.values()) + " |")
    print("\nBy member against read whole, in the same run: samples/s\n")
    print("| recipe | local | S3 (moto) | S3 (ranges served) |")
    print("|---|---|---|---|")
    for name, r in results.items():
        ratios = [
            r[f"shards, {where}"]["rate"] / r[f"read whole, {where}"]["rate"] for where in ("local", "S3 (moto)", "S3 (ranges served)")
        ]
        print(f"| {name} | " + " | ".join(f"{x:.2f}x" for x in ratios) + " |")
    if args.reference:
        print(f"\nBy member against {args.reference}'s loader, in the same run: samples/s\n")
        print("| recipe | local | S3 (moto) | S3 (ranges served) |")
        print("|---|---|---|---|")
        for name, r in results.items():
            wheres = ("local", "S3 (moto)", "S3 (ranges served)")
            ratios = [r[f"shards, {where}"]["rate"] / r[f"{args.reference}, {where}"]["rate"] for where in wheres]
            print(f"| {name} | " + " | ".join(f"{x:.2f}x" for x in ratios) + " |")
    print("\nWhat an example reads (MB, reads) and what a GPU then needs (GB/s) at MMAction2's published rates\n")
    measured = [s for s in sources if s != "shards, decode on device" and "read_mb" in next(iter(results.values()))[s]]
    print("| recipe | GPU consumes (samples/s) | " + " | ".join(measured) + " |")
    print("|---|---|" + "---|" * len(measured))
    for name, r in results.items():
        need = GPU_DEMAND[name]
        cells = [f"{r[s]['read_mb']:.2f} MB, {r[s]['read_requests']:.1f} reads: {need * r[s]['read_mb'] / 1024:.3f} GB/s" for s in measured]
        print(f"| {name} | {need:.1f} | " + " | ".join(cells) + " |")
    print("\nCores per GPU: loader workers (one core each) a GPU needs to be kept fed, at MMAction2's published rates\n")
    print("| recipe | GPU consumes (samples/s) | " + " | ".join(sources) + " |")
    print("|---|---|" + "---|" * len(sources))
    for name, r in results.items():
        need = GPU_DEMAND[name]
        print(f"| {name} | {need:.1f} | " + " | ".join(f"{need / r[s]['rate']:.1f}" for s in sources) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
