"""`jobs.preprocess` end to end on real Ray: embedded, a real head with `ray job submit`, killed workers and
drivers, every bad input kind, and the real clips in ../shared/data/videos."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from pipeline.report import failure_reason
from pipeline.synthetic import SyntheticConfig, class_direction, class_names, generate_dataset
from schemas.dataset import read_dataset_info
from schemas.manifest import read_manifest
from schemas.sample import decode_sample
from tests.conftest import (
    RAY,
    REPO,
    SHARED_DATA,
    free_port,
    kill_session,
    one_ran_one_refused,
    ray_task_pids,
    run_inline,
    run_job,
    run_together,
    session_pids,
    start_job,
    start_session,
    wait_for,
)
from tests.helpers import BAD_REASONS, QUICK_FLOW, flags, whole_shards, write_bad_inputs

pytestmark = [pytest.mark.slow, pytest.mark.ray]

SMALL = SyntheticConfig(classes=4, videos_per_class=4, width=64, height=48, frames=8, seed=2)
FAST = ["--progress-seconds", "2", "--size", "64x48", *QUICK_FLOW]
EMBEDDED = dict(videos_per_shard=5, modalities="rgb,tvl1,warp_tvl1")  # the module's embedded run


def make_manifest(root: Path, cfg: SyntheticConfig, bad: bool) -> tuple[Path, list]:
    """A csv manifest of a synthetic dataset (plus, optionally, one video of each bad kind)."""
    entries = generate_dataset(cfg, root / "videos")
    names = class_names(cfg.classes)
    rows = [f"{root / 'videos' / e.relpath},{names[e.label]},{e.split}" for e in entries]
    if bad:
        rows += [f"{p},{names[0]},train" for p in write_bad_inputs(root / "bad").values()]
    (root / "list.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    args = ["csv", "--annotations", str(root / "list.csv"), "--videos", str(root), "--out", str(root / "manifest.parquet")]
    result = run_job("jobs.manifest", *args, *(["--allow-missing"] if bad else []))
    assert result.returncode == 0, result.stderr
    return root / "manifest.parquet", entries


def read_shards(out: Path) -> list[dict]:
    tars = sorted(str(p) for p in (out / "shards").glob("*.tar"))
    return list(wds.WebDataset(tars, shardshuffle=False)) if tars else []


def read_shards_of(tar: Path) -> list[dict]:
    return list(wds.WebDataset(str(tar), shardshuffle=False))


def assert_every_good_video_exactly_once(out: Path, manifest: Path) -> None:
    records, _ = read_manifest(manifest)
    good = {r.video_id for r in records if "/bad/" not in r.path}  # write_bad_inputs puts them under bad/
    keys = [m["__key__"] for m in read_shards(out)]
    assert Counter(keys) == Counter(good), "every good video must be in the shards exactly once"
    whole_shards([p.name for p in (out / "shards").iterdir()])  # no temporary or partial files
    results = pq.read_table(out / "results.parquet").to_pylist()
    assert sorted(r["video_id"] for r in results) == sorted(r.video_id for r in records)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("pre")
    manifest, entries = make_manifest(root, SMALL, bad=True)
    return root, manifest, entries


@pytest.fixture(scope="module")
def embedded_run(dataset):
    """The module's run, its command started twice at once (a job submitted twice): one run does the work, the
    other is refused in one line (checked by `one_ran_one_refused`) and touches nothing."""
    root, manifest, _ = dataset
    out = root / "out"
    run, _ = one_ran_one_refused(run_together("jobs.preprocess", *flags(manifest=manifest, out=out, **EMBEDDED), *FAST))
    return out, run


def test_embedded_run_writes_readable_shards(dataset, embedded_run):
    root, manifest, entries = dataset
    out, result = embedded_run
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(entries)} ok, {len(BAD_REASONS)} failed" in result.stdout
    assert "videos (" in result.stdout and "frames/s" in result.stdout and "ETA" in result.stdout
    assert "Token authentication" not in result.stdout + result.stderr  # no third-party notice a user cannot act on
    assert_every_good_video_exactly_once(out, manifest)
    kept = pq.read_table(out / "_progress" / "manifest_rows.parquet").to_pylist()  # what a later run compares with
    assert [row["video_id"] for row in kept] == [r.video_id for r in read_manifest(manifest)[0]]
    for tar in (out / "shards").glob("*.tar"):  # DALI's index beside each tar: a line per sample
        lines = tar.with_suffix(".idx").read_text().splitlines()
        assert lines[0] == f"v1.2 {len(lines) - 1}" and len(lines) - 1 == len(read_shards_of(tar))
    report = json.loads((out / "report.json").read_text())
    # one flow worker per core, each pair of each good video computed once (the cut-off file's pairs too)
    assert len(report["flow_workers"]) == os.cpu_count() and "flow worker cpu on" in result.stdout
    assert report["pairs"] >= len(entries) * (SMALL.frames - 1) and report["ok"] == len(entries)
    assert report["failures"]["file not found"] == 1 and report["time"]["decode"] > 0 and report["time"]["flow"] > 0
    # warped flow's camera motion is estimated by the shard tasks: the flow workers (other processes) only solve
    assert report["time"]["homography_in_shard_tasks"] > 0 and report["time"]["homography_in_flow_workers"] == 0
    assert all(w["homography_seconds"] == 0 and w["host_reads_per_launch"] > 0 for w in report["flow_workers"])
    records, classes = read_manifest(manifest)
    label_of = {r.video_id: r.label for r in records}
    for members in read_shards(out):
        sample = decode_sample(members)
        meta = sample.meta
        assert int(members["cls"]) == meta.label == label_of[meta.video_id]
        assert len(sample.rgb) == SMALL.frames and len(sample.flow["tvl1"]) == SMALL.frames - 1
        assert len(sample.flow["warp_tvl1"]) == SMALL.frames - 1 and len(meta.homographies) == SMALL.frames - 1
        assert sample.rgb_frame(SMALL.frames - 1).shape == (48, 64, 3)
        # flow i takes frame i to frame i+1: objects move along the class direction
        flow = sample.flow_frame("tvl1", SMALL.frames // 2)
        moving = np.linalg.norm(flow, axis=-1) > 1.0
        direction = flow[moving].mean(0)
        assert np.dot(direction / np.linalg.norm(direction), class_direction(meta.label, SMALL.classes)) > 0.8


def test_the_contact_sheet_of_a_run_labels_warped_flow_with_its_homographies(embedded_run, tmp_path):
    from pipeline.contact_sheet import sample_row

    out, _ = embedded_run
    shown = run_inline("jobs.visualize", "--data", str(out), "--out", str(tmp_path / "sheet.png"), "--samples", "4")
    assert shown.returncode == 0, shown.stderr
    assert "4 samples" in shown.stdout and (tmp_path / "sheet.png").stat().st_size > 10_000
    for sample in map(decode_sample, read_shards(out)):
        middle = sample.meta.num_flows // 2  # the flow a row shows
        homography = sample.meta.homographies[middle]
        warped = sample_row(sample, "x").tiles[-3]  # colours, x, y of each flow; warp_tvl1 last
        found = f"homography {homography['inliers']} inliers" if homography["found"] else "no homography"
        assert warped.label.startswith(f"warp_tvl1 {middle}->{middle + 1}\n") and found in warped.label


def test_embedded_run_records_every_bad_input(dataset, embedded_run):
    root, manifest, _ = dataset
    out, _ = embedded_run
    results = {r["video_id"]: r for r in pq.read_table(out / "results.parquet").to_pylist()}
    for name, reason in BAD_REASONS.items():
        row = results[name]
        assert row["status"] == "failed" and row["reason"].startswith(reason), row
        assert "\n" not in row["reason"]


def test_inspect_summarises_the_run_from_its_tables(dataset, embedded_run):
    """jobs.inspect: the counts printed are index.parquet's and results.parquet's, failures by reason with their
    videos; summary.png drawn."""
    out, _ = embedded_run
    result = run_inline("jobs.inspect", str(out), "--png", str(out.parent / "summary.png"))
    assert result.returncode == 0, result.stdout + result.stderr
    index = pq.read_table(out / "index.parquet").to_pylist()
    results = pq.read_table(out / "results.parquet").to_pylist()
    failed = [r for r in results if r["status"] != "ok"]
    assert f"{len(index)} videos in the shards, {len(failed)} failed" in result.stdout
    for split in {r["split"] for r in results}:
        videos = sum(r["split"] == split for r in index)
        frames = sum(r["frames"] for r in index if r["split"] == split)
        bad = sum(r["split"] == split for r in failed)
        assert re.search(rf"^{split}\s+{videos}\s+{bad}\s+{frames}\s", result.stdout, re.M), result.stdout
    for row in failed:
        assert re.search(rf"^\s+\d+\s+{re.escape(failure_reason(row['reason']))}: .*{row['video_id']}", result.stdout, re.M)
    assert "took " in result.stdout and "built with: " in result.stdout
    image = cv2.imread(str(out.parent / "summary.png"))
    assert image is not None and image.shape[:2] == (900, 1600)


def test_index_and_dataset_json_match_the_shards(dataset, embedded_run):
    _, manifest, entries = dataset
    out, _ = embedded_run
    index = pq.read_table(out / "index.parquet").to_pylist()
    by_shard = Counter(r["shard"] for r in index)
    results = pq.read_table(out / "results.parquet").to_pylist()
    assert Counter(r["shard"] for r in results if r["status"] == "ok") == by_shard  # one naming in both tables
    for tar in (out / "shards").glob("*.tar"):
        keys = [m["__key__"] for m in wds.WebDataset(str(tar), shardshuffle=False)]
        assert by_shard[tar.name] == len(keys)
    info = read_dataset_info(out)
    assert info.counts["ok"] == len(entries) and info.counts["failed"] == len(BAD_REASONS)
    assert info.classes == class_names(SMALL.classes)
    assert info.modalities == ["rgb", "tvl1", "warp_tvl1"]
    assert sum(len(v) for v in info.shards.values()) == len(list((out / "shards").glob("*.tar")))


def test_rerun_does_no_work_and_strict_reports_failures(dataset, embedded_run):
    _, manifest, _ = dataset
    out, _ = embedded_run
    before = {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in (out / "shards").iterdir()}
    report = (out / "report.json").read_bytes()
    old_index = sorted((out / "shards").glob("*.idx"))[0]  # as if built before flowshard wrote DALI indexes
    written_with_the_shard = old_index.read_bytes()
    old_index.unlink()
    # and a completion record from before flowshard kept sample offsets (sizes then counted tarfile's buffer)
    record = out / "_progress" / old_index.name.replace(".idx", ".done.json")
    old = json.loads(record.read_text())
    for video in old["videos"]:
        video.pop("offset")
        video["bytes"] += 10240
    record.write_text(json.dumps(old))
    index_before = pq.read_table(out / "index.parquet")
    result = run_job("jobs.preprocess", *flags(manifest=manifest, out=out, **EMBEDDED, strict=True), *FAST)
    assert result.returncode == 1  # --strict with failed videos
    assert "0 to run" in result.stdout and "(0 written in this run)" in result.stdout
    assert "wrote the DALI index of 1 shards built before" in result.stdout
    assert old_index.read_bytes() == written_with_the_shard  # from the tar's headers: the same index
    assert pq.read_table(out / "index.parquet").equals(index_before)  # the same sample ranges, from that index
    before[old_index.name] = (old_index.stat().st_mtime_ns, old_index.stat().st_size)
    written = json.loads(report)["written"]
    assert f"nothing to run; report.json is the report of the run that built the shards ({written}):" in result.stdout
    assert "report: " in result.stdout and (out / "report.json").read_bytes() == report
    assert {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in (out / "shards").iterdir()} == before


def test_changed_parameters_need_overwrite(dataset, embedded_run):
    _, manifest, _ = dataset
    out, _ = embedded_run
    result = run_job("jobs.preprocess", "--manifest", str(manifest), "--out", str(out), "--videos-per-shard", "5", *FAST)
    assert result.returncode == 2 and "--overwrite" in result.stderr and "modalities" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_flags_and_manifest_are_one_sentence_errors(tmp_path):
    """As processes, an error of argparse's and one of the configuration's (tests/jobs/test_one_sentence.py runs
    the whole table of wrong inputs in-process)."""
    cases = [
        (["--manifest", str(tmp_path / "none.parquet"), "--out", str(tmp_path / "o")], "build one with"),
        (["--manifest", "m", "--out", "o", "--size", "big"], "WIDTHxHEIGHT"),
        (["--manifest", "m", "--out", "o", "--address", "http://127.0.0.1:8265"], "dashboard URL"),
    ]
    for args, message in cases:
        result = run_job("jobs.preprocess", *args)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("error: "), result.stderr


def test_help_documents_every_flag():
    from jobs.preprocess import get_args_parser

    result = run_job("jobs.preprocess", "--help")
    flags = {o for action in get_args_parser()._actions for o in action.option_strings if o.startswith("--")} - {"--help"}
    assert "--flow-workers" in flags and "--video-timeout" in flags
    for flag in flags:  # none hidden (argparse.SUPPRESS)
        assert flag in result.stdout
    helps = [a.help for a in get_args_parser()._actions if a.option_strings and a.option_strings[0] != "-h"]
    assert all(h and len(h) > 20 for h in helps), "every flag says what it does"


# --- faults ----------------------------------------------------------------------------------------------

SLOW = SyntheticConfig(classes=2, videos_per_class=4, width=96, height=72, frames=12, seed=5)


def run_and_kill(manifest: Path, out: Path, stages, env: dict) -> tuple[str, int, list[list[int]]]:
    """Run jobs.preprocess on the session's cluster (`env`); for each (started, victims) of `stages` in turn, once
    `started()` holds, SIGKILL the processes `victims()` names; wait for the end. Returns (output, exit status, the
    PIDs killed at each stage)."""
    job = start_job("--manifest", str(manifest), "--out", str(out), "--videos-per-shard", "2", "--progress-seconds", "1", env=env)
    killed = []
    try:
        for started, victims in stages:
            assert wait_for(started, timeout=120), f"the work to interrupt at stage {len(killed)} never started"
            killed.append(victims())
            for pid in killed[-1]:
                os.kill(pid, signal.SIGKILL)
        output, _ = job.communicate(timeout=600)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    return output, job.returncode, killed


def test_killed_flow_workers_then_every_busy_worker_cost_no_video(tmp_path, ray_cluster):
    """One run, two losses: every flow worker (one per core) once all have started and one is computing (the
    requests they held are sent again to their restarted selves); then, once a shard has finished since, every
    shard task and the progress actor (Ray retries the tasks, which rewrite their shards). Every good video lands
    once, every bad one is recorded, and progress goes on. (Two tests until issue 40: one run does both.)"""
    manifest, entries = make_manifest(tmp_path, SLOW, bad=True)
    out = tmp_path / "out"
    flow_started = lambda: len(ray_task_pids("ray::_FlowActor")) == os.cpu_count() and ray_task_pids("ray::_FlowActor.compute")  # noqa: E731
    done_before = []

    def flow_workers() -> list[int]:
        done_before.extend((out / "_progress").glob("*.done.json"))
        return ray_task_pids("ray::_FlowActor")

    def busy() -> list[int]:
        time.sleep(1.0)  # let them get into their videos
        return ray_task_pids() + ray_task_pids("ray::ProgressTracker")  # every shard task and the progress actor

    # a shard finished after the flow workers came back, and shard tasks are at work again
    tasks_started = lambda: set((out / "_progress").glob("*.done.json")) - set(done_before) and ray_task_pids()  # noqa: E731
    output, status, killed = run_and_kill(manifest, out, [(flow_started, flow_workers), (tasks_started, busy)], ray_cluster.env)
    assert status == 0, output
    assert len(killed[0]) == os.cpu_count() and killed[1], killed
    total = len(entries) + len(BAD_REASONS)
    assert f"{len(entries)} ok, {len(BAD_REASONS)} failed of {total} videos" in output  # the summary counts them all
    assert "videos (" in output  # progress went on after the kills
    assert_every_good_video_exactly_once(out, manifest)
    results = {r["video_id"]: r for r in pq.read_table(out / "results.parquet").to_pylist()}
    for name, reason in BAD_REASONS.items():
        assert results[name]["reason"].startswith(reason)


# --- a real head and `ray job submit` --------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_head():
    """A head of its own for `ray job submit` with token authentication, as a real cluster has it (the session's
    shared cluster has it off: see conftest.ray_cluster); ended by its session id, as every process a test starts."""
    port, dashboard = free_port(), free_port()
    # Ray's token authentication: the head writes ~/.ray/auth_token and the job client reads it in token mode.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    command = [RAY, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--dashboard-host", "127.0.0.1"]
    command += ["--dashboard-port", str(dashboard), "--num-cpus", "2", "--disable-usage-stats"]
    command += ["--ray-client-server-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port())]
    sid = start_session(command, env)
    try:
        yield RAY, f"http://127.0.0.1:{dashboard}", env
    finally:
        kill_session(sid)
        wait_for(lambda: not session_pids(sid), timeout=30)


def test_ray_job_submit_on_a_real_head(tmp_path, ray_head):
    ray_bin, dashboard, env = ray_head
    manifest, entries = make_manifest(tmp_path, SMALL, bad=False)
    out = tmp_path / "out"
    submit_to_head = [ray_bin, "job", "submit", "--address", dashboard, "--working-dir", str(REPO), "--"]
    submit = subprocess.run(
        [*submit_to_head, "python", "-m", "jobs.preprocess", *flags(manifest=manifest, out=out, videos_per_shard=4), *FAST],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=REPO,
    )
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
    assert f"{len(entries)} ok, 0 failed" in submit.stdout  # the job's output streams back, progress included
    assert "Started a local Ray instance" not in submit.stdout  # it joined the head instead
    assert_every_good_video_exactly_once(out, manifest)


FAULTS = SyntheticConfig(classes=2, videos_per_class=3, width=64, height=48, frames=6, seed=5)


def test_injected_flow_faults_cost_no_video(tmp_path, ray_head):
    """Every flow worker runs out of memory on launches of more than 2 pairs and fails its second hand-back
    (tests/flow_faults.py, installed in the job's workers by Ray's worker_process_setup_hook): the workers
    lower their batch, stay compiled, and every video still lands exactly once."""
    ray_bin, dashboard, env = ray_head
    manifest, entries = make_manifest(tmp_path, FAULTS, bad=False)
    out = tmp_path / "out"
    hook = json.dumps({"worker_process_setup_hook": "tests.flow_faults.inject"})
    submit = [ray_bin, "job", "submit", "--address", dashboard, "--working-dir", str(REPO), "--runtime-env-json", hook, "--"]
    job = flags(manifest=manifest, out=out, videos_per_shard=2, modalities="rgb,tvl1,warp_tvl1", flow_batch=8)
    command = [*submit, "python", "-m", "jobs.preprocess", *job, *FAST]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"{len(entries)} ok, 0 failed" in result.stdout, result.stdout[-4000:]
    assert_every_good_video_exactly_once(out, manifest)
    workers = json.loads((out / "report.json").read_text())["flow_workers"]
    assert workers and all(w["batch_size"] == 2 and w["out_of_memory"] >= 1 and not w["compile_failed"] for w in workers)
    assert sum(w["failed_batches"] for w in workers) >= 1  # a hand-back failed and its requests were sent again


# --- the real clips --------------------------------------------------------------------------------------


def test_real_clips_come_out_right(tmp_path, ray_cluster):
    videos = SHARED_DATA / "videos"
    if not videos.is_dir():
        pytest.skip(f"reference clips absent ({videos})")
    expected = {
        "demo": (280, 256, 340),
        "test": (164, 240, 320),
        "part_0": (32, 256, 340),
        "Kop0sDqOn-c": (300, 256, 340),
        "flipping_a_pancake": (310, 240, 426),
        "S001C001P001R001A001_rgb": (103, 256, 455),
    }
    rows = [
        f"{videos / name}{ext},clip,test"
        for name, ext in [
            ("demo", ".mp4"),
            ("test", ".avi"),
            ("part_0", ".mp4"),
            ("Kop0sDqOn-c", ".mp4"),
            ("flipping_a_pancake", ".mkv"),
            ("S001C001P001R001A001_rgb", ".avi"),
        ]
    ]
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    made = run_job(
        "jobs.manifest", "csv", "--annotations", str(tmp_path / "list.csv"), "--videos", str(videos), "--out", str(tmp_path / "m.parquet")
    )
    assert made.returncode == 0, made.stderr
    out = tmp_path / "out"
    settings = dict(modalities="rgb", videos_per_shard=3, progress_seconds=5)
    result = run_job("jobs.preprocess", *flags(manifest=tmp_path / "m.parquet", out=out, **settings), env=ray_cluster.env)
    assert result.returncode == 0 and "6 ok, 0 failed" in result.stdout, result.stdout + result.stderr
    for members in read_shards(out):
        sample = decode_sample(members)
        frames, h, w = expected[sample.key]
        assert sample.meta.num_frames == frames and (sample.meta.height, sample.meta.width) == (h, w)
        assert sample.rgb_frame(frames - 1).shape == (h, w, 3)
    assert json.loads((out / "dataset.json").read_text())["counts"]["ok"] == 6


FILL_AND_GROW = """
set -u
mount -t tmpfs -o size=$SMALL_KB"k" tmpfs "$MOUNT"
"$PYTHON" -m jobs.preprocess "$@" > "$KEEP/first.out" 2> "$KEEP/first.err"; echo $? > "$KEEP/first.rc"
cp -r "$MOUNT/out" "$KEEP/after_first"
mount -o remount,size=64m "$MOUNT"
"$PYTHON" -m jobs.preprocess "$@" > "$KEEP/second.out" 2> "$KEEP/second.err"; echo $? > "$KEEP/second.rc"
cp -r "$MOUNT/out" "$KEEP/after_second"
umount "$MOUNT"
"""


def test_a_full_output_stops_the_run_and_the_same_command_completes_it_later(dataset, embedded_run, tmp_path):
    """--out on a tmpfs half the size of the dataset (the module's run measured it), in a mount namespace of its own:
    the run stops at the first write that does not fit, in one sentence naming the path and what the rest needs,
    exit 3, no video failed for it and no unreadable tar; remounted larger, the same command completes the dataset
    with every good video once (at da21438 it recorded good videos as failed and exited 0)."""
    root, manifest, entries = dataset
    done, _ = embedded_run
    size = sum(p.stat().st_size for p in done.rglob("*") if p.is_file())
    mount, keep = tmp_path / "mnt", tmp_path / "keep"
    mount.mkdir(), keep.mkdir()
    env = {**os.environ, "SMALL_KB": str(size // 2 // 1024), "MOUNT": str(mount), "KEEP": str(keep), "PYTHON": sys.executable}
    args = [*flags(manifest=manifest, out=mount / "out", **EMBEDDED), *FAST]
    script = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", FILL_AND_GROW, "fill", *args], cwd=REPO, env=env, capture_output=True
    )
    if not (keep / "first.rc").exists():
        pytest.skip(f"cannot mount a tmpfs in a mount namespace here (unshare --mount needs root): {script.stderr.decode()[-300:]}")
    stderr = (keep / "first.err").read_text()
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert (keep / "first.rc").read_text().strip() == "3" and "Traceback" not in stderr, stderr[-2000:]
    assert len(errors) == 1 and errors[0].startswith(f"error: no space is left on the device of {mount / 'out'}"), errors
    assert re.search(r"the other \d+ videos need about [\d.]+ .iB more .*, and [\d.]+ .iB is free there", errors[0]), errors[0]
    first = keep / "after_first"
    assert not (first / "results.parquet").exists()  # nothing recorded: no video failed for a full disk
    tars = whole_shards([p.name for p in (first / "shards").iterdir()]) if (first / "shards").exists() else []
    for tar in tars:  # every tar there is whole and readable
        assert read_shards_of(first / "shards" / tar)
    assert (keep / "second.rc").read_text().strip() == "0", (keep / "second.err").read_text()[-2000:]
    assert f"{len(entries)} ok, {len(BAD_REASONS)} failed" in (keep / "second.out").read_text()
    assert_every_good_video_exactly_once(keep / "after_second", manifest)
    assert len(tars) < len(list((keep / "after_second" / "shards").glob("*.tar")))  # the first run stopped part way
