"""The flow service's worker on the CPU: batches that span videos, compile once, one fallback, bounded memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from pipeline.flow import ALGORITHMS, compute_flow
from pipeline.flow_requests import FlowRequest, FlowSpec, LocalFlow
from pipeline.flow_service import FlowWorker
from pipeline.report import build_report, format_report
from pipeline.shards import ShardResult, VideoResult
from pipeline.video_flow import RETRIES
from schemas.sample import quantize_flow
from tests.conftest import REPO
from tests.helpers import moving_video

QUICK = (("warps", 1),)  # a fifth of the solver's work: batching and answering are what these tests check
SPEC = FlowSpec(params=QUICK, encoding="png16")  # 16-bit: a difference of 1/1600 px would show


def tvl1_of(prev: np.ndarray, nxt: np.ndarray, **params) -> np.ndarray:
    """compute_flow's TV-L1 with SPEC's parameters (and `params`): what a flow worker must give, bit for bit."""
    return compute_flow(prev, nxt, "tvl1", "opencv", "cpu", **{**dict(QUICK), **params})


def ask_concurrently(worker: FlowWorker, requests: list[FlowRequest]) -> list:
    """Each request from its own thread, all queued before the first launch (so launches mix them); the
    answers (FlowChunk or the exception raised) in order."""
    answers: list = [None] * len(requests)

    def ask(i):
        try:
            answers[i] = worker.compute(requests[i])
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            answers[i] = exc

    with worker._launch_lock:  # every request waits in the queue first
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(requests))]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while len(worker._queue) < len(requests) and time.monotonic() < deadline:
            time.sleep(0.01)
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a caller still waits"
    return answers


def test_batches_that_span_videos_give_each_request_its_own_flow():
    videos = [moving_video(n, seed=i) for i, n in enumerate((6, 12, 3, 9))]
    videos.append(moving_video(7, h=40, w=56, seed=4))  # another resolution: batched on its own
    rng = np.random.default_rng(0)
    points = [rng.integers(0, (64, 48), (5, 2)) for _ in range(5)]  # (x, y) pixels of the 5 pairs of video 0
    requests = [FlowRequest(v) for v in videos]
    requests[0] = FlowRequest(videos[0], points=points)
    targets = np.roll(videos[1][:4], 2, axis=2)  # pairs that are not consecutive frames (as warped flow sends)
    requests.append(FlowRequest(videos[1][:4], targets=targets, store_as="warp_tvl1"))
    worker = FlowWorker(SPEC, batch_size=8, device="cpu")
    answers = ask_concurrently(worker, requests)
    stats = worker.stats()
    same_size = sum(len(v) - 1 for v in videos[:4]) + 4  # 30 pairs: 4 launches of 8, the last padded
    assert stats["pairs"] == same_size + 6 and stats["batches"] == 4 + 1
    assert stats["padded_pairs"] == 4 * 8 - same_size + (8 - 6)
    assert stats["homography_seconds"] == 0.0 and stats["host_reads"] > 0
    for video, answer in zip(videos, answers):
        np.testing.assert_array_equal(answer.flows["tvl1"], quantize_flow(tvl1_of(video[:-1], video[1:]), "png16", SPEC.bound))
    np.testing.assert_array_equal(answers[-1].flows["warp_tvl1"], quantize_flow(tvl1_of(videos[1][:4], targets), "png16", SPEC.bound))
    float_flow = tvl1_of(videos[0][:-1], videos[0][1:])
    for i, (p, got) in enumerate(zip(points, answers[0].points)):
        np.testing.assert_array_equal(got, float_flow[i, p[:, 1], p[:, 0]])  # the float flow, bit for bit
    assert answers[1].points == [] and "warp_tvl1" not in answers[1].flows


def test_a_failed_launch_fails_its_callers_and_the_worker_goes_on(monkeypatch):
    worker = FlowWorker(FlowSpec(), batch_size=4, device="cpu")
    real = worker._solve
    monkeypatch.setattr(worker, "_solve", lambda *a: (_ for _ in ()).throw(RuntimeError("device lost")))
    with pytest.raises(RuntimeError, match="device lost"):
        worker.compute(FlowRequest(moving_video(3)))
    monkeypatch.setattr(worker, "_solve", real)
    assert worker.compute(FlowRequest(moving_video(3))).flows["tvl1"].shape == (2, 48, 64, 2)
    assert worker.stats()["failed_batches"] == 1
    with pytest.raises(ValueError, match="uint8 gray frames"):
        worker.compute(FlowRequest(np.zeros((1, 8, 8), np.uint8)))
    with pytest.raises(ValueError, match="store_as"):
        worker.compute(FlowRequest(moving_video(3), store_as="farneback"))


def test_an_error_while_handing_back_fails_only_that_launchs_callers(monkeypatch):
    """Four requests of 3 pairs in launches of 4: the hand-back of the second launch fails. Its callers get the
    error, the others their flow, and nobody waits forever."""
    worker = FlowWorker(SPEC, batch_size=4, device="cpu")
    hand_back, launches = worker._hand_back, []

    def second_fails(pieces, flow):
        launches.append([id(p.request) for p, _, _ in pieces])
        if len(launches) == 2:
            hand_back(pieces[:1], flow)  # part of it handed back first
            raise RuntimeError("hand-back failed")
        hand_back(pieces, flow)

    monkeypatch.setattr(worker, "_hand_back", second_fails)
    videos = [moving_video(4, seed=i) for i in range(4)]
    requests = [FlowRequest(v) for v in videos]
    answers = ask_concurrently(worker, requests)
    failed = {i for i, a in enumerate(answers) if isinstance(a, Exception)}
    assert failed and all(str(answers[i]) == "hand-back failed" for i in failed)
    in_second = {i for i, r in enumerate(requests) if id(r) in launches[1]}
    assert failed <= in_second
    for i in set(range(4)) - failed:
        np.testing.assert_array_equal(answers[i].flows["tvl1"], quantize_flow(tvl1_of(videos[i][:-1], videos[i][1:]), "png16", SPEC.bound))
    assert worker.stats()["failed_batches"] == 1


def test_an_error_while_taking_a_batch_fails_every_waiting_caller(monkeypatch):
    worker = FlowWorker(FlowSpec(), batch_size=4, device="cpu")
    monkeypatch.setattr(worker, "_take_batch", lambda: (_ for _ in ()).throw(RuntimeError("queue broken")))
    answers = ask_concurrently(worker, [FlowRequest(moving_video(3, seed=i)) for i in range(3)])
    assert [str(a) for a in answers] == ["queue broken"] * 3


def fake_compiled_kernels(monkeypatch, max_pairs: int):
    """A flow worker's kernels as if compiled, whose blocks run out of memory above `max_pairs` pairs."""
    import torch

    from pipeline.flow import tvl1

    kernels = tvl1.Kernels("cpu", compile=True, opencv_cpu_ops=True)

    def compile_(key):  # the eager function, behind a device with room for max_pairs pairs
        eager = kernels._eager(key)

        def call(*args):
            if args[0].shape[0] > max_pairs:  # a block of iterations: (u, ...), one row per pair
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return eager(*args)

        return call

    monkeypatch.setattr(kernels, "_compile", compile_)
    real = tvl1.kernels_for
    monkeypatch.setattr(tvl1, "kernels_for", lambda device, compile, opencv_ops: kernels if compile else real(device, compile, opencv_ops))
    return kernels


