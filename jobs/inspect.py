"""Summarise a preprocessed dataset: videos per split and class, frames per video, shard sizes, failures by
reason, how it was built; printed, and drawn as summary.png. Reads only the dataset's tables, not its shards.

python -m jobs.inspect DATA [--png PATH]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from jobs.common import ArgumentParser, check_locations, cli
from pipeline.summary import summarize, summary_lines, summary_png
from storage import Location, join

SUMMARY_PNG = "summary.png"


@dataclass(frozen=True)
class InspectConfig:
    """The dataset `jobs.inspect` summarises and where its picture goes."""

    data: str
    png: str | None = None  # default: summary.png in the dataset folder


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m jobs.inspect",
        description="Print what a preprocessed dataset holds and draw it as summary.png (reads its tables, not its shards).",
        add_help=add_help,
    )
    parser.add_argument("data", help="a dataset written by `python -m jobs.preprocess` (a local path or URI)")
    parser.add_argument("--png", help=f"where to draw the summary (a local path or URI; default DATA/{SUMMARY_PNG})")
    return parser


def config_from_args(args: argparse.Namespace) -> InspectConfig:
    return InspectConfig(data=args.data, png=args.png)


def main(cfg: InspectConfig) -> int:
    png = cfg.png or join(cfg.data, SUMMARY_PNG)
    check_locations(cfg.data, outputs=(png,))
    summary = summarize(cfg.data)
    print("\n".join(summary_lines(summary)))
    Location(png).write_bytes(summary_png(summary))
    print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli(get_args_parser, config_from_args, main))
