"""Several Ray nodes without a shared disk, on this machine: a head, and a second node in its own mount
namespace whose view of one folder is a private tmpfs. A local --out or local videos some node cannot see
are refused in one sentence; a shared one is verified and used; a run to S3 that loses the second node (every
process killed) still ends with exit 0 and every video exactly once."""

from __future__ import annotations

import csv
import io
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import webdataset as wds

from pipeline.synthetic import SyntheticConfig, class_names, generate_dataset
from storage import Location, join
from tests.conftest import RAY, REPO, free_port, incomplete_uploads, kill_session, run_job, session_pids, start_session, wait_for
from tests.helpers import QUICK_FLOW, shard_samples, whole_shards

pytestmark = [pytest.mark.slow, pytest.mark.ray]

TINY = SyntheticConfig(classes=2, videos_per_class=3, width=64, height=48, frames=6, seed=11)
LONGER = SyntheticConfig(classes=3, videos_per_class=4, width=96, height=72, frames=16, seed=12)
FAST = ["--progress-seconds", "2", "--modalities", "rgb,tvl1", *QUICK_FLOW]


@dataclass
class TwoNodes:
    address: str  # the head's GCS address, for --address
    private: Path  # a folder the second node sees as an empty tmpfs
    shared: Path  # a folder both nodes see
    head_sid: int
    worker_sid: int
    env: dict
    temp: str  # the nodes' Ray temp folders (short: Ray's socket paths must fit 107 bytes)


def alive_nodes(address: str, env: dict) -> int:
    status = subprocess.run([RAY, "status", "--address", address], capture_output=True, text=True, env=env, timeout=60)
    active = status.stdout.split("Active:", 1)[-1].split("Pending:", 1)[0]
    return sum(" node_" in line for line in active.splitlines())


def start_two_nodes(root: Path, extra_env: dict | None = None) -> TwoNodes:
    env = {**os.environ, **(extra_env or {}), "RAY_AUTH_MODE": "disabled", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    # A lost node is noticed in ~3 s instead of ~15 s (the GCS's health checks: every 3 s, 5 failures by default);
    # what happens after the loss is the same, only sooner.
    env |= {"RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3"}
    env.pop("RAY_ADDRESS", None)
    private, shared = root / "private", root / "shared"
    private.mkdir(parents=True)
    shared.mkdir(parents=True)
    port, temp = free_port(), tempfile.mkdtemp(prefix="fsr-", dir="/tmp")
    head = start_session(
        [
            RAY,
            "start",
            "--head",
            "--node-ip-address",
            "127.0.0.1",
            "--port",
            str(port),
            "--num-cpus",
            "1",
            "--temp-dir",
            f"{temp}/h",
            "--include-dashboard",
            "false",
            "--disable-usage-stats",
            "--dashboard-agent-listen-port",
            str(free_port()),
            "--ray-client-server-port",
            str(free_port()),
        ],
        env,
    )
    address = f"127.0.0.1:{port}"
    nodes = TwoNodes(address, private, shared, head, 0, env, temp)
    try:
        nodes.worker_sid = start_second_node(nodes)
    except BaseException:
        kill_session(head)
        shutil.rmtree(temp, ignore_errors=True)
        raise
    if not wait_for(lambda: alive_nodes(address, env) == 2, timeout=60, step=1):
        stop_two_nodes(nodes)
        pytest.fail("the second Ray node did not join")
    return nodes


def start_second_node(nodes: TwoNodes) -> int:
    """Start the second node (or its replacement, after a loss) in its own mount namespace; returns its session id."""
    temp = tempfile.mkdtemp(prefix="w", dir=nodes.temp)  # a fresh one per node: a replacement starts clean
    second = (
        f"mount -t tmpfs flowshard-private {nodes.private} && exec {RAY} start --address {nodes.address} --node-ip-address "
        f"127.0.0.1 --num-cpus 1 --temp-dir {temp} --disable-usage-stats --dashboard-agent-listen-port {free_port()}"
    )
    return start_session(["unshare", "--mount", "--propagation", "private", "sh", "-c", second], nodes.env)


def stop_two_nodes(nodes: TwoNodes) -> None:
    kill_session(nodes.worker_sid)
    kill_session(nodes.head_sid)
    assert wait_for(lambda: not session_pids(nodes.worker_sid) and not session_pids(nodes.head_sid), timeout=30)
    shutil.rmtree(nodes.temp, ignore_errors=True)


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory, s3_server):
    """One two-node cluster for the module (a node costs most of a minute here), its nodes able to reach the test
    S3 server. The last test kills and replaces the second node; `worker_sid` follows the replacement."""
    nodes = start_two_nodes(tmp_path_factory.mktemp("cluster"), extra_env=s3_server.env)
    try:
        yield nodes
    finally:
        stop_two_nodes(nodes)