def test_out_of_memory_retries_in_halves_lowers_the_batch_and_stays_compiled(monkeypatch, caplog):
    kernels = fake_compiled_kernels(monkeypatch, max_pairs=3)
    worker = FlowWorker(FlowSpec(params=(("compile", True), *QUICK), encoding="png16"), batch_size=8, device="cpu")
    video = moving_video(9)
    with caplog.at_level("WARNING"):
        answer = worker.compute(FlowRequest(video))
    expected = quantize_flow(tvl1_of(video[:-1], video[1:], compile=False), "png16", SPEC.bound)
    np.testing.assert_array_equal(answer.flows["tvl1"], expected)  # 8 -> 4 -> 2: solved in quarters
    stats = worker.stats()
    assert worker.batch_size == 2 and stats["out_of_memory"] >= 2 and stats["failed_batches"] == 0
    assert kernels.compile and not stats["compile_failed"]  # still compiled: only compile errors turn it eager
    assert [r.getMessage() for r in caplog.records if "out of memory" in r.getMessage()] == [
        "flow worker on cpu: out of memory solving 8 pairs of 64x48; launches of 4 pairs from now on",
        "flow worker on cpu: out of memory solving 4 pairs of 64x48; launches of 2 pairs from now on",
    ]
    np.testing.assert_array_equal(worker.compute(FlowRequest(video)).flows["tvl1"], expected)  # launches of 2 now


