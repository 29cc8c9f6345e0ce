"""Every wrong input is one sentence: each command, given a bad flag or a file of the wrong kind, prints exactly
one stderr line, `error:` first, exits with status 2 and writes nothing.

The commands run in this process (`tests.conftest.run_inline`, through `jobs.common.cli` as `python -m jobs.X`
runs them; a process per row would spend 5-10 s importing torch each); `tests/pipeline/test_preprocess_ray.py`
runs some of the same errors as processes.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch

from schemas.sample import FORMAT_VERSION
from tests.conftest import run_inline
from tests.helpers import synthetic_sample, write_dataset

PRE = ["--manifest", "{tmp}/m.parquet", "--out", "{tmp}/o"]
TRAIN = ["--data", "{tmp}/data", "--model", "tsn_rgb", "--out", "{tmp}/run"]
# (command, flags with {tmp} for the test's folder, what the one line must say)
CASES = [
    (
        "preprocess",
        [*PRE, "--flow-param", "warps=abc"],
        "flow parameter warps takes a whole number",
    ),
    (
        "preprocess",
        [*PRE, "--flow-param", "lambda=abc"],
        "flow parameter lambda_ takes a number",
    ),
    ("preprocess", [*PRE, "--flow-param", "warps=0"], "warps must be at least 1"),
    ("preprocess", [*PRE, "--modalities", "rgb,farneback"], "unknown modality 'farneback'"),
    ("preprocess", [*PRE, "--size", "40"], "WIDTHxHEIGHT"),
    ("preprocess", [*PRE, "--flow-param", "lamda=0.1"], "unknown flow parameter(s) lamda"),
    ("preprocess", [*PRE, "--address", "http://127.0.0.1:8265"], "is a dashboard URL"),
    ("preprocess", [*PRE, "--frobnicate"], "unrecognized arguments: --frobnicate"),
    ("preprocess", ["--out", "{tmp}/o"], "the following arguments are required: --manifest"),
    ("preprocess", ["--manifest", "{tmp}/data", "--out", "{tmp}/o"], "is a folder, not a file"),
    ("preprocess", [*PRE, "--price-cpu-hour", "0.05"], "--price-cpu-hour applies to a plan: add --dry-run DIR"),
    ("preprocess", [*PRE, "--dry-run", "{tmp}/p", "--calibration-frames", "1"], "calibration needs at least"),
    ("preprocess", [*PRE, "--dry-run", "{tmp}/o/plan"], "; a dry run writes nothing there: choose another folder"),
    ("manifest", ["kinetics9", "--annotations", "{tmp}", "--videos", "{tmp}", "--out", "{tmp}/m.parquet"], "invalid choice: 'kinetics9'"),
    ("train", ["--data", "{tmp}/data", "--model", "tsn_sound", "--out", "{tmp}/run"], "invalid choice: 'tsn_sound'"),
    ("train", [*TRAIN, "--epochs", "two"], "invalid int value: 'two'"),
    (
        "train",
        [*TRAIN, "--pretrained", "{tmp}/w.csv"],
        "not a PyTorch state dict",
    ),
    ("train", [*TRAIN, "--schedule", "step"], "--schedule step needs --step-epochs"),
    ("train", ["--data", "{tmp}", "--model", "tsn_flow", "--out", "{tmp}/run"], "not a finished flowshard dataset"),
    ("evaluate", ["--data", "{tmp}", "--run", "flow={tmp}/none"], "not a finished flowshard dataset"),
    ("evaluate", ["--data", "{tmp}/data", "--run", "x={tmp}/run", "--json", "{tmp}/data"], "is a folder; give a file such as"),
    ("evaluate", ["--data", "{tmp}/data"], "the following arguments are required: --run"),
    ("inspect", ["{tmp}/data", "--colour"], "unrecognized arguments: --colour"),
    ("make_synthetic", ["--out", "{tmp}/v", "--size", "big"], "WIDTHxHEIGHT"),
    ("visualize", ["--data", "{tmp}/data", "--out", "{tmp}/f.png", "--index", "middle"], "invalid int value: 'middle'"),
    ("visualize", ["--data", "{tmp}/data", "--out", "{tmp}/f.png", "--class", "c7"], "--class 'c7' is not a class of"),
    ("export", ["tfrecords", "--data", "{tmp}/data", "--out", "{tmp}/o"], "invalid choice: 'tfrecords'"),
    ("export", ["rawframes", "--data", "{tmp}", "--out", "{tmp}/o"], "not a finished flowshard dataset"),
    # a run folder whose checkpoint unpickles into a call (os.mkdir here): refused, never run (no new folder)
    ("evaluate", ["--data", "{tmp}/data", "--run", "x={tmp}/tampered"], "was not loaded, since unpickling anything more could run code"),
    ("train", ["--data", "{tmp}/data", "--model", "tsn_rgb", "--out", "{tmp}/tampered"], "is not a flowshard checkpoint of tensors"),
]


class _Tampered:
    """Unpickles into os.mkdir(path): what a malicious checkpoint could do with any callable."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def files(root: Path) -> set[Path]:
    return set(root.rglob("*"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A small dataset, a CSV posing as weights and a tampered run folder; the rows name only these and paths that
    do not exist."""
    tmp = tmp_path_factory.mktemp("inputs")
    write_dataset(tmp / "data", {"train-000000.tar": [synthetic_sample(f"v{i}", i % 2) for i in range(2)]})
    (tmp / "w.csv").write_text("a,b\n1,2\n")
    (tmp / "tampered").mkdir()
    state = {"format_version": FORMAT_VERSION, "model": {}, "config": {}, "epoch": 0, "hook": _Tampered(str(tmp / "pwned"))}
    torch.save(state, tmp / "tampered" / "checkpoint.pt")
    return tmp


@pytest.mark.parametrize("command,argv,message", CASES, ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(CASES)])
def test_a_wrong_input_is_one_error_line_exit_2_and_nothing_written(inputs, command, argv, message):
    before = files(inputs)
    result = run_inline(f"jobs.{command}", *[a.format(tmp=inputs) for a in argv])
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert files(inputs) == before, "a refused command wrote files"


def test_modalities_in_any_order_are_one_run():
    from jobs.preprocess import get_args_parser

    parse = get_args_parser().parse_args
    assert parse(["--manifest", "m", "--out", "o", "--modalities", "tvl1,rgb"]).modalities == ("rgb", "tvl1")
    assert parse(["--manifest", "m", "--out", "o", "--modalities", "rgb,tvl1"]).modalities == ("rgb", "tvl1")


def test_a_refused_resume_names_what_the_user_changed_not_the_estimate_that_followed(tmp_path):
    import json

    from pipeline.preprocess import FINGERPRINT_VERSION, RUN_FILE, _refuse_other_parameters
    from pipeline.shards import PROGRESS_DIR
    from storage import Location

    before = {"fingerprint_version": FINGERPRINT_VERSION, "process": {"short_side": 256}, "videos_per_shard": 650, "manifest": "x"}
    (tmp_path / PROGRESS_DIR).mkdir()
    (tmp_path / PROGRESS_DIR / RUN_FILE).write_text(json.dumps(before))
    smaller = {**before, "process": {"short_side": 128}, "videos_per_shard": 1040}
    with pytest.raises(ValueError) as refused:
        _refuse_other_parameters(Location(str(tmp_path)), smaller, estimated_per_shard=True)
    assert "process.short_side: 256 -> 128" in str(refused.value) and "videos_per_shard" not in str(refused.value)
    with pytest.raises(ValueError, match="videos_per_shard: 650 -> 1040"):  # set by hand, it is a change of its own
        _refuse_other_parameters(Location(str(tmp_path)), smaller, estimated_per_shard=False)
    with pytest.raises(ValueError, match="videos_per_shard: 650 -> 520"):  # the only change (--shard-size-mb)
        _refuse_other_parameters(Location(str(tmp_path)), {**before, "videos_per_shard": 520}, estimated_per_shard=True)
    # the manifest is compared row by row, elsewhere: another fingerprint alone is no refusal here
    assert _refuse_other_parameters(Location(str(tmp_path)), {**before, "manifest": "y"}) == before


def test_a_removed_or_changed_row_is_refused_in_words_not_hashes():
    """Issue 28: a manifest that removes or changes rows a dataset was built from is refused in one sentence that
    names them (what was added too); a failed video's changed row is the one change a retry may make."""
    from pipeline.generations import grow
    from schemas.manifest import VideoRecord

    old = [VideoRecord(f"v{i}", f"/videos/v{i}.mp4", i % 2, "c", "train", "ucf101") for i in range(6)]
    new = [r for r in old if r.video_id != "v2"]  # v2 removed
    new[0] = dataclasses.replace(new[0], path="/elsewhere/v0.mp4")
    new[3] = dataclasses.replace(new[3], label=1, split="test")  # v4
    new += [VideoRecord(f"w{i}", f"/videos/w{i}.mp4", 0, "c", "train", "ucf101") for i in range(5)]
    with pytest.raises(ValueError) as refused:
        grow([old], new, failed=set(), retry_failed=False)
    message = str(refused.value)
    assert "1 video removed (v2), 2 changed (v0: path, v4: label, split)" in message and "videos added" not in message
    assert "labels are places in the manifest's class list" in message  # why a label moved
    assert "--overwrite" in message and "--retry-failed" not in message and "\n" not in message
    assert grow([old], old[::-1], failed=set(), retry_failed=False) == []  # the same rows in another order: nothing to add
    moved = [dataclasses.replace(old[0], path="/mirror/v0.mp4"), *old[1:]]
    with pytest.raises(ValueError, match=r"1 changed \(v0: path\).*pass --retry-failed"):  # v0 failed: a retry may move it
        grow([old], moved, failed={"v0"}, retry_failed=False)
    assert grow([old], moved, failed={"v0"}, retry_failed=True) == [moved[0]]


@pytest.mark.parametrize(
    "command,argv",
    [
        ("preprocess", ["--manifest", "demo_out/manifest.parquet", "--out", "{tmp}/o"]),
        ("train", ["--data", "demo_out/data", "--model", "tsn_rgb", "--out", "/abs/run"]),
        ("evaluate", ["--data", "{tmp}/data", "--run", "flow=demo_out/runs/flow"]),
    ],
)
def test_a_relative_path_missing_inside_a_ray_job_names_working_dir(inputs, monkeypatch, command, argv):
    """Inside `ray job submit` (the supervisor sets RAY_JOB_ID), a relative input the job's working directory lacks
    is most often a git-ignored folder --working-dir did not upload: the one line says so and what to pass."""
    monkeypatch.setenv("RAY_JOB_ID", "02000000")
    monkeypatch.chdir(inputs)
    result = run_inline(f"jobs.{command}", *[a.format(tmp=inputs) for a in argv])
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: demo_out/") and "does not exist in this Ray job's working directory" in lines[0]
    assert "--working-dir" in lines[0] and "absolute path" in lines[0] and "s3://" in lines[0]
    monkeypatch.delenv("RAY_JOB_ID")  # outside a job the same path gets the command's own message
    assert "Ray job" not in run_inline(f"jobs.{command}", *[a.format(tmp=inputs) for a in argv]).stderr


def test_a_bug_prints_its_traceback_with_credentials_redacted(capsys):
    """Not a user error: the traceback is shown (exit 1), through the same redaction as every other line."""
    from jobs.common import ArgumentParser, cli

    def main(cfg):
        raise RuntimeError("could not read s3://AKIDEXAMPLE:Secret0123@bucket/x")

    status = cli(lambda: ArgumentParser(prog="job"), lambda args: None, main, [])
    err = capsys.readouterr().err
    assert status == 1 and err.startswith("Traceback") and "RuntimeError: could not read s3://***@bucket/x" in err, err
    assert "Secret0123" not in err and "AKIDEXAMPLE" not in err
