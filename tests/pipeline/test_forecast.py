"""The forecast (issue 29): what scales with what, which stage bounds a run, and that a figure nothing measured is
named, never made up. Pure: census rows and calibrated rates written by hand."""

from __future__ import annotations

import pytest

from pipeline.calibration import Calibration, merged
from pipeline.census import VideoCensus
from pipeline.forecast import Cluster, forecast
from pipeline.shards import ProcessConfig

RATES = {  # about what calibration measures on this machine at short side 128
    "rgb_bytes_per_pixel": 0.47,
    "flow_bytes_per_pixel": {"tvl1": 0.12},
    "decode_ns_per_pixel": 10.0,
    "encode_ns_per_pixel": 15.0,
    "flow_ns_per_pixel": 5600.0,
    "homography_ms_per_pair": None,
    "flow_pairs_per_s": 8.0,
}
CPU = Cluster(nodes=1, cpus=2, gpus=0)
FLOW = ProcessConfig(modalities=("rgb", "tvl1"))


def video(name: str, frames: int = 300, status: str = "ok", reason: str = "", stored=(340, 256)) -> VideoCensus:
    width, height = stored
    row = VideoCensus(name, "train", 0, status, reason, width=width, height=height, fps=30.0, estimated_frames=frames)
    row.out_width, row.out_height = 170, 128
    return row


def plan(census, shards=None, rates=RATES, cluster=CPU, device="cpu", process=FLOW, prices=None):
    shards = shards if shards is not None else [[r.video_id] for r in census]
    return forecast(census, shards, process, rates, cluster, device, startup_seconds=5.0, prices=prices)


def test_bytes_and_work_scale_with_frames_and_failures_cost_nothing():
    one, two = plan([video("a")]), plan([video("a", frames=600)])
    assert 1.9 < two["bytes"] / one["bytes"] < 2.05 and two["pairs"] == 599 and one["frames"] == 300
    flow = one["time"]["stages"]["flow"]
    assert flow == pytest.approx(5600e-9 * 170 * 128 * 299)  # the solver's rate per pixel, for each pair of the one flow
    failing = plan([video("a"), video("bad", status="failed", reason="cut off: the file holds 3 of the 30 frames it declares")])
    assert failing["bytes"] == one["bytes"] and failing["videos"]["failures"] == {"cut off": 1}
    assert failing["videos"]["expected_failed"] == 1 and failing["per_split"] == {"train": {"videos": 1, "rgb": 300, "tvl1": 299}}


def test_the_bound_is_the_cpus_the_gpus_or_the_longest_shard():
    census = [video(f"v{i}") for i in range(400)]
    on_cpus = plan(census)
    assert on_cpus["time"]["bound_by"] == "flow on the CPUs" and on_cpus["cost"]["gpu_hours"] == 0
    work = sum(on_cpus["time"]["stages"].values())
    assert abs(on_cpus["time"]["seconds"] - (5.0 + work / 2)) < 1e-6  # all of it spread over 2 cores, after starting
    gpus, gpu_rates = Cluster(nodes=2, cpus=64, gpus=8), dict(RATES, flow_ns_per_pixel=46.0)  # ~1,000 pairs/s at 170x128
    assert plan(census, cluster=gpus, device="cuda", rates=gpu_rates)["time"]["bound_by"] == "flow on the GPUs"
    full_hd = [video(f"v{i}", stored=(1920, 1080)) for i in range(400)]  # decoding 1080p on 56 CPUs is slower
    assert plan(full_hd, cluster=gpus, device="cuda", rates=gpu_rates)["time"]["bound_by"] == "decoding and encoding on the CPUs"
    one_shard = plan(census, shards=[[r.video_id for r in census]], cluster=Cluster(nodes=1, cpus=512, gpus=0))
    assert one_shard["time"]["bound_by"].startswith("the longest shard")


def test_what_nothing_measured_is_named_not_guessed():
    census = [video("a")]
    # a GPU cluster, but the calibration solved on the CPU (the flow asked for the CPU): no GPU rate to claim
    planned = plan(census, cluster=Cluster(nodes=1, cpus=16, gpus=1), device="cpu")
    assert any(u.startswith("GPU flow rate") for u in planned["unmeasured"]) and "GPU" not in planned["time"]["bound_by"]
    nothing = Calibration(flow_bytes={"tvl1": 0}).per_pixel()  # no calibration video could be processed
    blind = plan(census, rates=nothing)
    assert blind["bytes"] is None and blind["time"]["seconds"] is None and blind["cost"]["total"] is None
    assert any(u.startswith("shard bytes") for u in blind["unmeasured"]) and any(u.startswith("wall time") for u in blind["unmeasured"])
    assert any(u.startswith("cost") for u in plan(census)["unmeasured"])  # no prices given
    priced = plan(census, prices={"cpu_hour": 0.05, "gpu_hour": None})
    assert priced["cost"]["total"] == priced["cost"]["cpu_hours"] * 0.05 and not priced["unmeasured"]


def test_calibrations_measured_in_parallel_merge_as_sums():
    a = Calibration("cpu", "cpu", ["a"], frames=10, pairs=9, frame_pixels=100.0, rgb_bytes=50, encode_seconds=1.0, seconds=3.0)
    b = Calibration("cpu", "cpu", ["b"], frames=30, pairs=29, frame_pixels=300.0, rgb_bytes=250, encode_seconds=2.0, seconds=5.0)
    both = merged([a, b])
    assert both.videos == ["a", "b"] and both.frames == 40 and both.seconds == 5.0  # the parts ran side by side
    rates = both.per_pixel()
    assert rates["rgb_bytes_per_pixel"] == 300 / 400 and rates["encode_ns_per_pixel"] == 1e9 * 3.0 / 400