def csv_manifest(videos: Path, manifest: Path, cfg: SyntheticConfig) -> list:
    entries = generate_dataset(cfg, videos)
    names = class_names(cfg.classes)
    (videos / "list.csv").write_text("".join(f"{videos / e.relpath},{names[e.label]},{e.split}\n" for e in entries))
    made = run_job("jobs.manifest", "csv", "--annotations", str(videos / "list.csv"), "--videos", str(videos), "--out", str(manifest))
    assert made.returncode == 0, made.stderr
    return entries


def preprocess(nodes: TwoNodes, manifest: Path | str, out: Path | str, *extra: str) -> subprocess.CompletedProcess:
    return run_job(
        "jobs.preprocess", "--manifest", str(manifest), "--out", str(out), "--address", nodes.address, *FAST, *extra, env=nodes.env
    )


def assert_one_sentence(result: subprocess.CompletedProcess, *phrases: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    for phrase in phrases:
        assert phrase in lines[-1], lines[-1]


def test_a_local_out_the_second_node_cannot_see_is_refused(two_nodes):
    manifest = two_nodes.shared / "m1.parquet"
    csv_manifest(two_nodes.shared / "videos1", manifest, TINY)
    result = preprocess(two_nodes, manifest, two_nodes.private / "out")
    assert_one_sentence(result, "is a local folder that node", "cannot see", "object storage (--out s3://", "shared file system")
    assert list(two_nodes.private.iterdir()) == [], "nothing written for a refused run, not even the probe"


def test_local_videos_the_second_node_cannot_see_are_refused(two_nodes):
    manifest = two_nodes.shared / "m2.parquet"
    csv_manifest(two_nodes.private / "videos", manifest, TINY)
    result = preprocess(two_nodes, manifest, two_nodes.shared / "out2")
    assert_one_sentence(result, f"videos such as {two_nodes.private / 'videos'}", "are not visible on node", "object storage")
    assert not (two_nodes.shared / "out2").exists()


def test_a_shared_local_out_is_verified_and_used_by_both_nodes(two_nodes):
    manifest = two_nodes.shared / "m3.parquet"
    entries = csv_manifest(two_nodes.shared / "videos3", manifest, TINY)
    out = two_nodes.shared / "out3"
    result = preprocess(two_nodes, manifest, out, "--videos-per-shard", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(entries)} ok, 0 failed" in result.stdout
    keys = [m["__key__"] for m in wds.WebDataset(sorted(str(p) for p in (out / "shards").glob("*.tar")), shardshuffle=False)]
    assert Counter(keys) == Counter(e.relpath.rsplit("/", 1)[-1].removesuffix(".mp4") for e in entries)


def test_preprocessing_and_training_on_s3_survive_losing_the_second_node(two_nodes, bucket):
    """A preprocessing run to S3 loses the second node mid-upload; then DDP training with a rank on each node,
    from those shards to an S3 run folder, loses its (replacement) second node after the first checkpoint and
    goes on from that checkpoint once a new node joins. Last in the module: it replaces the second node."""
    nodes = two_nodes
    manifest = nodes.shared / "m.parquet"
    entries = csv_manifest(nodes.shared / "videos", manifest, LONGER)
    out = f"{bucket}/out"
    job = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jobs.preprocess",
            "--manifest",
            str(manifest),
            "--out",
            out,
            "--address",
            nodes.address,
            "--videos-per-shard",
            "2",
            "--progress-seconds",
            "1",
            "--modalities",
            "rgb,tvl1",
        ],
        cwd=REPO,
        env=nodes.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        busy = wait_for(lambda: [p for p in session_pids(nodes.worker_sid) if "ray::_run_shard" in process_args(p)], timeout=180)
        assert busy, "no shard task ran on the second node"
        time.sleep(1.0)  # into its videos, mid-upload
        kill_session(nodes.worker_sid)  # the node is gone: raylet, workers, everything
        output, _ = job.communicate(timeout=600)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    assert job.returncode == 0, output
    assert f"{len(entries)} ok, 0 failed" in output, output
    shards = whole_shards(Location(out).list("shards"))
    keys = [m["__key__"] for m in shard_samples([join(out, "shards", n) for n in shards])]
    assert Counter(keys) == Counter(e.relpath.rsplit("/", 1)[-1].removesuffix(".mp4") for e in entries)
    assert incomplete_uploads(bucket) == [], "the lost attempt's upload was aborted"
    train_and_lose_the_second_node(nodes, out, join(bucket, "runs", "flow"), sum(e.split == "train" for e in entries))


