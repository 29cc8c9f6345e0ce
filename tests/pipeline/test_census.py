"""The census (issue 29): it flags exactly the files preprocessing fails, with the same reasons, and estimates the
frames a run keeps, from the container alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.census import census_video, estimated_frames
from pipeline.decode import DecodeConfig, VideoError
from pipeline.report import failure_reason
from pipeline.shards import ProcessConfig, process_video
from schemas.manifest import VideoRecord
from tests.conftest import SHARED_DATA
from tests.helpers import VFR_TIMES, noise_frames, write_bad_inputs, write_mp4, write_zoo

REAL = ["demo.mp4", "test.avi", "part_0.mp4", "Kop0sDqOn-c.mp4", "flipping_a_pancake.mkv", "S001C001P001R001A001_rgb.avi", "rotated90.mp4"]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> list[VideoRecord]:
    """The real clips (where ../shared/data is at hand), every bad kind, the zoo of files from real use (trims, a
    damaged middle, a variable frame rate, a file cut at 60%), and a generated clip."""
    root = tmp_path_factory.mktemp("census")
    paths = list(write_bad_inputs(root).values()) + [v.path for v in write_zoo(root / "zoo").values()]
    write_mp4(root / "generated.mp4", noise_frames(12))
    paths.append(root / "generated.mp4")
    paths += [SHARED_DATA / "videos" / name for name in REAL if (SHARED_DATA / "videos" / name).exists()]
    records = [VideoRecord(Path(p).stem, str(p), 0, "c", "train", "csv") for p in paths]
    records.append(VideoRecord("listed_missing", str(root / "generated.mp4"), 0, "c", "train", "csv", exists=False))
    if (SHARED_DATA / "videos" / "demo.mp4").exists():  # a Kinetics-style trim window
        records.append(VideoRecord("demo_window", str(SHARED_DATA / "videos" / "demo.mp4"), 0, "c", "train", "kinetics", 2.0, 5.0))
    return records


def run_outcome(record: VideoRecord, cfg: ProcessConfig) -> tuple[str, str, int]:
    """What preprocessing makes of the video: (status, reason, frames the file shows: those kept, and at the native
    rate those damage lost; resampling to --fps fills the gap with the nearest frames)."""
    try:
        sample = process_video(record, cfg)
    except VideoError as exc:
        return "failed", str(exc), 0
    return "ok", "", sample.meta.num_frames + (sample.meta.frames_lost if cfg.decode.fps is None else 0)


@pytest.mark.parametrize(
    "decode",
    [DecodeConfig(short_side=32), DecodeConfig(short_side=32, fps=10.0, max_frames=40)],
    ids=["every frame", "fps 10, at most 40"],
)
def test_the_census_flags_what_preprocessing_fails_and_estimates_its_frames(mixed, decode):
    cfg = ProcessConfig(modalities=("rgb",), decode=decode)
    for record in mixed:
        row = census_video(record, decode)
        status, reason, frames = run_outcome(record, cfg)
        assert row.status == status, (record.video_id, row.reason, reason)
        assert failure_reason(row.reason) == failure_reason(reason), record.video_id  # the same kind, in the same words
        if status != "ok":
            continue
        # 2% where the container counts its frames (its index, or a declared count), 10% where its packets are
        # counted and a duration spreads them at --fps; resampling may round a frame either way (part_0.mp4's
        # timestamps span 1.1 s for 32 frames at 30 fps: 11 frames at 10 fps, not 10)
        tolerance = 0.02 if row.frames_from in ("index", "declared") else 0.10
        assert abs(row.estimated_frames - frames) <= max(tolerance * frames, 1), (record.video_id, row.estimated_frames, frames)
    if not (SHARED_DATA / "videos").exists():
        pytest.skip(f"the real clips are absent ({SHARED_DATA / 'videos'}); only the generated and bad files were checked")


def test_what_the_census_reads_from_real_containers(mixed):
    rows = {r.video_id: census_video(r, DecodeConfig(short_side=128)) for r in mixed}
    if "rotated90" not in rows:
        pytest.skip(f"the real clips are absent ({SHARED_DATA / 'videos'})")
    turned = rows["rotated90"]  # 320x240 stored, shown as 240x320
    assert (turned.width, turned.height, turned.display_width, turned.display_height, turned.rotation) == (320, 240, 240, 320, 90)
    assert (turned.out_width, turned.out_height) == (128, 171)  # the displayed frame's short side
    demo = rows["demo"]  # 340x256, sample aspect 64/51
    assert (demo.container, demo.codec) == ("mov,mp4,m4a,3gp,3g2,mj2", "h264")
    assert (demo.display_width, demo.fps, demo.declared_frames) == (427, 28, 280)
    mkv = rows["flipping_a_pancake"]  # Matroska declares no frame count: its packets are counted
    assert (mkv.declared_frames, mkv.frames_from, mkv.frames_in_file) == (0, "packets", 310) and mkv.audio and not demo.audio
    assert rows["truncated"].reason.startswith("cut off: the file holds") and rows["truncated"].declared_frames == 30


def test_the_census_counts_the_frames_a_file_shows_not_the_packets_it_holds(mixed):
    rows = {r.video_id: census_video(r, DecodeConfig(short_side=32)) for r in mixed}
    trim = rows["long_gop_trim"]  # 221 packets from the keyframe before the cut, 122 shown
    assert (trim.status, trim.declared_frames, trim.frames_in_file, trim.frames_from) == ("ok", 221, 122, "index")
    assert (rows["off_keyframe_trim"].declared_frames, rows["off_keyframe_trim"].estimated_frames) == (28, 20)
    vfr = rows["variable_rate"]  # 12 frames over 1.94 s at an average 25 fps: its duration says 48
    assert (vfr.frames_in_file, vfr.frames_from, vfr.estimated_frames) == (len(VFR_TIMES), "packets", len(VFR_TIMES))
    assert rows["cut_40_percent"].reason.startswith("cut off: the file holds 39 of the 75 frames")
    assert rows["damaged_middle"].status == "ok"  # damage shows only when decoding: the run keeps the video


def test_estimated_frames_follow_the_trim_window_the_rate_and_the_cap():
    every = DecodeConfig()
    assert estimated_frames(300, 30.0, every) == 300
    assert estimated_frames(300, 30.0, every, start_sec=2.0, end_sec=5.0) == 90  # 3 s of 30 fps
    assert estimated_frames(300, 30.0, every, start_sec=8.0, end_sec=12.0) == 60  # the window ends with the video
    assert estimated_frames(300, 30.0, every, start_sec=11.0) == 0  # after the end: too short
    assert estimated_frames(300, 30.0, DecodeConfig(fps=12.5)) == 125  # 10 s at 12.5 fps
    assert estimated_frames(300, 30.0, DecodeConfig(fps=12.5, max_frames=64)) == 64
