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

from pipeline.flow import compute_flow
from pipeline.flow_service import FlowSpec, FlowWorker, LocalFlow
from pipeline.report import build_report, format_report
from pipeline.shards import ShardResult, VideoResult
from schemas.sample import quantize_flow
from tests.conftest import REPO
from tests.helpers import moving_video

ALGORITHMS = ("tvl1", "warp_tvl1")


def per_video(frames: np.ndarray, spec: FlowSpec) -> dict[str, np.ndarray]:
    flows = compute_flow(frames[:-1], frames[1:], spec.algorithms, spec.preset, "cpu", **dict(spec.params))
    return {name: quantize_flow(f, spec.encoding, spec.bound) for name, f in flows.items()}


def test_batches_that_span_videos_give_each_video_its_own_flow():
    spec = FlowSpec(ALGORITHMS, encoding="png16")  # 16-bit: a difference of 1/1600 px would show
    videos = [moving_video(n, seed=i) for i, n in enumerate((6, 12, 3, 9))]
    videos.append(moving_video(7, h=40, w=56, seed=4))  # another resolution: batched on its own
    worker = FlowWorker(spec, batch_size=8, device="cpu")
    answers = [None] * len(videos)

    def ask(i):
        answers[i] = worker.compute(videos[i])

    with worker._launch_lock:  # every request waits in the queue first, so batches must mix videos
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(videos))]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while len(worker._queue) < len(videos) and time.monotonic() < deadline:
            time.sleep(0.01)
    for t in threads:
        t.join(timeout=300)
    stats = worker.stats()
    same_size = sum(len(v) - 1 for v in videos[:4])  # 26 pairs: 4 launches of 8, the last padded
    assert stats["pairs"] == same_size + 6 and stats["batches"] == 4 + 1
    assert stats["padded_pairs"] == 4 * 8 - same_size + (8 - 6)
    for video, answer in zip(videos, answers):
        expected = per_video(video, spec)
        assert set(answer.flows) == set(ALGORITHMS) and len(answer.homographies) == len(video) - 1
        for name in ALGORITHMS:
            np.testing.assert_array_equal(answer.flows[name], expected[name])


def test_a_failed_launch_fails_its_callers_and_the_worker_goes_on(monkeypatch):
    worker = FlowWorker(FlowSpec(("tvl1",)), batch_size=4, device="cpu")
    real = worker._flows
    monkeypatch.setattr(worker, "_flows", lambda *a: (_ for _ in ()).throw(RuntimeError("device lost")))
    with pytest.raises(RuntimeError, match="device lost"):
        worker.compute(moving_video(3))
    monkeypatch.setattr(worker, "_flows", real)
    assert worker.compute(moving_video(3)).flows["tvl1"].shape == (2, 48, 64, 2)
    assert worker.stats()["failed_batches"] == 1
    with pytest.raises(ValueError, match="uint8 gray frames"):
        worker.compute(np.zeros((1, 8, 8), np.uint8))


def test_local_flow_answers_at_once():
    flow = LocalFlow(FlowWorker(FlowSpec(("tvl1",)), device="cpu"))
    assert flow.batch_size == 8 and flow.in_flight == 1
    assert flow.submit(moving_video(4))().flows["tvl1"].shape == (3, 48, 64, 2)


# --- compiling (each in a fresh process: Dynamo's counters and caches are per process) ---------------------

COMPILE_SCRIPT = """
import json, logging, sys
import numpy as np
sys.path.insert(0, {repo!r})
from pipeline.flow_service import FlowSpec, FlowWorker
from tests.helpers import moving_video
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
params = (("compile", {compile}), ("opencv_cpu_ops", False))  # iteration, median and warp all compiled
worker = FlowWorker(FlowSpec(("tvl1",), params=params, encoding="float16"), batch_size=4, device="cpu", threads=1)
out, compiles = [], []
for frames, h, w in {videos}:
    out.append(worker.compute(moving_video(frames, h, w, seed=frames)).flows["tvl1"].astype(np.float32))
    compiles.append(worker.stats()["compiles"])
np.save(sys.argv[1], np.concatenate([o.ravel() for o in out]))
print(json.dumps({{"compiles": compiles, "compile_seconds": worker.stats()["compile_seconds"]}}))
"""