def replace_second_node(nodes: TwoNodes) -> None:
    """A new second node after the old one's loss (the cluster has two live nodes again)."""
    nodes.worker_sid = start_second_node(nodes)
    assert wait_for(lambda: alive_nodes(nodes.address, nodes.env) == 2, timeout=120, step=1), "the replacement node did not join"


def train_and_lose_the_second_node(nodes: TwoNodes, data: str, run: str, train_videos: int) -> None:
    replace_second_node(nodes)
    epochs, batch = 3, 2
    command = [sys.executable, "-m", "jobs.train", "--data", data, "--model", "tsn_flow", "--out", run, "--address", nodes.address]
    command += ["--workers", "2", "--epochs", str(epochs), "--batch-size", str(batch), "--input-size", "32", "--loader-workers", "0"]
    command += ["--print-freq", "0", "--no-flip", "--rank-wait", "180", "--eval-every", "2", "--eval-segments", "2"]
    pipe = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    job = subprocess.Popen(command, cwd=REPO, env=nodes.env, start_new_session=True, **pipe)
    try:
        runs = Location(run)
        assert wait_for(lambda: runs.is_file("checkpoint.pt") or job.poll() is not None, timeout=300), "no checkpoint"
        assert job.poll() is None, job.communicate()[0]
        ranks = [p for p in session_pids(nodes.worker_sid) if "RayTrainWorker" in process_args(p)]
        assert ranks, "no rank ran on the second node"  # one CPU per node: the two ranks must be on different nodes
        kill_session(nodes.worker_sid)
        replace_second_node(nodes)
        output, _ = job.communicate(timeout=600)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    assert job.returncode == 0, output
    assert "resuming" in output, "the ranks did not restart from the checkpoint"
    assert re.search(r"2 ranks \(gloo\): rank 0 on \S+ pid \d+ cpu, rank 1 on \S+ pid \d+ cpu", output), output
    # progress printed once, by rank 0, and none of Ray Train's INFO lines
    assert output.count(f"epoch {epochs - 1}: loss") == 1 and "Reporting training result" not in output, output
    state = torch.load(io.BytesIO(runs.read_bytes("checkpoint.pt")), weights_only=True)  # as flowshard loads it
    assert state["epoch"] == epochs - 1  # every epoch ran (0-based)
    steps = math.ceil(math.ceil(train_videos / 2) / batch)  # per epoch, each rank its half
    rows = list(csv.DictReader(io.StringIO(runs.read_text("metrics.csv"))))
    trained = [(int(r["epoch"]), int(r["step"])) for r in rows if r["loss"]]
    assert trained == [(s // steps, s) for s in range(epochs * steps)]  # each step once, none lost or repeated
    assert [int(r["epoch"]) for r in rows if r["val_top1"]] == [1, 2]  # every 2nd and the last, both ranks' shards gathered
    assert runs.is_file("best.pt") and runs.is_file("curves.png")


def process_args(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