def test_out_of_memory_with_one_pair_fails_its_callers(monkeypatch):
    fake_compiled_kernels(monkeypatch, max_pairs=0)
    worker = FlowWorker(FlowSpec(params=(("compile", True),)), batch_size=2, device="cpu")
    import torch

    with pytest.raises(torch.OutOfMemoryError):
        worker.compute(FlowRequest(moving_video(3)))


def test_a_device_that_stops_answering_ends_a_ray_workers_process(monkeypatch):
    """A sticky CUDA error (every later call fails too): the worker process exits, so Ray restarts it and
    re-sends the requests; outside Ray the launch's callers just get the error."""
    from pipeline import flow_service

    exits = []
    monkeypatch.setattr(flow_service.os, "_exit", exits.append)
    monkeypatch.setattr(flow_service, "_device_answers", lambda device: False)
    for exit_on_loss, expected in ((False, []), (True, [1])):
        worker = FlowWorker(FlowSpec(), batch_size=2, device="cpu", exit_on_device_loss=exit_on_loss)
        worker.device = flow_service.torch.device("cuda")  # the checks of a CUDA worker; nothing runs on it
        monkeypatch.setattr(worker, "_batch_frames", lambda pieces: (_ for _ in ()).throw(RuntimeError("CUDA error: illegal address")))
        with pytest.raises(RuntimeError, match="illegal address"):
            worker.compute(FlowRequest(moving_video(3)))
        assert exits == expected


def test_local_flow_answers_at_once():
    flow = LocalFlow(FlowWorker(FlowSpec(), device="cpu"))
    assert flow.batch_size == 8 and flow.in_flight == 1
    assert flow.submit(FlowRequest(moving_video(4)))().flows["tvl1"].shape == (3, 48, 64, 2)


# --- compiling (each in a fresh process: Dynamo's counters and caches are per process) ---------------------

COMPILE_SCRIPT = """
import json, logging, sys
import numpy as np
sys.path.insert(0, {repo!r})
from pipeline.flow_requests import FlowRequest, FlowSpec
from pipeline.flow_service import FlowWorker
from tests.helpers import moving_video
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
params = (("compile", {compile}), ("opencv_cpu_ops", False))  # iteration, median and warp all compiled
worker = FlowWorker(FlowSpec(params=params, encoding="float16"), batch_size=4, device="cpu", threads=1)
out, compiles = [], []
for frames, h, w in {videos}:
    out.append(worker.compute(FlowRequest(moving_video(frames, h, w, seed=frames))).flows["tvl1"].astype(np.float32))
    compiles.append(worker.stats()["compiles"])
np.save(sys.argv[1], np.concatenate([o.ravel() for o in out]))
print(json.dumps({{"compiles": compiles, "compile_seconds": worker.stats()["compile_seconds"]}}))
"""


