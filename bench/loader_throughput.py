"""Loader throughput: TSN flow test sampling (25 segments x 5 flows) from shards vs a rawframes tree.

    python bench/loader_throughput.py --data demo_out/data [--split test] [--workers 2] [--repeat 3]

The rawframes tree (mmaction2 layout: <video>/flow_x_00001.jpg, flow_y_00001.jpg, img_00001.jpg) is written
from the shards' own JPEG bytes, so both loaders read identical images; both build the same input tensors
(centre crop, normalisation) with the same number of DataLoader workers. Prints clips/s and file counts.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import webdataset as wds

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from schemas.sample import decode_sample  # noqa: E402
from trainers.data import ExampleConfig, make_loader, shard_urls  # noqa: E402
from trainers.sampling import snippet_indices, tsn_offsets  # noqa: E402
from trainers.transforms import center_box, crop_resize, normalize_flow, stack_flow_channels  # noqa: E402


def export_rawframes(urls: list[str], root: Path, modality: str) -> int:
    """Write the samples as an mmaction2 rawframes tree (1-based file numbers); returns the video count."""
    count = 0
    for members in wds.WebDataset(urls, shardshuffle=False):
        sample = decode_sample(members)
        folder = root / sample.key
        folder.mkdir(parents=True)
        for i, data in enumerate(sample.rgb, start=1):
            (folder / f"img_{i:05d}.jpg").write_bytes(data)
        for i, (x, y) in enumerate(sample.flow[modality], start=1):
            (folder / f"flow_x_{i:05d}.jpg").write_bytes(x)
            (folder / f"flow_y_{i:05d}.jpg").write_bytes(y)
        count += 1
    return count


class RawframesFlow(torch.utils.data.Dataset):
    """The same TSN flow test example as trainers.data.make_example, read from a rawframes tree."""

    def __init__(self, root: Path, cfg: ExampleConfig):
        self.videos, self.cfg = sorted(p for p in root.iterdir() if p.is_dir()), cfg

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, i: int):
        folder, cfg = self.videos[i], self.cfg
        flows = len(list(folder.glob("flow_x_*.jpg")))  # what rawframe loaders do: count files per video
        idx = snippet_indices(tsn_offsets(flows, cfg.segments, cfg.new_length, False), cfg.new_length, flows)
        stack = np.stack(
            [np.stack([cv2.imread(str(folder / f"flow_{c}_{j + 1:05d}.jpg"), cv2.IMREAD_GRAYSCALE) for c in "xy"], -1) for j in idx.ravel()]
        )
        h, w = stack.shape[1:3]
        x = normalize_flow(crop_resize(stack, center_box(h, w, cfg.input_size), cfg.input_size))
        return stack_flow_channels(x, cfg.new_length), 0, folder.name


def timed(loader) -> tuple[float, int]:
    start, n = time.perf_counter(), 0
    for x, _, _ in loader:
        n += len(x)
    return time.perf_counter() - start, n


def disk_usage(paths: list[Path]) -> int:
    """Bytes allocated on disk (whole blocks, as small files really cost)."""
    return sum(p.stat().st_blocks * 512 for p in paths)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a dataset written by jobs.preprocess with the flow modality")
    parser.add_argument("--split", default="test")
    parser.add_argument("--modality", default="tvl1")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="passes over the split per loader (best one reported)")
    parser.add_argument("--input-size", type=int, default=224)
    args = parser.parse_args()
    try:
        urls = shard_urls(args.data, args.split)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cfg = ExampleConfig(arch="tsn", modality=args.modality, segments=25, new_length=5, input_size=args.input_size, crops=1)
    work = Path(tempfile.mkdtemp(prefix="flowshard-loader-"))
    try:
        videos = export_rawframes(urls, work / "rawframes", args.modality)
        shard_seconds = min(
            timed(make_loader(args.data, args.split, cfg, train=False, batch_size=1, workers=args.workers))[0] for _ in range(args.repeat)
        )
        raw_loader = torch.utils.data.DataLoader(RawframesFlow(work / "rawframes", cfg), batch_size=1, num_workers=args.workers)
        raw_seconds = min(timed(raw_loader)[0] for _ in range(args.repeat))
        shard_files = [Path(u) for u in urls]
        raw = [p for p in (work / "rawframes").rglob("*") if p.is_file()]
        print(
            f"{videos} {args.split} videos of {args.data}; TSN flow test sampling: 25 segments x 5 flows, "
            f"{args.input_size}px centre crop; {args.workers} loader workers; best of {args.repeat}\n"
        )
        print("| source | clips/s | ratio | files | MB on disk |")
        print("|---|---|---|---|---|")
        print(f"| rawframes tree (cv2.imread) | {videos / raw_seconds:.1f} | 1.00 | {len(raw)} | {disk_usage(raw) / 2**20:.1f} |")
        print(
            f"| flowshard shards (webdataset) | {videos / shard_seconds:.1f} | {raw_seconds / shard_seconds:.2f} | "
            f"{len(shard_files)} | {disk_usage(shard_files) / 2**20:.1f} |"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
