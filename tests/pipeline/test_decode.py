"""Decoding: real clips with odd codecs and aspect ratios, resampling and trimming, and every bad input."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from pipeline.decode import DecodeConfig, VideoError, VideoStream, decode_video, nearest_in_time, output_size
from tests.conftest import shared_path
from tests.helpers import noise_frames, write_audio_only, write_mp4, write_zoo

# name: (decoded frames, stored size, output size at short side 256 stored grid, sample aspect)
REAL_CLIPS = {
    "demo.mp4": (280, (340, 256), (340, 256), Fraction(64, 51)),
    "test.avi": (164, (320, 240), (320, 240), Fraction(1)),  # never upscaled
    "part_0.mp4": (32, (340, 256), (340, 256), Fraction(1024, 765)),
    "Kop0sDqOn-c.mp4": (300, (340, 256), (340, 256), Fraction(1024, 765)),
    "flipping_a_pancake.mkv": (310, (426, 240), (426, 240), Fraction(1)),  # no frame count in the header
    "S001C001P001R001A001_rgb.avi": (103, (1920, 1080), (455, 256), Fraction(1)),  # 1080p
}


@pytest.mark.parametrize("name", list(REAL_CLIPS))
def test_real_clips_decode_right(name):
    path = shared_path("videos", name)
    frames, stored, size, sar = REAL_CLIPS[name]
    video = decode_video(str(path), DecodeConfig())
    assert video.frames.shape == (frames, size[1], size[0], 3)
    assert video.source_size == stored and video.sample_aspect == sar
    assert video.decoded_frames == frames
    assert video.frames.std() > 10  # real content, not blank frames


def test_square_pixel_grid_corrects_the_sample_aspect_ratio():
    path = shared_path("videos", "demo.mp4")
    video = decode_video(str(path), DecodeConfig(pixel_grid="square"))
    assert video.frames.shape[1:3] == (256, 427)  # 340 * 64/51 = 426.7 shown width


def test_exact_size_fps_resampling_and_max_frames():
    path = str(shared_path("videos", "demo.mp4"))  # 280 frames at 28 fps = 10 s
    video = decode_video(path, DecodeConfig(size=(170, 128), fps=10))
    assert video.frames.shape == (100, 128, 170, 3) and video.fps == 10
    capped = decode_video(path, DecodeConfig(max_frames=16))
    assert capped.decoded_frames == 16  # decoding stops there
    np.testing.assert_array_equal(capped.frames, decode_video(path, DecodeConfig()).frames[:16])


def test_trim_window():
    path = str(shared_path("videos", "Kop0sDqOn-c.mp4"))  # 30 fps
    video = decode_video(path, DecodeConfig(), start_sec=2.0, end_sec=4.0)
    assert video.frames.shape[0] == 60 and video.decoded_frames == 60
    whole = decode_video(path, DecodeConfig())
    np.testing.assert_array_equal(video.frames, whole.frames[60:120])  # the frames at [2 s, 4 s) of the whole clip


def test_output_size_never_upscales():
    cfg = DecodeConfig(short_side=256)
    assert output_size(1920, 1080, Fraction(1), cfg) == (455, 256)
    assert output_size(160, 120, Fraction(1), cfg) == (160, 120)
    assert output_size(340, 256, Fraction(64, 51), DecodeConfig(pixel_grid="square")) == (427, 256)


def resample_indices(times: np.ndarray, fps: float, start: float) -> np.ndarray:
    """The specification of `nearest_in_time`, on a whole timeline at once: indices of the frames nearest in time
    to start, start + 1/fps, ... up to the end of the last frame.

    Args:
        times: (T,) increasing frame timestamps in seconds.
        fps: the output frame rate.
        start: the first target time in seconds (a trim window's start, else the first frame's time).
    """
    if len(times) == 0:
        return np.zeros(0, int)
    step = np.median(np.diff(times)) if len(times) > 1 else 1.0 / fps
    duration = times[-1] + step - start
    count = max(1, int(math.floor(duration * fps + 1e-6)))
    targets = start + np.arange(count) / fps
    right = np.clip(np.searchsorted(times, targets), 1, len(times) - 1) if len(times) > 1 else np.zeros(count, int)
    left = np.maximum(right - 1, 0)
    nearer_left = np.abs(times[left] - targets) <= np.abs(times[right] - targets)
    return np.where(nearer_left, left, right)


def test_resample_indices_pick_the_nearest_frames():
    times = np.arange(30) / 30.0  # 1 s at 30 fps
    picks = resample_indices(times, 10, 0.0)
    assert list(picks) == [0, 3, 6, 9, 12, 15, 18, 21, 24, 27]
    assert len(resample_indices(times, 60, 0.0)) == 60  # upsampling repeats frames


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    (root / "empty.mp4").write_bytes(b"")
    (root / "notes.mp4").write_text("this is not a video\n")
    write_mp4(root / "one.mp4", noise_frames(1))
    write_mp4(root / "whole.mp4", noise_frames(30))
    data = (root / "whole.mp4").read_bytes()
    (root / "cut.mp4").write_bytes(data[: len(data) // 2])  # index (moov) at the end: lost
    write_mp4(root / "fast.mp4", noise_frames(30), faststart=True)
    data = (root / "fast.mp4").read_bytes()
    (root / "cut_faststart.mp4").write_bytes(data[: len(data) // 2])  # index kept, frames lost
    write_audio_only(root / "audio.m4a")
    return root


@pytest.mark.parametrize(
    "name, reason",
    [
        ("missing.mp4", "file not found"),
        ("empty.mp4", "empty file (0 bytes)"),
        ("notes.mp4", "not a readable video file"),
        ("cut.mp4", "not a readable video file"),
        ("cut_faststart.mp4", "cut off: the file holds"),
        ("audio.m4a", "no video stream (contains: audio)"),
        ("one.mp4", "too short: 1 frame(s)"),
    ],
)
def test_bad_inputs_raise_video_error_with_a_one_line_reason(bad_files, name, reason):
    with pytest.raises(VideoError) as info:
        decode_video(str(bad_files / name))
    message = str(info.value)
    assert message.startswith(reason) and "\n" not in message


def test_good_file_beside_the_bad_ones_decodes(bad_files):
    assert decode_video(str(bad_files / "whole.mp4")).frames.shape == (30, 48, 64, 3)
    assert decode_video(str(bad_files / "fast.mp4")).frames.shape == (30, 48, 64, 3)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="pixel grid"):
        DecodeConfig(pixel_grid="display")
    with pytest.raises(ValueError, match="max frames"):
        DecodeConfig(max_frames=1)


def test_streamed_resampling_picks_what_the_whole_array_picks():
    rng = np.random.default_rng(0)
    for trial in range(300):
        native = rng.choice([12.0, 25.0, 29.97, 30.0, 60.0])
        n = int(rng.integers(1, 90))
        times = np.cumsum(np.full(n, 1 / native) * rng.uniform(0.7, 1.3, n)) + rng.uniform(0, 2)
        fps = float(rng.choice([1.0, 5.0, 10.0, 15.0, 24.0, 30.0, 50.0, 90.0]))
        start = None if trial % 3 else float(times[0] - rng.uniform(0, 0.2))
        expected = resample_indices(times, fps, times[0] if start is None else start)
        picked = list(nearest_in_time(((i, t) for i, t in enumerate(times.tolist())), fps, start))
        assert picked == expected.tolist(), (trial, native, fps, n)


def test_stream_chunks_are_the_decoded_frames_and_errors_come_at_the_end(bad_files):
    path = str(shared_path("videos", "demo.mp4"))
    cfg = DecodeConfig(short_side=64, fps=10)
    with VideoStream(path, cfg) as video:
        chunks = list(video.chunks(16))
        assert video.fps == 10 and video.decoded_frames == 280
    assert [len(c) for c in chunks] == [16] * 6 + [4]
    np.testing.assert_array_equal(np.concatenate(chunks), decode_video(path, cfg).frames)
    with (
        VideoStream(str(bad_files / "cut_faststart.mp4"), DecodeConfig(short_side=32)) as video,
        pytest.raises(VideoError, match="cut off"),
    ):
        for _ in video.chunks(4):
            pass


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    return root, write_zoo(root)


def test_files_from_real_use_decode_as_a_player_shows_them(zoo):
    """Each zoo file gives the frames its making says a player shows (ffprobe -count_frames counts the same), or
    fails with its reason; flowshard at da21438 failed the trims and the damaged file (issue 36)."""
    root, files = zoo
    for name, video in files.items():
        if video.reason:
            with pytest.raises(VideoError, match=video.reason):
                decode_video(str(video.path))
            continue
        decoded = decode_video(str(video.path))
        assert (len(decoded.frames), decoded.damage.frames, decoded.damage.where()) == (video.frames, video.lost, video.lost_at), name


def test_a_copy_trim_keeps_exactly_the_frames_of_its_window(zoo):
    """The edit list's hidden packets are decoded (the frames after them need them) but not kept: the trim's frames
    are the source's frames 33..52 (1.32 s to 2.08 s), pixel for pixel."""
    root, files = zoo
    source = decode_video(str(root / "source_gop25.mp4"), DecodeConfig(short_side=None)).frames
    trim = decode_video(str(files["off_keyframe_trim"].path), DecodeConfig(short_side=None)).frames
    np.testing.assert_array_equal(trim, source[33:53])


