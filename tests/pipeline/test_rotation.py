"""Videos with a display matrix (phone videos carry a rotation) are stored as a player shows them: their frames
turned before anything else, so sizes, frames and flow are those of the displayed video."""

from __future__ import annotations

import av
import cv2
import numpy as np
import pytest

from pipeline.decode import DecodeConfig, Orientation, decode_video, orientation_of
from pipeline.shards import ProcessConfig, process_video
from pipeline.summary import summarize, summary_lines
from schemas.manifest import VideoRecord
from schemas.sample import decode_sample, encode_sample
from tests.conftest import shared_path


def remux(source: str, target, degrees: int, hflip: bool = False, vflip: bool = False) -> str:
    """`source`'s video stream copied into an mp4 with a display matrix of `degrees` counter-clockwise and flips
    (PyAV's `set_display_rotation`: the turn, then the mirror images)."""
    with av.open(source) as inp, av.open(str(target), "w", format="mp4") as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        stream.set_display_rotation(degrees, hflip=hflip, vflip=vflip)
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    return str(target)


def shown(frames: np.ndarray, degrees: int, hflip: bool = False, vflip: bool = False) -> np.ndarray:
    """(T, H, W, 3) frames as a display matrix of `degrees` (and flips) shows them."""
    out = np.rot90(frames, degrees // 90, axes=(1, 2))
    out = out[:, :, ::-1] if hflip else out
    return out[:, ::-1] if vflip else out


def test_the_phone_style_clip_decodes_as_players_show_it():
    """rotated90.mp4 is test.avi's stream with a rotation of 90: ffmpeg and OpenCV show np.rot90(stored, 1)."""
    cfg = DecodeConfig(short_side=128, max_frames=4)
    plain = decode_video(str(shared_path("videos", "test.avi")), cfg).frames
    turned = decode_video(str(shared_path("videos", "rotated90.mp4")), cfg).frames
    assert plain.shape == (4, 128, 171, 3) and turned.shape == (4, 171, 128, 3)  # the short side is the displayed one
    assert np.array_equal(turned, shown(plain, 90))
    exact = decode_video(str(shared_path("videos", "rotated90.mp4")), DecodeConfig(size=(96, 120), max_frames=2)).frames
    assert exact.shape == (2, 120, 96, 3)  # --size is the displayed frame's (width, height)


@pytest.mark.parametrize("degrees", [0, 90, 180, 270])
@pytest.mark.parametrize("flips", [(False, False), (True, False), (False, True)])
def test_every_turn_and_mirror_is_applied(tmp_path, degrees, flips):
    """All eight orientations a display matrix can give; the turns alone agree with OpenCV's VideoCapture, which
    applies rotations (not mirror images) itself: a reader that is not ours."""
    source = str(shared_path("videos", "test.avi"))
    path = remux(source, tmp_path / "turned.mp4", degrees, *flips)
    cfg = DecodeConfig(short_side=None, max_frames=2)
    frames = decode_video(path, cfg).frames
    assert np.array_equal(frames, shown(decode_video(source, cfg).frames, degrees, *flips))
    if flips == (False, False):
        ok, first = cv2.VideoCapture(path).read()
        assert ok and first.shape == frames[0].shape
        assert np.abs(cv2.cvtColor(first, cv2.COLOR_BGR2RGB).astype(int) - frames[0]).mean() < 2  # decoders differ a little


def test_display_matrices_read_as_ffmpeg_reads_them():
    def matrix(a, b, c, d):  # 16.16 fixed point, as FFmpeg stores it
        return np.array([a * 65536, b * 65536, 0, c * 65536, d * 65536, 0, 0, 0, 1 << 30], np.int32)

    assert orientation_of(None) == orientation_of(matrix(1, 0, 0, 1)) == Orientation()
    assert orientation_of(matrix(0, -1, 1, 0)) == Orientation(1)  # rotated90.mp4's: shown np.rot90(stored, 1)
    assert orientation_of(matrix(-1, 0, 0, -1)) == Orientation(2)
    assert orientation_of(matrix(0, 1, -1, 0)) == Orientation(3)
    assert orientation_of(matrix(-1, 0, 0, 1)) == Orientation(0, True)
    assert orientation_of(np.zeros(9, np.int32)) == Orientation()  # a degenerate matrix: as stored


def flow_of(sample, index: int = 0) -> np.ndarray:
    return sample.flow_frame("tvl1", index)


def test_rotated_videos_store_turned_frames_and_the_turned_flow(tmp_path):
    """Through the shard pipeline: the frames of each turned copy of test.avi are test.avi's frames turned (within
    JPEG noise), their flow is test.avi's flow turned, vectors and all, and the sample's json says how it was
    turned; the unturned video's json is as it was (no rotation field)."""
    source = str(shared_path("videos", "test.avi"))
    cfg = ProcessConfig(
        modalities=("rgb", "tvl1"), decode=DecodeConfig(short_side=64, max_frames=3), flow_params=(("compile", False), ("warps", 1))
    )
    samples = {}
    for degrees in (0, 90, 180, 270):
        path = source if degrees == 0 else remux(source, tmp_path / f"r{degrees}.mp4", degrees)
        record = VideoRecord(f"v{degrees}", path, 0, "c", "train", "test")
        samples[degrees] = decode_sample(encode_sample(process_video(record, cfg)))  # as written and read back
    plain = samples[0]
    assert "rotation" not in encode_sample(plain)["json"].decode()  # unturned samples keep their bytes
    frames = np.stack([plain.rgb_frame(i) for i in range(3)])
    flow = np.stack([flow_of(plain, i) for i in range(2)])
    assert np.abs(flow).max() > 0.5  # test.avi moves
    for degrees in (90, 180, 270):
        sample = samples[degrees]
        assert (sample.meta.rotation, sample.meta.mirrored) == (degrees, False)
        assert (sample.meta.width, sample.meta.height) == ((plain.meta.width, plain.meta.height)[:: 1 if degrees == 180 else -1])
        got = np.stack([sample.rgb_frame(i) for i in range(3)]).astype(int)
        noise = np.abs(got - shown(frames, degrees)).mean()  # JPEG noise (its 8x8 blocks fall elsewhere once turned)
        assert noise < 3 and np.abs(got - shown(frames, (degrees + 180) % 360)).mean() > 3 * noise  # not the other way round
        turned = shown(flow, degrees).copy()
        for _ in range(degrees // 90):  # a quarter turn counter-clockwise takes (dx, dy) to (dy, -dx)
            turned[..., 0], turned[..., 1] = turned[..., 1].copy(), -turned[..., 0]
        got_flow = np.stack([flow_of(sample, i) for i in range(2)])
        error = np.linalg.norm(got_flow - turned, axis=-1).mean()
        assert error < 0.1 * np.linalg.norm(flow, axis=-1).mean() + 0.05, (degrees, error)
        wrong = np.linalg.norm(got_flow - shown(flow, degrees), axis=-1).mean()  # turned pixels, unturned vectors
        assert degrees == 180 or wrong > 3 * error


def test_inspect_counts_the_videos_stored_turned(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from schemas.dataset import INDEX_SCHEMA, RESULTS_SCHEMA, DatasetInfo

    rows = [
        {
            "video_id": f"v{i}",
            "split": "train",
            "shard": "train-000000.tar",
            "status": "ok",
            "reason": "",
            "seconds": 1.0,
            "frames": 3,
            "bytes": 10,
            "label": 0,
            "rotation": r,
            "mirrored": m,
            "frames_lost": 8 if i == 1 else 0,  # and one kept without frames damaged packets lost
            "lost_at": "1.44-1.72 s" if i == 1 else "",
        }
        for i, (r, m) in enumerate([(0, False), (90, False), (90, False), (270, True), (0, False)])
    ]
    pq.write_table(pa.Table.from_pylist(rows, schema=RESULTS_SCHEMA), tmp_path / "results.parquet")
    index = [
        {"key": r["video_id"], "shard": r["shard"], "label": 0, "split": "train", "frames": 3, "bytes": 10, "offset": 0, "head": 0}
        for r in rows
    ]
    pq.write_table(pa.Table.from_pylist(index, schema=INDEX_SCHEMA), tmp_path / "index.parquet")
    info = DatasetInfo(
        classes=["c"], modalities=["rgb"], parameters={}, counts={"samples": {"train": 5}}, shards={"train": ["train-000000.tar"]}
    )
    (tmp_path / "dataset.json").write_text(info.to_json())
    summary = summarize(str(tmp_path))
    assert summary.turned == {"rotated 270, mirrored": 1, "rotated 90": 2}
    assert any(line.startswith("3 videos stored turned") and "2 rotated 90" in line for line in summary_lines(summary))
    assert summary.damaged == {"v1": 8}
    assert any(
        line.startswith("1 video kept without frames that damaged packets lost (frames lost): v1 (8)") for line in summary_lines(summary)
    )
