"""Picture one sample of a preprocessed dataset: an RGB frame beside its flows in the Middlebury colour wheel.

python -m jobs.visualize --data data/ucf101 --out flow.png [--split test] [--key VIDEO_ID] [--index 5]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import cv2
import numpy as np

from jobs.common import ArgumentParser, check_locations, cli, fail
from pipeline.flow import flow_to_color
from schemas.sample import FLOW_MODALITIES, decode_sample
from storage import Location
from trainers.data import read_samples, shard_urls


@dataclass(frozen=True)
class VisualizeConfig:
    """Which sample and frame `jobs.visualize` draws, and where the picture goes."""

    data: str
    out: str
    split: str = "test"
    key: str | None = None
    index: int | None = None  # flow index (frame index -> index + 1); default: the middle one


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m jobs.visualize",
        description="Write an RGB frame and its optical flows (colour wheel) of one sample as a PNG.",
        add_help=add_help,
    )
    parser.add_argument("--data", required=True, help="a dataset written by `python -m jobs.preprocess` (a local path or URI)")
    parser.add_argument("--out", required=True, help="PNG to write (a local path or URI)")
    default_split = VisualizeConfig(data="", out="").split
    parser.add_argument("--split", default=default_split, help="split to take the sample from (default %(default)s)")
    parser.add_argument("--key", help="video id of the sample (default: the first one)")
    parser.add_argument("--index", type=int, help="flow index i (frame i -> i+1); default: the middle of the video")
    return parser


def config_from_args(args: argparse.Namespace) -> VisualizeConfig:
    return VisualizeConfig(data=args.data, out=args.out, split=args.split, key=args.key, index=args.index)


def main(cfg: VisualizeConfig) -> int:
    check_locations(cfg.data, outputs=(cfg.out,))
    urls = shard_urls(cfg.data, cfg.split)
    sample = next((decode_sample(m) for m in read_samples(urls) if cfg.key in (None, m["__key__"])), None)
    if sample is None:
        return fail(f"no sample {cfg.key!r} in the {cfg.split} shards of {cfg.data}")
    flows = [m for m in FLOW_MODALITIES if m in sample.flow]
    if not flows:
        return fail(f"{cfg.data} stores no flow (modalities: {', '.join(sample.meta.modalities)})")
    index = sample.meta.num_flows // 2 if cfg.index is None else cfg.index
    if not 0 <= index < sample.meta.num_flows:
        return fail(f"--index must be in 0..{sample.meta.num_flows - 1} for {sample.key}")
    panels = [sample.rgb_frame(index)] if sample.rgb else []
    fields = [sample.flow_frame(m, index) for m in flows]
    scale = max(float(np.linalg.norm(f, axis=-1).max()) for f in fields) or 1.0
    panels += [flow_to_color(f, max_flow=scale) for f in fields]
    picture = np.concatenate(panels, axis=1)
    Location(cfg.out).write_bytes(cv2.imencode(".png", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))[1].tobytes())
    shown = (["rgb"] if sample.rgb else []) + flows
    print(
        f"wrote {cfg.out}: {sample.key} ({sample.meta.label_name}), frame {index} -> {index + 1}: {' | '.join(shown)} "
        f"(max flow {scale:.1f} px)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(cli(get_args_parser, config_from_args, main))
