"""Helpers shared by the tests: small media files, bad inputs, synthetic samples and datasets."""

from __future__ import annotations

import tarfile
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
    "truncated": "cut off: decoded",
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
