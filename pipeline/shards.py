"""Shards: the work of one shard (decode, flow, write a tar); `pipeline.plan` decides which videos it holds.

`process_shard` is plain Python, testable without Ray; `pipeline.ray_tasks` runs it as a Ray task. A shard
is written whole or not at all: the tar is written under a temporary name and moved into place, then its
completion record (`_progress/<shard>.done.json`) is written. A shard counts as done once that record exists,
so a retried or re-run shard is rewritten from scratch and no video is ever stored twice.
"""

from __future__ import annotations

import contextlib
import functools
import json
import tarfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import cv2
import numpy as np

from schemas.dataset import DALI_INDEX_SUFFIX, SHARDS_DIR
from schemas.manifest import VideoRecord
from schemas.sample import (
    DEFAULT_FLOW_BOUND,
    DEFAULT_JPEG_QUALITY,
    FLOW_ENCODINGS,
    FLOW_MODALITIES,
    MODALITIES,
    RGB,
    Sample,
    SampleMeta,
    dali_index,
    dali_index_of,
    encode_jpeg,
    encode_quantized_flow,
    encode_sample,
    head_bytes,
    sample_ranges,
    write_sample,
)
from storage import HashingWriter, Location, redact

from .decode import DecodeConfig, VideoError, VideoStream
from .flow import HomographyConfig, resolve_params
from .flow_requests import FlowSpec, LocalFlow
from .plan import ShardSpec
from .time_limit import TimeLimitExceeded, call_with_time_limit
from .video_flow import VideoFlow

PROGRESS_DIR = "_progress"  # one completion record per finished shard
DONE_SUFFIX = ".done.json"
LISTED_MISSING = "file not found (listed as missing in the manifest)"  # a manifest row whose file was not there
FRAME_CHUNK = 64  # frames decoded at a time when no flow is computed