def test_a_damaged_middle_is_decoded_past_or_failed_where_strict(zoo):
    root, files = zoo
    path = str(files["damaged_middle"].path)
    kept = decode_video(path)
    source = decode_video(str(root / "source_gop250.mp4")).frames
    np.testing.assert_array_equal(kept.frames[:36], source[:36])  # before the damage: the source's frames
    assert len(kept.frames) == 292 and kept.damage.times[0] == pytest.approx(1.44) and kept.damage.times[-1] == pytest.approx(1.72)
    with pytest.raises(VideoError, match=r"^damaged: 8 of its 300 frames could not be decoded \(at 1.44-1.72 s\)"):
        decode_video(path, DecodeConfig(strict=True))
    capped = decode_video(path, DecodeConfig(max_frames=30))  # stopped before the damage: nothing lost
    assert len(capped.frames) == 30 and capped.damage.frames == 0
    window = decode_video(path, DecodeConfig(), start_sec=1.0, end_sec=2.0)  # the damage inside a trim window
    assert len(window.frames) == 25 - 8 and window.damage.where() == "1.44-1.72 s"


def test_damage_spans_read_as_a_user_reads_them():
    from pipeline.decode import Damage

    assert Damage().where() == "" and Damage().frames == 0
    assert Damage((0.48,)).where() == "0.48 s"
    assert Damage((0.48, 2.0, 2.04, 2.08, 2.12)).where() == "0.48 s, 2.00-2.12 s"
