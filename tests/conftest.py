"""Shared fixtures: where the reference data lives, small generated inputs, and a real S3 server."""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.helpers import touch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FLOWSHARD_SHARED_DATA", REPO.parent / "shared" / "data"))


# Fuzzing profiles (tests/pipeline/test_annotation_fuzz.py): `make test` runs the same examples every time, a few
# seconds per parser, so CI never fails on a new random draw; `make fuzz` (--hypothesis-profile long) draws thousands.
_FUZZ = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow, HealthCheck.filter_too_much], "database": None}
settings.register_profile("default", max_examples=100, derandomize=True, **_FUZZ)
settings.register_profile("long", max_examples=3000, **_FUZZ)
settings.load_profile("default")


SERVER_FIXTURES = {"s3_server", "bucket"}  # a test that needs one starts a server: `slow`, outside `make test-quick`


def pytest_collection_modifyitems(items):
    """A test that uses the S3 server is marked `slow` (and `server`), as Ray's and training runs' are by hand, so
    that `-m "not slow"` (`make test-quick`) is the loop of pure functions, schemas, parsers, decoding and flow."""
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
            item.add_marker(pytest.mark.server)


@pytest.fixture(autouse=True)
def _threads_as_they_were():
    """Each test leaves torch's and OpenCV's thread counts as it found them: an in-process flow worker sets both to
    1 (`FlowWorker(threads=1)`), and a training run in the same process after it adds up its floats in another
    order and learns a little differently (test_learning's I3D run reached 75% in the whole suite, against the 80%
    asked, and passed alone)."""
    import cv2
    import torch

    torch_threads, cv2_threads = torch.get_num_threads(), cv2.getNumThreads()
    yield
    torch.set_num_threads(torch_threads)
    cv2.setNumThreads(cv2_threads)


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, skipping the test (with the reason) where it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"reference data {path} is absent (it lives in ../shared/data beside the repository)")
    return path


def run_job(module: str, *args: str, timeout: float = 600, env: dict | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run `python -m <module> args...` from the repository root (or another checkout), capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def ray_task_pids(name: str = "ray::_run_shard") -> list[int]:
    """The PIDs of the processes whose command line names `name` (Ray sets a task's or actor's name there)."""
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines()[1:] if name in line and "ps -eo" not in line]


def run_together(module: str, *args: str, times: int = 2, env: dict | None = None) -> list[subprocess.CompletedProcess]:
    """`python -m <module> args...` started `times` times at once (as a job submitted twice), each run to its end."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(times) as pool:
        return list(pool.map(lambda _: run_job(module, *args, env=env), range(times)))


def one_ran_one_refused(runs: list[subprocess.CompletedProcess]) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    """(the run that did the work, the one refused because the other held the output), checking the refusal: exit 2
    and one line naming the run that holds it."""
    refused = [r for r in runs if r.returncode == 2]
    assert len(refused) == 1, [(r.returncode, r.stderr[-500:]) for r in runs]
    winner = next(r for r in runs if r is not refused[0])
    lines = refused[0].stderr.strip().splitlines()
    assert len(lines) == 1 and re.match(r"error: .* is being written by another run \(host .+, pid \d+, since 20", lines[0]), lines
    return winner, refused[0]


def start_job(*args: str, env: dict | None = None) -> subprocess.Popen:
    """`python -m jobs.preprocess args...` started in a session of its own (killing its group kills its embedded Ray)."""
    return subprocess.Popen(
        [sys.executable, "-m", "jobs.preprocess", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )


def run_inline(module: str, *args: str) -> subprocess.CompletedProcess:
    """`python -m <module> args...` run in this process, through the job's `cli` as `-m` runs it: the same code
    without a new interpreter's 5-10 s of imports. Only for jobs that stay in one process (no Ray)."""
    from jobs.common import cli

    job = importlib.import_module(module)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = cli(job.get_args_parser, job.config_from_args, job.main, list(args))
        except SystemExit as exit:  # argparse's errors
            status = exit.code
    return subprocess.CompletedProcess([module, *args], status, out.getvalue(), err.getvalue())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, step: float = 0.2):
    """The first truthy value of `predicate()` within `timeout` seconds, else None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return None


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class S3Server:
    endpoint: str
    env: dict  # what this process and the jobs it starts need to reach it
    pid: int


def start_moto(extra_env: dict | None = None) -> tuple[subprocess.Popen, int]:
    """moto's standalone S3 server on 127.0.0.1 and a free port (ended by the caller, by PID)."""
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, **(extra_env or {})},
    )
    if not wait_for(lambda: _listening(port), timeout=60):
        stop_process(server)
        pytest.fail("moto_server did not start within 60 s")
    return server, port