@dataclass(frozen=True)
class ProcessConfig:
    """What each video becomes (the parameters every shard task shares)."""

    modalities: tuple[str, ...] = (RGB, "tvl1")
    decode: DecodeConfig = DecodeConfig()
    flow_preset: str = "opencv"
    flow_params: tuple[tuple[str, object], ...] = ()  # individual TV-L1 / homography overrides
    flow_bound: float = DEFAULT_FLOW_BOUND
    flow_encoding: str = "jpeg"
    jpeg_quality: int = DEFAULT_JPEG_QUALITY
    # How the work runs, so a resumed run may change them: flow_batch and device change the stored flow by float
    # rounding at most (CPU vs GPU); video_timeout only whether a slow video is stored or recorded as failed.
    flow_batch: int | None = None  # frame pairs per flow launch; None = 8 on the CPU, 256 on a GPU
    device: str | None = None  # None: cuda when the task sees a GPU, else cpu
    video_timeout: float | None = 3600.0  # seconds one video may take before it fails as timed out; None = no limit

    def __post_init__(self):
        unknown = [m for m in self.modalities if m not in MODALITIES]
        if unknown or not self.modalities or len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"modalities must be distinct names from {', '.join(MODALITIES)}, got {','.join(self.modalities)}")
        if self.flow_encoding not in FLOW_ENCODINGS:
            raise ValueError(f"flow encoding must be one of {', '.join(FLOW_ENCODINGS)}, got {self.flow_encoding!r}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"JPEG quality must be 1..100, got {self.jpeg_quality}")
        if not self.flow_bound > 0:
            raise ValueError(f"flow bound must be positive, got {self.flow_bound}")
        if self.flow_batch is not None and self.flow_batch < 1:
            raise ValueError(f"flow batch must be at least 1, got {self.flow_batch}")
        if self.video_timeout is not None and not self.video_timeout > 0:
            raise ValueError(f"video time limit must be positive seconds (or none), got {self.video_timeout}")
        resolve_params(self.flow_preset, dict(self.flow_params))  # raises ValueError on unknown names

    def estimated_video_mb(self, frames: int = 300) -> float:
        """Rough size of one stored video (default: 10 s at 30 fps), for choosing videos per shard."""
        w, h = self.decode.size or (340, self.decode.short_side or 256)
        pixels = w * h / (340 * 256)
        per_frame = 0.0
        if RGB in self.modalities:
            per_frame += 0.030 * pixels * self.jpeg_quality / 95  # an RGB JPEG at q95 is ~30 KB at 340x256
        per_flow = {"jpeg": 0.012, "png16": 0.2, "float16": 0.35}[self.flow_encoding] * pixels
        per_frame += per_flow * len(self.flow_modalities)
        frames = min(frames, self.decode.max_frames or frames)
        return max(per_frame * frames, 1e-3)

    @property
    def flow_modalities(self) -> tuple[str, ...]:
        """The flow modalities asked for, in order."""
        return tuple(m for m in self.modalities if m in FLOW_MODALITIES)

    def flow_spec(self) -> FlowSpec:
        """How the flow workers solve and store flow for these samples."""
        return FlowSpec(self.flow_preset, self.flow_params, self.flow_encoding, self.flow_bound)

    def homography(self) -> HomographyConfig:
        """How warped flow finds the camera motion (in the shard tasks)."""
        return resolve_params(self.flow_preset, dict(self.flow_params))[1]

    def flow_worker(self):
        """A flow worker for this process (when no flow service computes the flow); imports torch."""
        from .flow_service import FlowWorker

        return FlowWorker(self.flow_spec(), self.flow_batch, self.device)

    def output_parameters(self) -> dict:
        """What the stored samples depend on, as JSON values: the resume fingerprint and dataset.json's record.
        Runtime settings (device, flow batch, compile, time limit) are left out."""
        decode = asdict(self.decode)
        if not decode["strict"]:  # came later: left out at its default, so datasets built before resume
            del decode["strict"]
        return json.loads(
            json.dumps(
                {
                    "modalities": self.modalities,
                    "decode": decode,
                    "flow": self.flow_description(),
                    "flow_bound": self.flow_bound,
                    "flow_encoding": self.flow_encoding,
                    "jpeg_quality": self.jpeg_quality,
                }
            )
        )

    def flow_description(self) -> dict:
        """The flow parameters written into every sample's metadata."""
        tvl1, homography = resolve_params(self.flow_preset, dict(self.flow_params))
        solver = tvl1.solver_parameters()
        return {
            m: {"preset": self.flow_preset, "tvl1": solver, **({"homography": asdict(homography)} if m == "warp_tvl1" else {})}
            for m in self.flow_modalities
        }


@dataclass
class VideoResult:
    """One row of results.parquet: what happened to one manifest video."""

    video_id: str
    split: str
    shard: str
    status: str  # "ok" or "failed"
    reason: str  # "" when ok
    seconds: float
    frames: int = 0
    bytes: int = 0  # the sample's bytes in the tar, headers and padding included
    label: int = -1
    offset: int = -1  # where the sample starts in the tar; -1 in records written before flowshard kept it
    head: int = 0  # the sample's bytes up to and including its member table; 0: no table (written before one was)
    rotation: int = 0  # degrees counter-clockwise its frames were turned for display (its display matrix)
    mirrored: bool = False  # and mirrored after the turn
    frames_lost: int = 0  # frames damaged packets lost (decoded past: the video was kept without them)
    lost_at: str = ""  # when they were to be shown: '1.44-1.72 s'

    def __post_init__(self):
        self.reason = redact(self.reason)  # it may name a video's URI, credentials and all; results are stored and printed


@dataclass
class ShardResult:
    """What happened to one shard: its tar (or none), size and digest, and every video's result; the completion record."""

    name: str
    split: str
    tar: str | None  # file name under shards/, None when no video of the shard could be used
    samples: int
    bytes: int
    sha256: str
    seconds: float
    videos: list[VideoResult] = field(default_factory=list)
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage (Timings.STAGES) of the task
    node: str = ""  # the Ray node that ran it ("" outside Ray)
    flow_pairs: int = 0  # pairs whose flow this task computed itself (without a flow service)

    def to_json(self) -> str:
        """The completion record's text."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ShardResult:
        """A completion record read back."""
        raw = json.loads(text)
        raw["videos"] = [VideoResult(**v) for v in raw["videos"]]
        return cls(**raw)


class Timings:
    """Seconds a shard task spent per stage, for the run report."""

    STAGES = ("decode", "encode", "flow_wait", "homography", "write")

    def __init__(self):
        self.seconds = dict.fromkeys(self.STAGES, 0.0)
        self.seconds["solve"] = 0.0  # the solver's own seconds for the task's pairs (in the flow workers or here)

    def add(self, name: str, seconds: float) -> None:
        """Count `seconds` spent elsewhere (the solver's, reported back with each flow chunk) in `name`."""
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    @contextlib.contextmanager
    def stage(self, name: str):
        """Add the time spent inside the block to stage `name`."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start


def _gray(chunk: np.ndarray) -> np.ndarray:
    return np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in chunk])


def process_video(
    record: VideoRecord, cfg: ProcessConfig, flow=None, stop: threading.Event | None = None, timings: Timings | None = None
) -> Sample:
    """Decode one video a chunk at a time and compute its modalities; only encoded frames are kept, so memory
    grows with the video's stored size, not its decoded one. Setting `stop` makes it give up at the next frame
    or chunk.

    Args:
        flow: where flow is computed (`pipeline.flow_requests.LocalFlow`, or the flow service's client); None:
            a worker in this process.
    Raises:
        VideoError: the video cannot be used, or was stopped (the reason is one line).
    """
    if not record.exists:
        raise VideoError(LISTED_MISSING)
    timings = timings or Timings()
    if cfg.flow_modalities and flow is None:
        flow = LocalFlow(cfg.flow_worker())
    rgb: list[bytes] = []
    encode = functools.partial(encode_quantized_flow, encoding=cfg.flow_encoding, quality=cfg.jpeg_quality)
    video_flow = VideoFlow(flow, cfg.flow_modalities, cfg.homography(), encode, timings) if cfg.flow_modalities else None
    with VideoStream(record.path, cfg.decode, record.start_sec, record.end_sec, stop) as video:
        chunks = video.chunks(flow.batch_size if flow else FRAME_CHUNK)
        while True:
            with timings.stage("decode"):
                frames = next(chunks, None)
            if frames is None:
                break
            with timings.stage("encode"):
                if RGB in cfg.modalities:
                    rgb += [encode_jpeg(f, cfg.jpeg_quality) for f in frames]
                gray = _gray(frames) if video_flow else None
            if video_flow:
                if stop is not None and stop.is_set():
                    raise VideoError("stopped")
                video_flow.add(gray)
        flows, homographies = video_flow.finish() if video_flow else ({}, [])
        meta = _sample_meta(record, cfg, video, homographies)
    return Sample(meta=meta, rgb=rgb, flow=flows)


def _sample_meta(record: VideoRecord, cfg: ProcessConfig, video: VideoStream, homographies: list[dict]) -> SampleMeta:
    """The `json` member of a video that streamed to its end: what it is, how it was made."""
    return SampleMeta(
        video_id=record.video_id,
        label=record.label,
        label_name=record.label_name,
        split=record.split,
        source=record.path,
        fps=float(video.fps),
        num_frames=video.emitted,
        height=video.size[1],
        width=video.size[0],
        modalities=tuple(cfg.modalities),
        flow_encoding=cfg.flow_encoding,
        flow_bound=cfg.flow_bound,
        jpeg_quality=cfg.jpeg_quality,
        flow_params=cfg.flow_description(),
        homographies=homographies,
        start_sec=record.start_sec,
        end_sec=record.end_sec,
        rotation=video.orientation.rotation,
        mirrored=video.orientation.mirrored,
        frames_lost=video.damage.frames,
        lost_at=video.damage.where(),
    )


def process_shard(
    spec: ShardSpec,
    cfg: ProcessConfig,
    out: Location,
    on_video: Callable[[VideoResult], None] | None = None,
    flow=None,
) -> ShardResult:
    """Process every video of a shard and write the shard tar, then its completion record.

    A video that cannot be used, or takes longer than `cfg.video_timeout`, becomes a failed VideoResult with
    its reason; the others are written. `on_video` is called after each video (for progress reporting);
    `flow` is where flow is computed (see `process_video`).
    """
    start = time.monotonic()
    local = None  # this task's own flow worker, when no flow service is given
    if cfg.flow_modalities and flow is None:
        local = cfg.flow_worker()
        flow, at_start = LocalFlow(local), local.stats()
    timings = Timings()
    results: list[VideoResult] = []
    tar_name, samples, size, digest = f"{spec.name}.tar", 0, 0, ""
    index: list[list[tuple]] = []  # each written sample's members, for the DALI index
    with out.atomic_write(SHARDS_DIR, tar_name) as stream:
        writer = HashingWriter(stream)
        with tarfile.open(fileobj=writer, mode="w|") as sink:  # a stream: no seeks, so any store takes it
            for record in spec.records:
                result = _add_video(record, spec, cfg, flow, timings, sink, index)
                samples += result.status == "ok"
                results.append(result)
                if on_video is not None:
                    on_video(result)
        size, digest = writer.bytes, writer.sha256
    if samples == 0:  # nothing usable: no empty tar in the dataset, the record says why
        out.delete_file(SHARDS_DIR, tar_name)
        out.delete_file(SHARDS_DIR, spec.name + DALI_INDEX_SUFFIX)  # an earlier attempt's, if any
        tar_name, size, digest = None, 0, ""
    else:  # before the completion record: a shard whose index is missing is written again
        out.write_text(dali_index(index), SHARDS_DIR, spec.name + DALI_INDEX_SUFFIX)
    stages, flow_pairs = timings.seconds, 0
    if local is not None:  # its flow time was spent in this task, outside the stages above
        after = local.stats()
        compile_seconds = after["compile_seconds"] - at_start["compile_seconds"]
        stages = {**stages, "flow": after["flow_seconds"] - compile_seconds, "compile": compile_seconds}
        flow_pairs = after["pairs"]
    result = ShardResult(
        spec.name, spec.split, tar_name, samples, size, digest, time.monotonic() - start, results, stages, flow_pairs=flow_pairs
    )
    out.write_bytes(result.to_json().encode(), PROGRESS_DIR, spec.name + DONE_SUFFIX)
    return result


def _add_video(record: VideoRecord, spec: ShardSpec, cfg: ProcessConfig, flow, timings: Timings, sink, index: list) -> VideoResult:
    """Process one video within its time limit and write its sample to the shard (its byte range in the result, its
    members' places appended to `index`); a failure is a result too."""
    start = time.monotonic()
    try:
        sample = call_with_time_limit(functools.partial(process_video, record, cfg, flow, timings=timings), cfg.video_timeout)
    except (VideoError, TimeLimitExceeded) as exc:
        return VideoResult(record.video_id, spec.split, spec.name, "failed", str(exc), time.monotonic() - start, label=record.label)
    with timings.stage("write"):
        offset = sink.offset  # the tar's logical position (what reached the stream is behind it by tarfile's buffer)
        index.append(write_sample(sink, encode_sample(sample)))
    seconds, written = time.monotonic() - start, sink.offset - offset
    meta = sample.meta
    return VideoResult(
        record.video_id,
        spec.split,
        spec.name,
        "ok",
        "",
        seconds,
        meta.num_frames,
        written,
        record.label,
        offset,
        head_bytes(index[-1], offset),
        meta.rotation,
        meta.mirrored,
        meta.frames_lost,
        meta.lost_at,
    )


def index_finished_shards(out: Location, finished: list[ShardResult]) -> int:
    """Write the DALI index of each finished shard that lacks one (built before flowshard wrote them); returns
    how many were written. One listing of the shards folder, and a read of each such shard."""
    present = set(out.list(SHARDS_DIR))
    missing = [r for r in finished if r.tar is not None and r.name + DALI_INDEX_SUFFIX not in present]
    for result in missing:
        with out.open_input_stream(SHARDS_DIR, result.tar) as stream:
            index = dali_index_of(stream)
        out.write_text(index, SHARDS_DIR, result.name + DALI_INDEX_SUFFIX)
    return len(missing)


def locate_samples(out: Location, result: ShardResult) -> ShardResult:
    """`result` with each written sample's byte range, from its shard's DALI index where the completion record was
    written before flowshard kept them (its sizes were approximate: the tar stream's buffer was counted); as it is
    otherwise."""
    if result.tar is None or all(v.offset >= 0 for v in result.videos if v.status == "ok"):
        return result
    ranges = sample_ranges(out.read_text(SHARDS_DIR, result.name + DALI_INDEX_SUFFIX))
    videos = [replace(v, offset=ranges[v.video_id][0], bytes=ranges[v.video_id][1]) if v.status == "ok" else v for v in result.videos]
    return replace(result, videos=videos)


def completed_shards(out: Location) -> dict[str, ShardResult]:
    """The shards whose completion record exists, by name."""
    done = {}
    for name in out.list(PROGRESS_DIR, suffix=DONE_SUFFIX):
        result = ShardResult.from_json(out.read_bytes(PROGRESS_DIR, name).decode())
        done[result.name] = result
    return done
