"""What every job shares: how it reports a user error and records its resolved configuration."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from storage import Location, StorageError, is_uri

EXIT_USAGE = 2  # bad flags or input files, as argparse uses
USER_ERRORS = (ValueError, StorageError)  # what a job reports as one sentence (no traceback)


class ArgumentParser(argparse.ArgumentParser):
    """argparse.ArgumentParser whose errors are one `error:` line and exit status 2, as every job promises: the
    usage block is for --help, not for a mistyped flag."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"error: {message} (see {self.prog} --help)\n")


def fail(message: str) -> int:
    """Print a one-sentence error for the user (no traceback) and return the usage exit code."""
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE


def write_config(cfg, path: str) -> None:
    """Write a job's resolved configuration as JSON (a local path or URI) next to its outputs, for reproducing the run."""
    Location(path).write_text(json.dumps(dataclasses.asdict(cfg), indent=2, default=str) + "\n")


def check_locations(*paths: str | None) -> None:
    """Fail early, in one sentence, when the object store behind any of these URIs is unreachable, refuses the
    credentials or lacks the bucket (local paths are checked where they are used)."""
    for path in paths:
        if path and is_uri(path):
            Location(path).check()


def cli(get_args_parser, config_from_args, main, argv: list[str] | None = None) -> int:
    """Run a job from the command line (or `argv`): parse flags, build the config, run `main`.

    A ValueError while building the config (a flag value the config rejects), or a user error (ValueError,
    StorageError) that `main` lets through, becomes a one-sentence error.
    """
    args = get_args_parser().parse_args(argv)
    try:
        return main(config_from_args(args))
    except USER_ERRORS as exc:
        return fail(str(exc))


def parse_size(text: str) -> tuple[int, int]:
    """argparse type for WIDTHxHEIGHT, e.g. 340x256."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 340x256, got {text!r}") from None
    return w, h