def run_worker(tmp_path, compile: bool, videos, env: dict | None = None) -> tuple[dict, np.ndarray, str]:
    script = COMPILE_SCRIPT.format(repo=str(REPO), compile=compile, videos=videos)
    flows = tmp_path / f"flows-{compile}.npy"
    result = subprocess.run(
        [sys.executable, "-c", script, str(flows)], capture_output=True, text=True, timeout=900, cwd=REPO, env={**os.environ, **(env or {})}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), np.load(flows), result.stderr


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
    report, flows, log = run_worker(tmp_path, True, videos, env=no_compiler)
    _, eager, _ = run_worker(tmp_path, False, videos)
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
def test_a_video_twice_as_long_raises_peak_memory_by_less_than_a_quarter(tmp_path):
    peaks = {}
    for frames in (1000, 2000):
        path = tmp_path / f"long{frames}.mp4"
        write_long_video(path, frames)
        script = MEMORY_SCRIPT.format(repo=str(REPO))
        result = subprocess.run(
            [sys.executable, "-c", script, str(path), str(frames)], capture_output=True, text=True, timeout=600, cwd=REPO
        )
        assert result.returncode == 0, result.stderr[-3000:]
        peaks[frames] = int(result.stdout.strip().splitlines()[-1]) / 1024  # MB
    # Holding every decoded frame (RGB and gray, as flowshard 0.1 did) would add 1000 * 480 * 360 * 4 bytes = 690 MB,
    # over a third of such a worker's peak; chunks and encoded bytes add a few percent.
    assert peaks[2000] < 1.25 * peaks[1000], peaks


# --- the run report --------------------------------------------------------------------------------------


def test_report_sums_stages_and_rates_per_node_and_worker():
    videos = [
        VideoResult("a", "train", "s0", "ok", "", 2.0, 10, 100),
        VideoResult("b", "train", "s0", "failed", "cut off: decoded 3 of 9", 1.0),
    ]
    results = [
        ShardResult("s0", "train", "s0.tar", 1, 100, "", 3.0, videos, {"decode": 1.0, "encode": 0.5, "flow_wait": 4.0, "write": 0.1}, "n1"),
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
        "failed_batches": 0,
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
    }
    assert report["nodes"]["10.0.0.1"]["videos"] == 2 and report["nodes"]["10.0.0.1"]["pairs_per_s"] == 3.0
    assert report["nodes"]["10.0.0.2"]["videos_per_s"] == 0.25 and report["pairs_per_s"] == 3.0
    assert report["flow_workers"][0]["busy"] == 0.6
    assert report["failures"] == {"cut off": 1, "file not found": 1}
    text = "\n".join(format_report(report))
    assert "node 10.0.0.1: 2 videos" in text and "flow worker cpu on 10.0.0.1: 12 pairs (3.0/s)" in text


def test_a_failed_flow_launch_fails_only_the_videos_in_it(tmp_path, monkeypatch):
    from pipeline.decode import DecodeConfig
    from pipeline.plan import ShardSpec
    from pipeline.shards import ProcessConfig, process_shard
    from pipeline.synthetic import SyntheticConfig, generate_dataset
    from schemas.manifest import VideoRecord
    from storage import Location

    entries = generate_dataset(SyntheticConfig(classes=2, videos_per_class=2, width=64, height=48, frames=5, seed=1), tmp_path / "v")
    records = tuple(VideoRecord(f"v{i}", str(tmp_path / "v" / e.relpath), 0, "c", "train", "x") for i, e in enumerate(entries[:2]))
    worker = FlowWorker(FlowSpec(("tvl1",)), device="cpu")
    flows, calls = worker._flows, []

    def second_fails(*args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("CUDA out of memory\nTried to allocate 2 GiB")
        return flows(*args)

    monkeypatch.setattr(worker, "_flows", second_fails)
    cfg = ProcessConfig(modalities=("rgb", "tvl1"), decode=DecodeConfig(short_side=None))
    result = process_shard(ShardSpec("train-000000", "train", records), cfg, Location(str(tmp_path / "out")), flow=LocalFlow(worker))
    assert [v.status for v in result.videos] == ["ok", "failed"] and result.samples == 1
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
    assert {(r["algorithm"], r["batch"]) for r in figures["solver"]} == {(a, b) for a in ALGORITHMS for b in (2, 4)}
    assert all(r["pairs_per_s"] > 0 and r["peak_mb"] > 0 for r in figures["solver"])
    (accuracy,) = figures["accuracy"]
    assert accuracy["ratio"] < 1.05 and accuracy["device_vs_cpu"] < 0.05
    (run,) = figures["end_to_end"]
    assert run["pairs"] == 2 * 5 and run["ratio"] > 0 and "flow worker" in run["report"]
    assert "torch.compile failed" not in result.stdout + result.stderr
