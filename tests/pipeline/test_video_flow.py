"""A video's flow requested chunk by chunk: warped flow's CPU work in the caller gives what `compute_flow` gives."""

from __future__ import annotations

import contextlib
from collections import Counter

import cv2
import numpy as np
import pytest

from pipeline import video_flow
from pipeline.decode import DecodeConfig, VideoError, decode_video
from pipeline.flow import HomographyConfig, compute_flow
from pipeline.flow_requests import FlowSpec, LocalFlow
from pipeline.flow_service import FlowWorker
from schemas.sample import quantize_flow
from tests.conftest import shared_path
from tests.helpers import moving_video


class Stages:
    """A stand-in for the shard task's Timings: counts what ran in each stage."""

    def __init__(self):
        self.entered = Counter()
        self.added = Counter()

    @contextlib.contextmanager
    def stage(self, name):
        self.entered[name] += 1
        yield

    def add(self, name, seconds):
        self.added[name] += seconds


def run(frames: np.ndarray, modalities, chunk: int, worker: FlowWorker | None = None, stages=None):
    """VideoFlow over `frames` in chunks of `chunk`, each pair's flow kept as its quantized array."""
    worker = worker or FlowWorker(FlowSpec(encoding="png16"), batch_size=4, device="cpu")
    flow = video_flow.VideoFlow(LocalFlow(worker), modalities, HomographyConfig(), lambda q: q, stages or Stages())
    for start in range(0, len(frames), chunk):
        flow.add(frames[start : start + chunk])
    return flow.finish()


def reference(frames: np.ndarray) -> tuple[dict[str, np.ndarray], list[dict]]:
    flows, found = compute_flow(frames[:-1], frames[1:], ("tvl1", "warp_tvl1"), device="cpu", return_homographies=True)
    return {name: quantize_flow(f, "png16", 20.0) for name, f in flows.items()}, [h.as_dict() for h in found]


@pytest.mark.parametrize("clip", ["Kop0sDqOn-c.mp4", "flipping_a_pancake.mkv", "demo.mp4"])
def test_warped_flow_on_real_clips_equals_compute_flow(clip):
    """Homographies estimated in the caller from the corners' float flow, the features of each frame computed
    once, chunks that split pairs: the same homographies and the same stored flow, bit for bit."""
    video = decode_video(str(shared_path("videos", clip)), DecodeConfig(short_side=128, max_frames=12))
    frames = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in video.frames])
    flows, homographies = run(frames, ("tvl1", "warp_tvl1"), chunk=5)
    expected, expected_homographies = reference(frames)
    assert homographies == expected_homographies
    assert any(h["found"] for h in homographies)  # the camera-motion path ran, not just identities
    for name in ("tvl1", "warp_tvl1"):
        np.testing.assert_array_equal(np.stack(flows[name]), expected[name])


def test_each_frames_features_are_computed_once(monkeypatch):
    calls = []
    features = video_flow.frame_features
    monkeypatch.setattr(video_flow, "frame_features", lambda frame, cfg: calls.append(1) or features(frame, cfg))
    frames = moving_video(10)
    stages = Stages()
    flows, homographies = run(frames, ("warp_tvl1",), chunk=4, stages=stages)
    assert len(calls) == len(frames)  # the code before computed each frame's twice (as next, then as prev)
    assert set(flows) == {"warp_tvl1"} and len(flows["warp_tvl1"]) == len(homographies) == len(frames) - 1
    assert stages.entered["homography"] > 0


def test_each_chunk_says_what_its_pairs_cost_the_solver():
    """The solver's seconds come back with each chunk (its share of each launch, padding shared out over the real
    pairs): a video's add up to the worker's own flow seconds, whatever the chunks and launches."""
    worker = FlowWorker(FlowSpec(encoding="png16", params=(("compile", False),)), batch_size=4, device="cpu")
    stages = Stages()
    run(moving_video(10), ("tvl1", "warp_tvl1"), chunk=3, worker=worker, stages=stages)
    assert stages.added["solve"] > 0
    assert stages.added["solve"] == pytest.approx(worker.stats()["flow_seconds"], rel=0.05)


def test_plain_flow_sends_one_request_per_chunk_and_no_points():
    worker = FlowWorker(FlowSpec(encoding="png16"), batch_size=4, device="cpu")
    frames = moving_video(9)
    flows, homographies = run(frames, ("tvl1",), chunk=3, worker=worker)
    assert worker.stats()["requests"] == 3 and homographies == []
    np.testing.assert_array_equal(np.stack(flows["tvl1"]), reference(frames)[0]["tvl1"])


def test_a_failed_second_solve_fails_the_video_with_one_line(monkeypatch):
    worker = FlowWorker(FlowSpec(), batch_size=4, device="cpu")
    compute = worker.compute

    def warped_fails(request):
        if request.store_as == "warp_tvl1":
            raise RuntimeError("Traceback ...\nCUDA error: device-side assert triggered")
        return compute(request)

    monkeypatch.setattr(worker, "compute", warped_fails)
    with pytest.raises(VideoError, match="^flow failed: CUDA error: device-side assert triggered$"):
        run(moving_video(5), ("tvl1", "warp_tvl1"), chunk=5, worker=worker)
