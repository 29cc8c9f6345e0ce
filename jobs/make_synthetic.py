"""Generate the synthetic motion dataset (real H.264 videos, UCF101 layout and split files).

python -m jobs.make_synthetic --out demo/videos --classes 4 --videos-per-class 12
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from jobs.common import ArgumentParser, cli, parse_size, write_config
from pipeline.synthetic import SyntheticConfig, class_names, generate_dataset


@dataclass(frozen=True)
class MakeSyntheticConfig:
    """Where `jobs.make_synthetic` writes, and the dataset it generates."""

    out: str
    dataset: SyntheticConfig


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    d = SyntheticConfig()
    parser = ArgumentParser(
        prog="python -m jobs.make_synthetic",
        description="Write a synthetic action dataset whose classes differ only in motion direction "
        "(one frame carries no class information; optical flow does).",
        add_help=add_help,
    )
    parser.add_argument("--out", required=True, help="output folder (UCF101 layout: Class/v_Class_gXX_cYY.mp4 + split files)")
    parser.add_argument("--classes", type=int, default=d.classes, help="number of motion directions (default %(default)s)")
    parser.add_argument("--videos-per-class", type=int, default=d.videos_per_class, help="videos per class (default %(default)s)")
    parser.add_argument(
        "--size", type=parse_size, default=(d.width, d.height), help=f"frame size WIDTHxHEIGHT, even (default {d.width}x{d.height})"
    )
    parser.add_argument("--frames", type=int, default=d.frames, help="frames per video (default %(default)s)")
    parser.add_argument("--fps", type=int, default=d.fps, help="frame rate (default %(default)s)")
    parser.add_argument(
        "--camera-pan", type=float, default=d.camera_pan, help="global horizontal camera motion in pixels per frame (default %(default)g)"
    )
    parser.add_argument("--seed", type=int, default=d.seed, help="random seed; the frames are the same per seed (default %(default)s)")
    return parser


def config_from_args(args: argparse.Namespace) -> MakeSyntheticConfig:
    dataset = SyntheticConfig(
        classes=args.classes,
        videos_per_class=args.videos_per_class,
        width=args.size[0],
        height=args.size[1],
        frames=args.frames,
        fps=args.fps,
        camera_pan=args.camera_pan,
        seed=args.seed,
    )
    return MakeSyntheticConfig(out=args.out, dataset=dataset)


def main(cfg: MakeSyntheticConfig) -> int:
    out = Path(cfg.out)
    start = time.monotonic()

    def progress(done: int, total: int) -> None:
        if done == total or done % 8 == 0:
            print(f"  {done}/{total} videos", flush=True)

    entries = generate_dataset(cfg.dataset, out, progress)
    write_config(cfg, out / "make_synthetic.config.json")
    splits = Counter(e.split for e in entries)
    print(
        f"wrote {len(entries)} videos ({splits['train']} train, {splits['test']} test) of {cfg.dataset.classes} classes "
        f"({', '.join(class_names(cfg.dataset.classes))}) to {out} in {time.monotonic() - start:.1f}s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(cli(get_args_parser, config_from_args, main))