def stop_process(process: subprocess.Popen) -> None:
    """End a process we started, and its process group, by PID."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def s3_env(port: int) -> dict:
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        # without these, boto3/pyarrow send checksums moto stores with the data (corrupt uploads)
        "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
        "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 server (moto) on 127.0.0.1 for the session, with this process's environment pointing at it."""
    server, port = start_moto()
    env = s3_env(port)
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            yield S3Server(env["AWS_ENDPOINT_URL"], env, server.pid)
    finally:
        stop_process(server)


RAY = str(Path(sys.executable).parent / "ray")


def start_session(command: list[str], env: dict) -> int:
    """Run a command that starts daemons (`ray start ...`) as the leader of a new session; the session's id (its PID),
    by which `kill_session` ends every process it left."""
    process = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output, _ = process.communicate(timeout=180)
    assert process.returncode == 0, output
    return process.pid


def session_pids(sid: int) -> list[int]:
    """Every process of a session (a Ray node: its raylet, workers, ...)."""
    out = subprocess.run(["ps", "-eo", "pid=,sid=,args="], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines() if int(line.split()[1]) == sid]


def kill_session(sid: int) -> None:
    for pid in session_pids(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@dataclass
class RayCluster:
    """A Ray head on 127.0.0.1 shared by the session's tests that only run jobs on a cluster (each job joins it: no
    Ray to start and stop, 3-4 s a job here). Tests that kill a node, need a mount namespace, run another checkout's
    code, test the embedded Ray or `ray job submit` with token authentication start their own."""

    address: str  # the GCS address, for --address or ray.init
    env: dict  # what a job needs: RAY_ADDRESS, the S3 server
    sid: int


@pytest.fixture(scope="session")
def ray_cluster(s3_server):
    """The session's shared Ray head (2 CPUs, a dashboard for Ray Train's controller), its workers able to reach the
    test S3 server, ended by its session id. Authentication off (RAY_AUTH_MODE=disabled), as the two-node cluster
    of test_cluster.py has it: a client in this process reads its mode when it imports ray, before any test runs."""
    port = free_port()
    env = {**os.environ, **s3_server.env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    command = [RAY, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "2"]
    command += ["--dashboard-host", "127.0.0.1", "--dashboard-port", str(free_port()), "--disable-usage-stats"]
    command += ["--ray-client-server-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port())]
    sid = start_session(command, env)
    address = f"127.0.0.1:{port}"
    cluster = RayCluster(address, {**env, "RAY_ADDRESS": address}, sid)
    try:
        yield cluster
    finally:
        kill_session(sid)
        wait_for(lambda: not session_pids(sid), timeout=30)


@pytest.fixture
def bucket(s3_server) -> str:
    """A new, empty bucket on the test S3 server, as `s3://name`."""
    import boto3

    name = f"flowshard-{uuid.uuid4().hex[:10]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return f"s3://{name}"


def incomplete_uploads(bucket_uri: str) -> list[str]:
    """Keys of the incomplete multipart uploads in a bucket."""
    import boto3

    listing = boto3.client("s3").list_multipart_uploads(Bucket=bucket_uri.removeprefix("s3://"))
    return [u["Key"] for u in listing.get("Uploads", [])]


@pytest.fixture
def ucf(tmp_path):
    """A small UCF101 tree: classInd, split 1 lists and placeholder videos (one test video missing)."""
    ann, videos = tmp_path / "splits", tmp_path / "UCF-101"
    ann.mkdir()
    (ann / "classInd.txt").write_bytes(b"1 ApplyEyeMakeup\r\n2 HandstandPushups\r\n3 YoYo\r\n")
    (ann / "trainlist01.txt").write_bytes(
        b"ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\n"
        b"HandstandPushups/v_HandStandPushups_g08_c01.avi 2\r\n"
        b"YoYo/v_YoYo_g09_c01.avi 3\r\n"
    )
    (ann / "testlist01.txt").write_bytes(b"ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\r\nYoYo/v_YoYo_g01_c01.avi\r\n")
    for rel in [
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi",
        "HandstandPushups/v_HandStandPushups_g08_c01.avi",
        "YoYo/v_YoYo_g09_c01.avi",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi",
    ]:
        touch(videos / rel)
    return ann, videos
