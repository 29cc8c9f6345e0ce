"""Growing a dataset (issue 28) end to end on embedded Ray: a build, an append that processes only its new videos,
a training run resumed on the grown dataset, an append whose driver is killed and resumed, a fixed file retried
with --retry-failed, and a build of the whole manifest at once to compare with, sample for sample."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import signal
from collections import Counter
from pathlib import Path

import cv2
import pyarrow.parquet as pq
import pytest

from pipeline.synthetic import SyntheticConfig, generate_dataset
from schemas.dataset import read_dataset_info
from schemas.manifest import read_manifest
from tests.conftest import ray_task_pids, run_inline, run_job, start_job, wait_for
from tests.helpers import QUICK_FLOW, flags, shard_samples, whole_shards
from trainers.config import TrainConfig
from trainers.loop import run_training

pytestmark = [pytest.mark.slow, pytest.mark.ray]

VIDEOS = SyntheticConfig(classes=2, videos_per_class=6, width=64, height=48, frames=8, seed=3)  # 8 train, 4 test
RUN = ["--modalities", "rgb,tvl1", "--progress-seconds", "1", *QUICK_FLOW]


def manifest(root: Path, name: str, rows: list[str]) -> Path:
    """A manifest of these csv rows (path,label,split), built by jobs.manifest."""
    (root / f"{name}.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    path = root / f"{name}.parquet"
    result = run_inline("jobs.manifest", "csv", "--annotations", str(root / f"{name}.csv"), "--videos", str(root), "--out", str(path))
    assert result.returncode == 0, result.stderr
    return path


def preprocess(manifest: Path, out: Path, *extra: str, videos_per_shard: int = 1, env: dict):
    """jobs.preprocess on the session's Ray cluster (`env`)."""
    result = run_job("jobs.preprocess", *flags(manifest=manifest, out=out, videos_per_shard=videos_per_shard), *RUN, *extra, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def train(data: Path, out: Path, epochs: int) -> tuple[dict, str]:
    """A tiny flow network trained in this process to `epochs`: (the last epoch's stats, what it printed)."""
    cfg = TrainConfig(data=str(data), model="tsn_flow", out=str(out), epochs=epochs, batch_size=2, input_size=32, new_length=2)
    stats, printed = {}, io.StringIO()
    with contextlib.redirect_stdout(printed):
        run_training(dataclasses.replace(cfg, segments=2, loader_workers=0, print_freq=0, lr=0.01), report=stats.update)
    return stats, printed.getvalue()


def files(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.iterdir()}


@pytest.fixture(scope="module")
def grown(tmp_path_factory, ray_cluster):
    """Every stage's output and what the test needs to check it (the stages depend on each other, in this order);
    each run joins the session's Ray cluster."""
    root = tmp_path_factory.mktemp("grow")
    ray = ray_cluster.env
    entries = generate_dataset(VIDEOS, root / "videos")
    row = {e.relpath: f"{root / 'videos' / e.relpath},{e.relpath.split('/')[0]},{e.split}" for e in entries}
    trains, tests = [e.relpath for e in entries if e.split == "train"], [e.relpath for e in entries if e.split == "test"]
    bad = root / "videos" / trains[1]
    good_bytes = bad.read_bytes()
    bad.write_bytes(good_bytes[: len(good_bytes) // 3])  # cut off, as a download that stopped
    first = [row[p] for p in trains[:2] + trains[4:5]]  # a good video of each class and the cut one
    second = first + [row[p] for p in (trains[2], tests[0], tests[2])]  # 3 added: 1 train, 2 test
    every = second + [row[p] for p in (trains[3], *trains[5:], tests[1], tests[3])]  # 6 more
    out, stage = root / "out", {}

    plan = ["--calibration-frames", "6"]
    stage["plan_fresh"] = preprocess(
        manifest(root, "first", first), out, "--dry-run", str(root / "plan0"), "--calibration-videos", "0", env=ray
    )
    stage["out_after_fresh_plan"] = out.exists()
    stage["build"] = preprocess(root / "first.parquet", out, env=ray)
    stage["built_shards"] = files(out / "shards")
    stage["trained"] = train(out, root / "run", epochs=1)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    stage["plan_append"] = preprocess(manifest(root, "second", second), out, "--dry-run", str(root / "plan1"), *plan, env=ray)
    stage["out_untouched_by_plan"] = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    stage["append"] = preprocess(root / "second.parquet", out, "--compare-plan", str(root / "plan1"), env=ray)
    stage["appended_shards"] = files(out / "shards")
    stage["report"] = json.loads((out / "report.json").read_text())
    stage["after_append"] = read_dataset_info(str(out))

    # the next append's driver is killed once its first new shard is done (Ray ends its job's tasks), then resumed
    args = [*flags(manifest=manifest(root, "every", every), out=out, videos_per_shard=1), *RUN]
    done_before = set((out / "_progress").glob("*.done.json"))
    job = start_job(*args, env=ray)
    try:
        assert wait_for(lambda: set((out / "_progress").glob("*.done.json")) - done_before, timeout=300), "no new shard finished"
        os.killpg(job.pid, signal.SIGKILL)
        job.wait(timeout=30)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    # A task already running may finish its shard before Ray ends the job of the lost driver.
    assert wait_for(lambda: not ray_task_pids(), timeout=60), "orphaned shard tasks kept running"
    stage["finished_when_killed"] = len(set((out / "_progress").glob("*.done.json")) - done_before)
    stage["resume"] = preprocess(root / "every.parquet", out, env=ray)
    stage["resumed_results"] = pq.read_table(out / "results.parquet").to_pylist()

    bad.write_bytes(good_bytes)  # the good file downloaded again
    stage["retry"] = preprocess(root / "every.parquet", out, "--retry-failed", env=ray)
    stage["resumed_training"] = train(out, root / "run", epochs=2)
    stage["whole"] = preprocess(root / "every.parquet", root / "whole", videos_per_shard=4, env=ray)  # all at once, to compare
    return root, out, bad.stem, stage


def test_an_append_processes_only_the_new_videos_and_rewrites_no_shard(grown):
    _, out, bad, stage = grown
    assert "2 ok, 1 failed of 3 videos" in stage["build"].stdout
    printed = stage["append"].stdout
    assert "growing the dataset: 3 new videos, in new shards (generation 1)" in printed
    assert "1 video failed in earlier runs; --retry-failed tries them again" in printed
    assert "3 shards already done, 3 to run" in printed and "5 ok, 1 failed of 6 videos" in printed
    assert stage["report"]["videos"] == 3 and stage["report"]["grown"] == {"generation": 1, "added": 3, "retried": 0}
    assert stage["report"]["dataset_videos"] == 6 and "report: 3 videos (3 added, 0 retried; the dataset holds 6)" in printed
    built, appended = stage["built_shards"], stage["appended_shards"]
    assert {name: appended[name] for name in built} == built, "a finished shard was written again"
    info = stage["after_append"]
    assert info.counts["samples"] == {"train": 3, "test": 2} and info.counts["videos"] == 6 and info.counts["failed"] == 1
    # the new shards are numbered after each split's last: the first build planned train-000000 to 2 (the cut
    # video's has no tar), the append train-000003 and the first test shards
    assert info.shards["test"] == ["test-000000.tar", "test-000001.tar"] and len(info.shards["train"]) == 3
    assert "train-000003.tar" in info.shards["train"] and set(info.shards["train"]) <= {f"train-00000{i}.tar" for i in range(4)}


def test_a_killed_append_resumes_with_every_video_once(grown):
    root, out, bad, stage = grown
    every, _ = read_manifest(str(root / "every.parquet"))
    new = len(every) - 6
    finished = stage["finished_when_killed"]
    assert 0 < finished < new, "the append finished before the kill: nothing was resumed"
    assert f"{6 + finished} shards already done, {new - finished} to run" in stage["resume"].stdout
    assert "growing the dataset" not in stage["resume"].stdout  # its rows were kept when it started: a plain resume
    results = stage["resumed_results"]
    assert sorted(r["video_id"] for r in results) == sorted(r.video_id for r in every)  # one row per video
    assert [r["video_id"] for r in results if r["status"] != "ok"] == [bad]


def test_a_retried_video_that_now_decodes_becomes_ok_with_one_row_and_one_sample(grown):
    _, out, bad, stage = grown
    assert "growing the dataset: 1 failed video retried" in stage["retry"].stdout
    assert "12 ok, 0 failed of 12 videos" in stage["retry"].stdout
    results = pq.read_table(out / "results.parquet").to_pylist()
    assert Counter(r["video_id"] for r in results).most_common(1)[0][1] == 1 and all(r["status"] == "ok" for r in results)
    retried = next(r for r in results if r["video_id"] == bad)
    index = pq.read_table(out / "index.parquet").to_pylist()
    assert [r["shard"] for r in index if r["key"] == bad] == [retried["shard"]]
    samples = shard_samples([str(p) for p in sorted((out / "shards").glob("*.tar"))])
    assert Counter(s["__key__"] for s in samples) == Counter(r["video_id"] for r in results)  # each video once
    whole_shards([p.name for p in (out / "shards").iterdir()])
    inspected = run_inline("jobs.inspect", str(out))
    assert "12 videos in the shards, 0 failed" in inspected.stdout and "(report.json of the last run: 1 of 12 videos)" in inspected.stdout


def test_the_grown_dataset_equals_one_built_at_once_sample_for_sample(grown):
    root, out, _, _ = grown
    whole = root / "whole"

    def by_key(data: Path) -> dict[str, dict]:
        return {s.pop("__key__"): s for s in shard_samples([str(p) for p in sorted((data / "shards").glob("*.tar"))])}

    grown_samples, at_once = by_key(out), by_key(whole)
    assert sorted(grown_samples) == sorted(at_once) and len(at_once) == 12
    for key, members in at_once.items():
        assert grown_samples[key] == members, f"{key} differs from the one built at once"
    info, reference = read_dataset_info(str(out)), read_dataset_info(str(whole))
    assert info.counts == {**reference.counts, "shards": info.counts["shards"]} and info.classes == reference.classes
    keys = lambda data: sorted((r["key"], r["label"], r["split"], r["frames"]) for r in pq.read_table(data / "index.parquet").to_pylist())  # noqa: E731
    assert keys(out) == keys(whole)


def test_a_training_resume_on_the_grown_dataset_reads_the_new_videos(grown):
    """Trained one epoch on the first build's 2 training videos, resumed on the grown dataset's 8."""
    *_, stage = grown
    stats, _ = stage["trained"]
    assert stats["samples"] == 2
    stats, printed = stage["resumed_training"]
    assert "resuming" in printed and "has 8 train samples (2 at the checkpoint): epochs from here read all of them" in printed
    assert stats["epoch"] == 1 and stats["samples"] == 8


def test_a_manifest_that_removes_videos_is_refused_in_one_sentence_and_changes_nothing(grown):
    root, out, _, _ = grown
    before = {p.name: p.read_bytes() for p in [*out.iterdir(), *(out / "_progress").iterdir()] if p.is_file()}
    shards = files(out / "shards")
    result = run_inline("jobs.preprocess", *flags(manifest=root / "second.parquet", out=out, videos_per_shard=1), *RUN)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "6 videos removed (" in result.stderr and "--overwrite" in result.stderr and "Traceback" not in result.stderr
    assert {p.name: p.read_bytes() for p in [*out.iterdir(), *(out / "_progress").iterdir()] if p.is_file()} == before
    assert files(out / "shards") == shards


def test_a_dry_run_plans_only_what_the_run_will_do_and_writes_nothing_under_out(grown):
    """Issue 29 on a dataset that grows: a dry run on a fresh location and on the built dataset, each followed by
    the run it planned."""
    root, out, bad, stage = grown
    assert not stage["out_after_fresh_plan"], "a dry run created --out"
    assert stage["out_untouched_by_plan"], "a dry run changed a file under --out"
    fresh = json.loads((root / "plan0" / "plan.json").read_text())
    assert fresh["videos"] == {"to_run": 3, "expected_ok": 2, "expected_failed": 1, "failures": {"not a readable video file": 1}}
    picture = cv2.imread(str(root / "plan0" / "plan.png"))
    assert picture is not None and picture.shape[1] > picture.shape[0] > 500  # the census at a glance
    census = pq.read_table(root / "plan0" / "census.parquet").to_pylist()
    assert {r["video_id"]: r["status"] for r in census}[bad] == "failed" and len(census) == 3
    appended = json.loads((root / "plan1" / "plan.json").read_text())
    assert appended["videos"]["to_run"] == 3 and appended["videos"]["expected_ok"] == 3  # the new videos only
    assert appended["per_split"] == {"train": {"videos": 1, "rgb": 8, "tvl1": 7}, "test": {"videos": 2, "rgb": 16, "tvl1": 14}}
    assert "dry run: 3 videos to run of 6 in the manifest" in stage["plan_append"].stdout
    # the append it planned, compared: the same videos, frames and pairs, bytes within a quarter
    against = stage["report"]["against_plan"]
    assert all(against[k]["actual"] == against[k]["planned"] for k in ("expected_ok", "expected_failed", "frames", "pairs"))
    assert 0.75 <= against["bytes"]["ratio"] <= 1.25, against["bytes"]
    # issue 36: a range from the calibration videos drawn again, which the actual bytes lie in (wall time on this
    # shared machine is not held to it here: bench/plan_accuracy.py measures that)
    low, high = against["bytes"]["range"]
    assert low <= against["bytes"]["planned"] <= high and against["bytes"]["inside"], against["bytes"]
    assert appended["time"]["seconds_range"][0] <= appended["time"]["seconds"] <= appended["time"]["seconds_range"][1]
    assert "against the plan: ok 3 of 3 planned" in stage["append"].stdout
