"""What every job shares: how it reports a user error and records its resolved configuration."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

EXIT_USAGE = 2  # bad flags or input files, as argparse uses


def fail(message: str) -> int:
    """Print a one-sentence error for the user (no traceback) and return the usage exit code."""
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE


def write_config(cfg, path: str | Path) -> None:
    """Write a job's resolved configuration as JSON next to its outputs, for reproducing the run."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dataclasses.asdict(cfg), indent=2, default=str) + "\n")


def cli(get_args_parser, config_from_args, main) -> int:
    """Run a job from the command line: parse flags, build the config, run `main`.

    A ValueError while building the config (a flag value the config rejects) becomes a one-sentence error.
    """
    args = get_args_parser().parse_args()
    try:
        cfg = config_from_args(args)
    except ValueError as exc:
        return fail(str(exc))
    return main(cfg)


def parse_size(text: str) -> tuple[int, int]:
    """argparse type for WIDTHxHEIGHT, e.g. 340x256."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 340x256, got {text!r}") from None
    return w, h
