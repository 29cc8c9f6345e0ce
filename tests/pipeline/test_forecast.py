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


def calibrated(*videos: tuple) -> Calibration:
    """A CPU calibration of videos of 10 frames, each given as (id, RGB bytes per pixel, encode ns per pixel, seconds
    its solver seconds[, pixels a frame: 100]), its sums and each video's own as `calibrate` keeps them; the solver 1 ms
    a pair."""
    parts = []
    for name, rgb, encode, solve, *size in videos:
        pixels = size[0] if size else 100
        sums = {"frames": 10, "pairs": 9, "decoded_pixels": 10.0 * pixels, "frame_pixels": 10.0 * pixels, "pair_pixels": 9.0 * pixels}
        sums |= {"rgb_bytes": round(rgb * 10 * pixels), "decode_seconds": 1e-5, "homography_seconds": 0.0}
        sums["encode_seconds"] = encode * 1e-9 * 10 * pixels
        part = Calibration("cpu", "cpu", [name], flow_bytes={"tvl1": 90}, **sums)
        part.per_video = [{"video_id": name, **sums, "flow_bytes": {"tvl1": 90}, "solve_seconds": solve}]
        parts.append(part)
    total = merged(parts)
    total.solves, total.solve_seconds = 18, 0.018
    return total


def test_the_range_spans_the_rates_of_the_calibration_videos_drawn_again():
    """Two calibration videos a and b: drawn again with replacement, a quarter of the draws are (a, a), a quarter
    (b, b): the middle 95% of the draws' rates span exactly a's to b's."""
    calibration = calibrated(("a", 0.2, 10.0, 0.01), ("b", 0.6, 30.0, 0.03))
    low, high = calibration.rate_bounds()
    mean = calibration.per_pixel()
    assert (low["rgb_bytes_per_pixel"], mean["rgb_bytes_per_pixel"], high["rgb_bytes_per_pixel"]) == pytest.approx((0.2, 0.4, 0.6))
    assert (low["encode_ns_per_pixel"], high["encode_ns_per_pixel"]) == pytest.approx((10.0, 30.0))
    # the solver's one rate, scaled by each draw's solver seconds per pixel against all videos': 0.5x and 1.5x
    assert low["flow_ns_per_pixel"] == pytest.approx(mean["flow_ns_per_pixel"] / 2)
    assert high["flow_ns_per_pixel"] == pytest.approx(mean["flow_ns_per_pixel"] * 1.5)
    census = [video(f"v{i}") for i in range(10)]
    shards = [[r.video_id] for r in census]
    planned = forecast(census, shards, FLOW, mean, CPU, "cpu", 5.0, bounds=(low, high))
    assert calibration.rate_bounds() == (low, high)  # seeded: the same plan every time
    at_low, at_high = (forecast(census, shards, FLOW, rates, CPU, "cpu", 5.0) for rates in (low, high))
    # bytes: also each member's padding at its least (0) and most (511), against half a block in the plan
    members = 10 * (3 + 300 + 299 * 2)  # cls, json, table; each frame; each pair's x and y flow
    assert planned["bytes_range"] == pytest.approx([at_low["bytes"] - 256 * members, at_high["bytes"] + 255 * members])
    assert at_low["bytes"] < planned["bytes"] < at_high["bytes"]
    assert planned["time"]["seconds_range"] == [at_low["time"]["seconds"], at_high["time"]["seconds"]]
    assert planned["time"]["seconds_range"][0] < planned["time"]["seconds"] < planned["time"]["seconds_range"][1]
    alike = calibrated(("a", 0.4, 20.0, 0.02), ("b", 0.4, 20.0, 0.02))  # videos alike: the range is the plan
    same = forecast(census, shards, FLOW, alike.per_pixel(), CPU, "cpu", 5.0, bounds=alike.rate_bounds())
    assert same["bytes_range"] == pytest.approx([same["bytes"] - 256 * members, same["bytes"] + 255 * members])
    assert same["time"]["seconds_range"] == pytest.approx([same["time"]["seconds"]] * 2)
    # 7 videos alike and a tiny one of 10 pixels a frame whose JPEGs take 3 bytes a pixel: a draw weighs each video
    # by its pixels, so the tiny one barely moves the range (every video as dear as the dearest would say 3.0)
    small = calibrated(*[(f"v{i}", 0.4, 20.0, 0.02) for i in range(7)], ("tiny", 3.0, 90.0, 0.2, 1))
    assert 0.4 < small.rate_bounds()[1]["rgb_bytes_per_pixel"] < 0.42


def test_a_run_is_held_to_the_plans_range():
    from pipeline.forecast import against_plan, format_against

    planned = {"expected_ok": 3, "expected_failed": 1, "frames": 90, "pairs": 87, "bytes": 1000, "seconds": 10.0}
    planned["ranges"] = {"bytes": [800, 1300], "seconds": [8.0, 12.0]}
    actual = {"expected_ok": 3, "expected_failed": 1, "frames": 90, "pairs": 87, "bytes": 1200, "seconds": 14.0}
    rows = against_plan(planned, actual)
    assert rows["bytes"]["inside"] and not rows["seconds"]["inside"] and "inside" not in rows["frames"]
    line = format_against(rows)[0]
    assert "inside its range" in line and "seconds 14 s of 10 s planned (+40%), OUTSIDE its range 8 s-12 s" in line