def start_worker(tmp_path, compile: bool, videos, env: dict | None = None):
    """A fresh process running COMPILE_SCRIPT; `finish_workers` waits for it. (Two such processes run side by side.)"""
    script = COMPILE_SCRIPT.format(repo=str(REPO), compile=compile, videos=videos)
    flows = tmp_path / f"flows-{compile}.npy"
    pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.Popen([sys.executable, "-c", script, str(flows)], cwd=REPO, env={**os.environ, **(env or {})}, **pipes), flows


def finish(processes: list[subprocess.Popen], timeout: float) -> list[tuple[str, str]]:
    """(stdout, stderr) of processes started side by side, each asserted to have exited 0; any still running when
    one fails or times out is killed."""
    try:
        outputs = [process.communicate(timeout=timeout) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
    return outputs


def finish_workers(*started) -> list[tuple[dict, np.ndarray, str]]:
    """The report, flows and log of each `start_worker` process."""
    outputs = finish([process for process, _ in started], timeout=900)
    return [(json.loads(out.strip().splitlines()[-1]), np.load(flows), err) for (out, err), (_, flows) in zip(outputs, started)]


def run_worker(tmp_path, compile: bool, videos, env: dict | None = None) -> tuple[dict, np.ndarray, str]:
    return finish_workers(start_worker(tmp_path, compile, videos, env))[0]


@pytest.mark.slow
def test_varied_lengths_and_resolutions_compile_each_kernel_once(tmp_path):
    # 1, 2, 5 and 9 pairs (launches of 4, the last padded), then another resolution
    videos = [(2, 48, 64), (3, 48, 64), (6, 48, 64), (10, 48, 64), (4, 40, 72), (7, 40, 72)]
    report, _, log = run_worker(tmp_path, True, videos)
    assert "torch.compile failed" not in log and "Warning" not in log, log[-3000:]
    kernels = 3  # the block of iterations with and without the median filter first, the warp
    assert report["compiles"][0] <= kernels, report
    assert report["compiles"][-1] == report["compiles"][0], f"recompiled for a new length or resolution: {report}"
    assert report["compile_seconds"] > 0


@pytest.mark.slow
def test_a_compile_failure_warns_once_and_gives_the_eager_flow(tmp_path):
    videos = [(3, 48, 64), (5, 48, 64)]
    no_compiler = {"CXX": "/bin/false", "CC": "/bin/false", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "empty-cache")}
    failing, plain = start_worker(tmp_path, True, videos, env=no_compiler), start_worker(tmp_path, False, videos)
    (_, flows, log), (_, eager, _) = finish_workers(failing, plain)
    assert log.count("torch.compile failed") == 1, log[-3000:]
    np.testing.assert_array_equal(flows, eager)


# --- memory ----------------------------------------------------------------------------------------------

