"""Helpers shared by the tests: small media files, bad inputs, synthetic samples and datasets."""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds

from schemas.dataset import INDEX_SCHEMA, DatasetInfo
from schemas.sample import (
    Sample,
    SampleMeta,
    dali_index_of,
    encode_flow,
    encode_jpeg,
    encode_sample,
    sample_ranges,
    write_sample,
)
from storage import Location
from trainers.tar_stream import read_members

# TV-L1 with one warp per pyramid level instead of five (~4x faster on the CPU) for the tests of the pipeline's
# mechanics: the flow still follows the synthetic motion; the solver's accuracy is tested on Middlebury (test_flow.py)
# and the default settings' output byte for byte by test_same_shards.py.
QUICK_FLOW = ["--flow-param", "warps=1"]


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not decoded by the manifest step")
    return path


def write_mp4(path, frames: np.ndarray, fps: int = 25, faststart: bool = False) -> None:
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode())


def write_audio_only(path) -> None:
    """An AAC file with no video stream."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for _ in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate = 16000
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def noise_frames(n: int, h: int = 48, w: int = 64) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 255, (n, h, w, 3), dtype=np.uint8)


BAD_REASONS = {
    "missing": "file not found",
    "zero_bytes": "empty file (0 bytes)",
    "truncated": "cut off: the file holds",
    "not_a_video": "not a readable video file",
    "audio_only": "no video stream",
    "one_frame": "too short: 1 frame(s)",
}


def write_bad_inputs(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = {name: root / f"{name}.mp4" for name in BAD_REASONS}
    paths["audio_only"] = root / "audio_only.m4a"
    paths["zero_bytes"].write_bytes(b"")
    paths["not_a_video"].write_text("not a video\n")
    write_mp4(paths["one_frame"], noise_frames(1))
    write_mp4(root / "whole.mp4", noise_frames(30), faststart=True)
    data = (root / "whole.mp4").read_bytes()
    paths["truncated"].write_bytes(data[: len(data) // 2])
    write_audio_only(paths["audio_only"])
    return paths


def write_h264(path, frames: np.ndarray, fps: int = 25, keyframe_interval: int = 250, **options) -> None:
    """Gray frames (T, H, W) as H.264 without B-frames and with a keyframe every `keyframe_interval` frames (x264's
    default interval: a Kinetics clip's whole length), in the container `path`'s suffix names."""
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"g": str(keyframe_interval), "keyint_min": str(keyframe_interval), "sc_threshold": "0", "bf": "0"}
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.repeat(f[..., None], 3, -1), format="rgb24")))
        container.mux(stream.encode())


def copy_trim(source, path, start: float, seconds: float) -> None:
    """What `ffmpeg -ss START -i SOURCE -t SECONDS -c copy PATH` writes: the packets from the keyframe at or before
    `start` (a decoder needs it) to `start + seconds`, timed from `start`, so the mp4 muxer hides the ones before it
    with an edit list. The file declares every packet it holds; a player shows the frames from `start` on."""
    with av.open(str(source)) as src, av.open(str(path), "w") as dst:
        stream = src.streams.video[0]
        out = dst.add_stream_from_template(stream)
        first, last = round(start / stream.time_base), round((start + seconds) / stream.time_base)
        packets = [p for p in src.demux(stream) if p.pts is not None]
        keyframe = max(p.pts for p in packets if p.is_keyframe and p.pts <= first)
        for packet in packets:
            if keyframe <= packet.pts < last:
                packet.pts, packet.dts, packet.stream = packet.pts - first, packet.dts - first, out
                dst.mux(packet)


def damage_packets(source, path, first: int, last: int) -> None:
    """A copy of an mp4 whose packets first..last-1 (in file order) are overwritten with noise, their sizes kept: what
    a bad sector or a broken transfer leaves in the middle of a file."""
    with av.open(str(source)) as container:
        entries = list(container.streams.video[0].index_entries)
    data = bytearray(Path(source).read_bytes())
    start, end = entries[first].pos, entries[last].pos
    data[start:end] = np.random.default_rng(0).integers(0, 256, end - start, dtype=np.uint8).tobytes()
    Path(path).write_bytes(bytes(data))


def write_vfr_mkv(path, times: list[float]) -> None:
    """Matroska (no frame count in its header) with a frame shown at each of `times` seconds: a variable frame rate,
    so its duration times its average rate is not its frame count."""
    frames = moving_video(len(times), 48, 64, seed=3)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        stream.options = {"bf": "0"}
        for f, t in zip(frames, times):
            frame = av.VideoFrame.from_ndarray(np.repeat(f[..., None], 3, -1), format="rgb24")
            frame.pts, frame.time_base = round(t * 1000), Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


@dataclass(frozen=True)
class ZooVideo:
    """A file of the zoo and what preprocessing must make of it, known from how it was made."""

    path: Path
    frames: int  # kept, as a player shows them (0 where it fails)
    reason: str = ""  # the start of its failure reason; "" where it is kept
    lost: int = 0  # frames damaged packets lose
    lost_at: str = ""


VFR_TIMES = [0.0, 0.04, 0.08, 0.12, 0.5, 0.9, 1.3, 1.34, 1.38, 1.42, 1.8, 1.9]  # 12 frames over 1.94 s: 48 at 25 fps


def write_zoo(root: Path) -> dict[str, ZooVideo]:
    """Files from real use that a tool must not lose, at full length: `-c copy` trims that start between keyframes
    (an edit list hides the packets before the start), a damaged middle, a variable frame rate; and one it must fail,
    a file whose last 40% is missing. All 64x48 H.264 at 25 fps, made in a second."""
    root.mkdir(parents=True, exist_ok=True)
    write_h264(root / "source_gop25.mp4", moving_video(75, 48, 64, seed=1), keyframe_interval=25)
    write_h264(root / "source_gop250.mp4", moving_video(300, 48, 64, seed=2))
    zoo = {}
    # ffmpeg -ss 1.3 -t 0.8 -c copy: packets from the keyframe at 1.0 s, shown from 1.32 s (frame 33) to 2.08 s (52)
    copy_trim(root / "source_gop25.mp4", root / "off_keyframe_trim.mp4", 1.3, 0.8)
    zoo["off_keyframe_trim"] = ZooVideo(root / "off_keyframe_trim.mp4", 20)
    # from a source with x264's 250-frame interval: 221 packets from the keyframe at 0, frames 99..220 shown
    copy_trim(root / "source_gop250.mp4", root / "long_gop_trim.mp4", 3.96, 4.88)
    zoo["long_gop_trim"] = ZooVideo(root / "long_gop_trim.mp4", 122)
    damage_packets(root / "source_gop250.mp4", root / "damaged_middle.mp4", 36, 44)  # frames at 1.44..1.72 s
    zoo["damaged_middle"] = ZooVideo(root / "damaged_middle.mp4", 300 - 8, lost=8, lost_at="1.44-1.72 s")
    write_h264(root / "whole.mp4", moving_video(75, 48, 64, seed=4), movflags="faststart")  # the index first
    data = (root / "whole.mp4").read_bytes()
    (root / "cut_40_percent.mp4").write_bytes(data[: len(data) * 6 // 10])
    zoo["cut_40_percent"] = ZooVideo(root / "cut_40_percent.mp4", 0, reason="cut off:")
    write_vfr_mkv(root / "variable_rate.mkv", VFR_TIMES)
    zoo["variable_rate"] = ZooVideo(root / "variable_rate.mkv", len(VFR_TIMES))
    return zoo  # the sources (source_gop25.mp4, source_gop250.mp4, whole.mp4) stay beside it, for comparing


def moving_video(frames: int, h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """(frames, h, w) uint8 gray: a smooth random texture that drifts by a different step each video."""
    rng = np.random.default_rng(seed)
    big = rng.integers(0, 255, (h + 2 * frames + 8, w + 2 * frames + 8), dtype=np.uint8)
    big = (np.cumsum(np.cumsum(big.astype(np.float32), 0), 1) % 255).astype(np.uint8)  # texture with structure
    dx, dy = 1 + seed % 2, seed % 3
    return np.stack([big[4 + t * dy : 4 + t * dy + h, 4 + t * dx : 4 + t * dx + w] for t in range(frames)])


H, W, FRAMES = 40, 56, 9


def synthetic_sample(key: str, label: int, frames: int = FRAMES) -> Sample:
    """Frame i is filled with the value 10 * i (so indices can be read back); flow i is constant (label, i/10)."""
    rgb = [encode_jpeg(np.full((H, W, 3), 10 * i, np.uint8), 100) for i in range(frames)]
    flows = [encode_flow(np.broadcast_to(np.float32([label, i / 10]), (H, W, 2)).copy(), quality=100) for i in range(frames - 1)]
    meta = SampleMeta(
        video_id=key,
        label=label,
        label_name=f"c{label}",
        split="train",
        source="-",
        fps=25.0,
        num_frames=frames,
        height=H,
        width=W,
        modalities=("rgb", "tvl1"),
    )
    return Sample(meta=meta, rgb=rgb, flow={"tvl1": flows})


def write_dataset(root: Path, shards: dict[str, list[Sample]], member_tables: bool = True) -> None:
    """A dataset folder of these shards, each in the split its name starts with ("train-000000.tar": train), with
    its dataset.json and index.parquet; without `member_tables`, written as flowshard wrote them before samples
    held one (by plain webdataset's writer)."""
    (root / "shards").mkdir(parents=True)
    index = []
    for name, samples in shards.items():
        if member_tables:
            with tarfile.open(root / "shards" / name, "w|") as sink:
                for s in samples:
                    write_sample(sink, encode_sample(s))
        else:  # as flowshard wrote them from 29b3dfc (plain headers, int member times) to 583287b
            with wds.TarWriter(str(root / "shards" / name), mtime=0) as sink:
                for s in samples:
                    sink.write(encode_sample(s))
        with open(root / "shards" / name, "rb") as tar:
            ranges = sample_ranges(dali_index_of(tar))
        for s in samples:
            offset, size, head = ranges[s.key]
            row = {"key": s.key, "shard": name, "label": s.meta.label, "split": name.split("-")[0], "frames": s.meta.num_frames}
            index.append(row | {"bytes": size, "offset": offset, "head": head})
    pq.write_table(pa.Table.from_pylist(index, schema=INDEX_SCHEMA), root / "index.parquet")
    splits = sorted({name.split("-")[0] for name in shards})
    info = DatasetInfo(
        classes=["c0", "c1", "c2"],
        modalities=["rgb", "tvl1"],
        parameters={},
        counts={"samples": {split: sum(len(v) for n, v in shards.items() if n.startswith(split + "-")) for split in splits}},
        shards={split: sorted(n for n in shards if n.startswith(split + "-")) for split in splits},
    )
    (root / "dataset.json").write_text(info.to_json())


def shard_samples(urls: list[str]) -> list[dict[str, bytes]]:
    """Every sample in these shard tars (local paths or URIs), read straight from the tars, not through the dataset's
    index: {"__key__", member suffix: bytes} each, in order."""
    samples: list[dict] = []
    for url in urls:
        last = None
        with Location(url).open_input_stream() as stream:
            for name, data in read_members(stream):
                key, _, suffix = name.partition(".")
                if key != last:
                    samples.append({"__key__": key})
                    last = key
                samples[-1][suffix] = data
    return samples


def whole_shards(names: list[str]) -> list[str]:
    """The tars of a shards folder listing, after checking that it holds whole shards only: each tar beside its
    DALI index and nothing else (no temporary or partial file)."""
    tars = sorted(n for n in names if n.endswith(".tar"))
    assert tars and sorted(names) == sorted([*tars, *(t.removesuffix(".tar") + ".idx" for t in tars)]), names
    return tars


def flags(**options) -> list[str]:
    """Command-line flags from keywords: flags(videos_per_class=12, no_flip=True) -> ["--videos-per-class", "12", "--no-flip"].

    True gives the bare flag; None and False leave it out.
    """
    out: list[str] = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            out.append(flag)
        elif value is not None and value is not False:
            out += [flag, str(value)]
    return out
