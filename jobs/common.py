"""What every job shares: how it reports a user error and records its resolved configuration."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import traceback

from storage import Location, OutputFault, StorageError, is_uri, redact, redacted

EXIT_USAGE = 2  # bad flags or input files, as argparse uses; the output held by another run
EXIT_OUTPUT = 3  # the output failed mid-run (no space, quota, permission, bucket gone): the same command goes on later
USER_ERRORS = (ValueError, StorageError)  # what a job reports as one sentence (no traceback)


class ArgumentParser(argparse.ArgumentParser):
    """argparse.ArgumentParser whose errors are one `error:` line and exit status 2, as every job promises: the
    usage block is for --help, not for a mistyped flag."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"error: {message} (see {self.prog} --help)\n")


def fail(message: str, status: int = EXIT_USAGE) -> int:
    """Print a one-sentence error for the user on one line (no traceback; characters that would break the line, as a
    file name from a download may hold, are escaped; `cli`'s streams redact credentials) and return `status` (the
    usage exit code)."""
    print(f"error: {one_line(message)}", file=sys.stderr)
    return status


def one_line(text: str) -> str:
    """`text` with each character that is not printable (control characters, line breaks) as its escape: 'a\\nb'."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def write_config(cfg, path: str) -> None:
    """Write a job's resolved configuration as JSON (a local path or URI) next to its outputs, for reproducing the
    run; credentials in its URIs are redacted (pass them again, or through the environment, to re-run)."""
    Location(path).write_text(json.dumps(redacted(dataclasses.asdict(cfg)), indent=2, default=str) + "\n")


class _Redacting:
    """A text stream that redacts credentials in URIs (`storage.redact`) on the way to the one it wraps; anything
    else (encoding, fileno, isatty, ...) is the wrapped stream's."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(redact(text))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


@contextlib.contextmanager
def redacted_output():
    """While a job runs, everything it prints to stdout and stderr (its lines, progress, the Ray workers' lines the
    driver relays) has credentials in URIs replaced by ***."""
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Redacting(sys.stdout), _Redacting(sys.stderr)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = streams


def in_ray_job() -> bool:
    """Whether this process is the entrypoint of a `ray job submit` job (Ray's job supervisor sets these)."""
    return "RAY_JOB_ID" in os.environ or "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ


def check_locations(*inputs: str | None, outputs: tuple[str | None, ...] = ()) -> None:
    """Fail early, in one sentence, when the object store behind any of these URIs is unreachable, refuses the
    credentials or lacks the bucket, or, inside a `ray job submit` job, when an input is a relative local path that
    does not exist (the usual cause: `--working-dir` leaves out git-ignored folders). Other local paths are checked
    where they are used."""
    for path in inputs if in_ray_job() else ():
        if path and not is_uri(path) and not os.path.isabs(path) and not os.path.exists(path):
            raise ValueError(
                f"{path} does not exist in this Ray job's working directory ({os.getcwd()}): `ray job submit --working-dir` "
                "uploads the folder without its git-ignored files; pass an absolute path that every node sees, or a URI "
                "such as s3://bucket/path"
            )
    for path in (*inputs, *outputs):
        if path and is_uri(path):
            Location(path).check()


def cli(get_args_parser, config_from_args, main, argv: list[str] | None = None) -> int:
    """Run a job from the command line (or `argv`): parse flags, build the config, run `main`.

    A ValueError while building the config (a flag value the config rejects), or a user error (ValueError,
    StorageError) that `main` lets through, becomes a one-sentence error (exit status 2; 3 for a fault of the
    output met mid-run); any other exception is a bug, printed with its traceback (exit status 1). Nothing it
    prints shows credentials, tracebacks included.
    """
    with redacted_output():
        args = get_args_parser().parse_args(argv)
        try:
            return main(config_from_args(args))
        except OutputFault as exc:
            return fail(str(exc), EXIT_OUTPUT)
        except USER_ERRORS as exc:
            return fail(str(exc))
        except Exception:  # printed here, through the redacting streams, not by Python after they are gone
            traceback.print_exc()
            return 1


def parse_size(text: str) -> tuple[int, int]:
    """argparse type for WIDTHxHEIGHT, e.g. 340x256."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 340x256, got {text!r}") from None
    return w, h