MEMORY_SCRIPT = """
import resource, sys
sys.path.insert(0, {repo!r})
from pipeline.decode import DecodeConfig
from pipeline.shards import ProcessConfig, process_video
from schemas.manifest import VideoRecord
cheap = (("nscales", 1), ("warps", 1), ("inner_iterations", 2), ("outer_iterations", 1), ("median_filtering", 1))
cfg = ProcessConfig(modalities=("rgb", "tvl1"), decode=DecodeConfig(short_side=None), flow_params=cheap)
record = VideoRecord("v", sys.argv[1], 0, "c", "train", "x")
sample = process_video(record, cfg)
assert sample.meta.num_frames == int(sys.argv[2]) and len(sample.flow["tvl1"]) == int(sys.argv[2]) - 1
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def write_long_video(path, frames: int, h: int = 360, w: int = 480) -> None:
    """A pan across a smooth random texture (JPEG-compressible, like real frames)."""
    import av
    import cv2

    noise = np.random.default_rng(0).integers(0, 255, (h, w + frames), dtype=np.uint8)
    texture = cv2.normalize(cv2.GaussianBlur(noise, (0, 0), 3), None, 0, 255, cv2.NORM_MINMAX)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for t in range(frames):
            frame = av.VideoFrame.from_ndarray(np.repeat(texture[:, t : t + w, None], 3, axis=2), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


@pytest.mark.slow
def test_a_video_twice_as_long_raises_peak_memory_by_less_than_15_percent(tmp_path):
    running = {}
    script = MEMORY_SCRIPT.format(repo=str(REPO))
    for frames in (500, 1000):  # both processes side by side: a process's peak is its own
        path = tmp_path / f"long{frames}.mp4"
        write_long_video(path, frames)
        command = [sys.executable, "-c", script, str(path), str(frames)]
        running[frames] = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    outputs = finish(list(running.values()), timeout=600)
    peaks = {frames: int(out.strip().splitlines()[-1]) / 1024 for frames, (out, _) in zip(running, outputs)}  # MB
    # Holding every decoded frame (RGB and gray, as flowshard 0.1 did) would add 500 * 480 * 360 * 4 bytes = 345 MB,
    # over a quarter of such a worker's ~1.2 GB peak; chunks and encoded bytes add a few percent (1.04-1.07 here).
    assert peaks[1000] < 1.15 * peaks[500], peaks


# --- the run report --------------------------------------------------------------------------------------


STAGES = {"decode": 1.0, "encode": 0.5, "flow_wait": 4.0, "homography": 2.5, "write": 0.1}


def test_report_sums_stages_and_rates_per_node_and_worker():
    videos = [
        VideoResult("a", "train", "s0", "ok", "", 2.0, 10, 100),
        VideoResult("b", "train", "s0", "failed", "cut off: decoded 3 of 9", 1.0),
    ]
    results = [
        ShardResult("s0", "train", "s0.tar", 1, 100, "", 3.0, videos, STAGES, "n1"),
        ShardResult("s1", "train", None, 0, 0, "", 1.0, [VideoResult("c", "train", "s1", "failed", "file not found", 0.0)], {}, "n2"),
    ]
    worker = {
        "node": "n1",
        "device": "cpu",
        "pid": 1,
        "pairs": 12,
        "batches": 2,
        "batch_size": 8,
        "padded_pairs": 4,
        "seconds": 10.0,
        "flow_seconds": 6.0,
        "compiles": 2,
        "compile_seconds": 1.0,
        "compile_failed": False,
        "failed_batches": 0,
        "out_of_memory": 1,
        "host_reads": 150,
        "iterations_per_warp": {"mean": 120.0, "p99": 300, "max": 300, "count": 50},
        "homography_seconds": 0.0,
    }
    report = build_report(results, [worker], seconds=4.0, node_names={"n1": "10.0.0.1", "n2": "10.0.0.2"})
    assert report["time"] == {
        "decode": 1.0,
        "encode": 0.5,
        "write": 0.1,
        "flow": 5.0,
        "compile": 1.0,
        "waiting_for_flow": 4.0,
        "flow_workers_idle": 4.0,
        "homography_in_shard_tasks": 2.5,
        "homography_in_flow_workers": 0.0,
    }
    assert report["nodes"]["10.0.0.1"]["videos"] == 2 and report["nodes"]["10.0.0.1"]["pairs_per_s"] == 3.0
    assert report["nodes"]["10.0.0.2"]["videos_per_s"] == 0.25 and report["pairs_per_s"] == 3.0
    assert report["flow_workers"][0]["busy"] == 0.6 and report["flow_workers"][0]["host_reads_per_launch"] == 75
    assert report["failures"] == {"cut off": 1, "file not found": 1}
    text = "\n".join(format_report(report))
    assert "node 10.0.0.1: 2 videos" in text and "flow worker cpu on 10.0.0.1: 12 pairs (3.0/s)" in text
    assert "homography in shard tasks 2s" in text and "75 host reads per launch, 1 out-of-memory retries" in text


@pytest.mark.parametrize("passes", [False, True])
def test_a_failed_flow_launch_fails_only_the_videos_in_it_unless_it_passes(tmp_path, monkeypatch, passes):
    """The second video's launch fails: once (a fault that passes: the request is sent again and the video is
    stored) or every time (after its retries, that video alone fails with the launch's last line)."""
    from pipeline.decode import DecodeConfig
    from pipeline.plan import ShardSpec
    from pipeline.shards import ProcessConfig, process_shard
    from pipeline.synthetic import SyntheticConfig, generate_dataset
    from schemas.manifest import VideoRecord
    from storage import Location

    entries = generate_dataset(SyntheticConfig(classes=2, videos_per_class=2, width=64, height=48, frames=5, seed=1), tmp_path / "v")
    records = tuple(VideoRecord(f"v{i}", str(tmp_path / "v" / e.relpath), 0, "c", "train", "x") for i, e in enumerate(entries[:2]))
    worker = FlowWorker(FlowSpec(), device="cpu")
    solve, calls = worker._solve, []

    def second_fails(*args):
        calls.append(1)
        if len(calls) == 2 or (len(calls) > 2 and not passes):
            raise RuntimeError("CUDA error: unspecified launch failure\nTried to allocate 2 GiB")
        return solve(*args)

    monkeypatch.setattr(worker, "_solve", second_fails)
    cfg = ProcessConfig(modalities=("rgb", "tvl1"), decode=DecodeConfig(short_side=None))
    result = process_shard(ShardSpec("train-000000", "train", records), cfg, Location(str(tmp_path / "out")), flow=LocalFlow(worker))
    if passes:
        assert [v.status for v in result.videos] == ["ok", "ok"] and result.samples == 2 and len(calls) == 3
    else:
        assert [v.status for v in result.videos] == ["ok", "failed"] and result.samples == 1 and len(calls) == 2 + RETRIES
        assert result.videos[1].reason == "flow failed: Tried to allocate 2 GiB"


@pytest.mark.slow
def test_the_gpu_benchmark_runs_on_the_cpu_as_a_smoke_test(tmp_path):
    from tests.conftest import SHARED_DATA

    if not (SHARED_DATA / "videos").is_dir() or not (SHARED_DATA / "middlebury").is_dir():
        pytest.skip(f"reference clips or Middlebury absent under {SHARED_DATA}")
    figures = tmp_path / "figures.json"
    result = subprocess.run(
        [sys.executable, "bench/flow_service.py", "--smoke", "--json", str(figures)], cwd=REPO, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    figures = json.loads(figures.read_text())
    assert [(r["frames"], r["check_every"]) for r in figures["host"]] == [("2x2", 1), ("2x2", 10), ("24x24", 1), ("24x24", 10)]
    assert all(r["us_per_iteration"] > 0 for r in figures["host"])
    every, blocks = figures["reads"]  # a check every iteration, and every 10: one blocking read per check, no other
    assert every["reads"] == every["checks"] == every["iterations"] and blocks["reads"] == blocks["checks"] < every["reads"]
    assert set(blocks["by_op"]) == {"aten._local_scalar_dense.default"} and blocks["compactions"] > 0
    tails = figures["tails"]
    assert tails["warps"] == 25 and 0 < tails["iterations_mean"] <= tails["iterations_p99"] <= tails["iterations_max"] <= 300
    assert {(r["algorithm"], r["batch"]) for r in figures["solver"]} == {(a, b) for a in ALGORITHMS for b in (2, 4)}
    assert all(r["pairs_per_s"] > 0 and r["peak_mb"] > 0 and r["host_reads_per_launch"] > 0 for r in figures["solver"])
    (accuracy,) = figures["accuracy"]
    assert accuracy["ratio"] < 1.05 and accuracy["device_vs_cpu"] < 0.05
    (run,) = figures["end_to_end"]
    assert run["pairs"] == 2 * 5 and run["vs_warm_compute_flow"] > 0 and "flow worker" in run["report"]
    assert run["homography"] == {"homography_in_shard_tasks": 0.0, "homography_in_flow_workers": 0.0}  # no warped flow asked
    assert "torch.compile failed" not in result.stdout + result.stderr
