"""Write a preprocessed dataset in the layout another tool reads. `rawframes`: MMAction2's rawframes tree and
file lists (see pipeline.export), so its RawframeDataset configs train on flowshard's frames and flow.

python -m jobs.export rawframes --data data/ucf101 --out data/ucf101_rawframes [--flow tvl1] [--name ucf101] [--split-number 1]
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from jobs.common import ArgumentParser, check_locations, cli
from pipeline.export import list_lines, list_name, rawframe_files, rawframes_dir
from pipeline.progress import Progress
from schemas.dataset import read_dataset_info
from schemas.sample import FLOW_MODALITIES, decode_sample
from storage import Location, basename, is_uri, join
from trainers.shard_reader import sample_table, whole_samples

FORMATS = ("rawframes",)


@dataclass(frozen=True)
class ExportConfig:
    """What `jobs.export` writes, from which dataset, where."""

    format: str
    data: str
    out: str
    flow: str | None = None  # the flow modality written as flow_x/flow_y (default: tvl1 when stored, else warp_tvl1)
    name: str | None = None  # the list files' dataset name (default: the dataset folder's name)
    split_number: int = 1  # the list files' split number (UCF101 and HMDB51 have 3)
    progress_seconds: float = 10.0


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    defaults = ExportConfig(format="", data="", out="")
    parser = ArgumentParser(
        prog="python -m jobs.export",
        description="Write a preprocessed dataset in another tool's layout (rawframes: MMAction2's frame folders and file lists).",
        add_help=add_help,
    )
    parser.add_argument("format", choices=FORMATS, help="the layout to write")
    parser.add_argument("--data", required=True, help="a dataset written by `python -m jobs.preprocess` (a local path or URI)")
    parser.add_argument("--out", required=True, help="the folder to write (a local path or URI)")
    parser.add_argument("--flow", choices=FLOW_MODALITIES, help="the flow written as flow_x/flow_y (default: tvl1 if stored)")
    parser.add_argument("--name", help="dataset name in the list files' names (default: the dataset folder's name)")
    parser.add_argument(
        "--split-number", type=int, default=defaults.split_number, help="split number in the list files' names (default %(default)s)"
    )
    parser.add_argument(
        "--progress-seconds", type=float, default=defaults.progress_seconds, help="seconds between progress lines (default %(default)s)"
    )
    return parser


def config_from_args(args: argparse.Namespace) -> ExportConfig:
    return ExportConfig(
        format=args.format,
        data=args.data,
        out=args.out,
        flow=args.flow,
        name=args.name,
        split_number=args.split_number,
        progress_seconds=args.progress_seconds,
    )


def main(cfg: ExportConfig) -> int:
    check_locations(cfg.data, outputs=(cfg.out,))
    if cfg.split_number < 1:
        raise ValueError(f"--split-number must be at least 1, got {cfg.split_number}")
    info = read_dataset_info(cfg.data)
    stored = [m for m in FLOW_MODALITIES if m in info.modalities]
    if cfg.flow is not None and cfg.flow not in stored:
        raise ValueError(
            f"--flow {cfg.flow}: {cfg.data} stores {', '.join(info.modalities)}; choose one of {', '.join(stored) or 'no flow'}"
        )
    flow = cfg.flow or (stored[0] if stored else None)
    name = cfg.name or dataset_name(cfg.data)
    out = Location(cfg.out)
    splits = sorted(info.shards)
    progress = Progress(sum(info.counts.get("samples", {}).values()), interval=cfg.progress_seconds)
    videos = frames = 0
    for split in splits:
        lists: tuple[list[str], list[str]] = ([], [])
        for members in whole_samples(sample_table(cfg.data, split)):
            sample = decode_sample(members, modalities=("rgb", flow) if flow else ("rgb",))
            for file, data in rawframe_files(sample, flow).items():
                out.write_bytes(data, rawframes_dir(sample), file)
            for lines, line in zip(lists, list_lines(sample, flow), strict=True):
                if line is not None:
                    lines.append(line)
            videos, frames = videos + 1, frames + sample.meta.num_frames
            progress.update(videos, frames, 0)
        for lines, is_flow in zip(lists, (False, True), strict=True):
            if lines:
                list_file = list_name(name, split, cfg.split_number, splits, flow=is_flow)
                out.write_text("".join(lines), list_file)
                print(f"wrote {join(cfg.out, list_file)}: {len(lines)} videos")
    progress.update(videos, frames, 0, force=True)
    flows = f" and {flow} as flow_x_/flow_y_ (numbered from 1)" if flow else ""
    print(f"exported {videos} videos to {cfg.out}: <class>/<video>/img_00001.jpg ...{flows}")
    return 0


def dataset_name(data: str) -> str:
    """The dataset folder's name ('ucf101' for data/ucf101/, s3://bucket/ucf101 or `.` inside it)."""
    name = basename(data.rstrip("/")) if is_uri(data) else os.path.basename(os.path.abspath(data))
    return name or "dataset"


if __name__ == "__main__":
    raise SystemExit(cli(get_args_parser, config_from_args, main))
