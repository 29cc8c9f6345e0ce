"""Calibration: a few videos through the real stages at a run's settings, to measure what a plan needs.

Each chosen video is processed by `shards.process_video`, cut to its first `frames` frames, with the flow
solved by the run's own flow service on the devices the run would use (or, without Ray, by a one-threaded flow
worker in the same process): what the flow path costs in a run (requests, transfers, workers sharing the cores
with the shard tasks) is in the measurement. What it measures is kept as sums with the pixels they cover, so that parts
measured in parallel merge (`merged`) and a plan scales them to every video's size (`per_pixel`): the bytes of
an RGB JPEG and of a flow pair's images, the seconds to decode (per stored pixel) and to encode (per output
pixel), and the flow solver's seconds per pair solved (per output pixel, with its share of the launches' padding:
short videos leave launches part empty, in a run as in its calibration).
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field, replace

from schemas.manifest import VideoRecord

from .census import VideoCensus
from .decode import VideoError
from .flow_requests import LocalFlow
from .shards import ProcessConfig, Timings, process_video

CALIBRATION_VIDEOS = 8
CALIBRATION_FRAMES = 32
SUMS = (
    "frames",
    "pairs",
    "decoded_pixels",
    "frame_pixels",
    "pair_pixels",
    "rgb_bytes",
    "decode_seconds",
    "encode_seconds",
    "homography_seconds",
    "solves",
    "padded_solves",
    "solve_seconds",
)  # the fields that add up over parts (compile_seconds: each part compiles, as each flow worker does: the longest)


@dataclass
class Calibration:
    """What `calibrate` measured, as sums (see the module)."""

    device: str = ""  # where the flow was solved: "cpu" or "cuda" ("" without flow)
    device_name: str = ""  # e.g. "NVIDIA H100 80GB HBM3", or "cpu"
    videos: list[str] = field(default_factory=list)  # the video ids processed
    failed: dict[str, str] = field(default_factory=dict)  # video id -> reason, where processing failed
    frames: int = 0  # frames kept
    pairs: int = 0  # frame pairs with flow (each flow modality solves each once)
    decoded_pixels: float = 0.0  # stored pixels of the frames decoded
    frame_pixels: float = 0.0  # output pixels of the frames kept
    pair_pixels: float = 0.0  # output pixels of the pairs
    rgb_bytes: int = 0  # the RGB JPEGs' data
    flow_bytes: dict[str, int] = field(default_factory=dict)  # per flow modality, its images' data
    decode_seconds: float = 0.0  # decoding and resizing
    encode_seconds: float = 0.0  # RGB JPEGs, gray frames, flow images
    homography_seconds: float = 0.0  # warped flow's camera motion (a shard task's work)
    solves: int = 0  # pairs the solver solved (a pair of warped flow twice: plain, then warped)
    padded_solves: int = 0  # the padding that filled its launches: a run pads as its calibration did
    solve_seconds: float = 0.0  # the solver's, padding included, compiling left out
    compile_seconds: float = 0.0  # compiling the solver's kernels: once per flow worker in a run
    seconds: float = 0.0  # wall time of the calibration (the longest part, once merged)

    def per_pixel(self) -> dict:
        """The rates a plan scales by each video's pixels; a rate nothing measured is None."""
        per = lambda total, pixels, scale=1.0: scale * total / pixels if pixels else None  # noqa: E731
        solve = self.solve_seconds / self.solves if self.solves else None  # per real solve: its share of padding too
        mean_pair_pixels = self.pair_pixels / self.pairs if self.pairs else None
        return {
            "rgb_bytes_per_pixel": per(self.rgb_bytes, self.frame_pixels) if self.rgb_bytes else None,
            "flow_bytes_per_pixel": {m: per(b, self.pair_pixels) for m, b in self.flow_bytes.items()},
            "decode_ns_per_pixel": per(self.decode_seconds, self.decoded_pixels, 1e9),
            "encode_ns_per_pixel": per(self.encode_seconds, self.frame_pixels, 1e9),
            "flow_ns_per_pixel": 1e9 * solve / mean_pair_pixels if solve and mean_pair_pixels else None,
            "homography_ms_per_pair": 1e3 * self.homography_seconds / self.pairs if self.homography_seconds and self.pairs else None,
            "flow_pairs_per_s": 1.0 / solve if solve else None,  # at the calibration's mean frame size
        }

    def to_dict(self) -> dict:
        return {**asdict(self), **self.per_pixel()}


def merged(parts: list[Calibration]) -> Calibration:
    """Calibrations measured in parallel as one: sums added, the wall time the longest part's."""
    total = Calibration(device=next((p.device for p in parts if p.device), ""))
    total.device_name = next((p.device_name for p in parts if p.device_name), "")
    for p in parts:
        total.videos += p.videos
        total.failed.update(p.failed)
        for name in SUMS:
            setattr(total, name, getattr(total, name) + getattr(p, name))
        for m, b in p.flow_bytes.items():
            total.flow_bytes[m] = total.flow_bytes.get(m, 0) + b
        total.seconds = max(total.seconds, p.seconds)
        total.compile_seconds = max(total.compile_seconds, p.compile_seconds)
    return total


def choose(census: list[VideoCensus], count: int = CALIBRATION_VIDEOS, seed: int = 0) -> list[str]:
    """`count` video ids drawn at random (seeded) from those the census expects to be ok."""
    ok = sorted(r.video_id for r in census if r.status == "ok")
    return sorted(random.Random(seed).sample(ok, min(count, len(ok))))


def calibrate(
    records: list[VideoRecord], cfg: ProcessConfig, census: dict[str, VideoCensus], frames: int = CALIBRATION_FRAMES, flow=None
) -> Calibration:
    """Process the first `frames` frames of each record at `cfg`'s settings and measure it (see the module).
    `census` gives each video's stored size (decoding costs by the stored pixel). `flow`: the run's flow service
    (its client), whose workers' stats the caller adds (`with_solver`); None: a one-threaded worker here."""
    cut = replace(cfg, decode=replace(cfg.decode, max_frames=min(frames, cfg.decode.max_frames or frames)), video_timeout=None)
    worker = None
    if cfg.flow_modalities and flow is None:
        from .flow_service import FlowWorker

        worker = FlowWorker(cfg.flow_spec(), cfg.flow_batch, cfg.device, threads=1)
        flow = LocalFlow(worker)
    timings, start = Timings(), time.monotonic()
    result = Calibration(flow_bytes={m: 0 for m in cfg.flow_modalities})
    for record in records:
        try:
            sample = process_video(record, cut, flow, timings=timings)
        except VideoError as exc:
            result.failed[record.video_id] = str(exc)
            continue
        meta, row = sample.meta, census[record.video_id]
        pixels = meta.width * meta.height
        result.videos.append(record.video_id)
        result.frames += meta.num_frames
        result.pairs += meta.num_flows if flow else 0
        result.decoded_pixels += row.width * row.height * meta.num_frames  # kept frames, each decoded once
        result.frame_pixels += pixels * meta.num_frames
        result.pair_pixels += pixels * meta.num_flows if flow else 0
        result.rgb_bytes += sum(len(b) for b in sample.rgb)
        for m in cfg.flow_modalities:
            result.flow_bytes[m] += sum(len(b) for members in sample.flow[m] for b in members)
    stages = timings.seconds
    result.decode_seconds, result.encode_seconds = stages.get("decode", 0.0), stages.get("encode", 0.0)
    result.homography_seconds = stages.get("homography", 0.0)
    result.seconds = time.monotonic() - start
    return with_solver(result, [worker.stats()]) if worker else result


def with_solver(calibration: Calibration, stats: list[dict]) -> Calibration:
    """`calibration` with the solver's figures from the flow workers' stats (`FlowWorker.stats`)."""
    if stats:
        calibration.device = "cuda" if any(s["device"].startswith("cuda") for s in stats) else "cpu"
        calibration.device_name = stats[0]["device"]
    calibration.solves = sum(s["pairs"] for s in stats)
    calibration.padded_solves = sum(s["padded_pairs"] for s in stats)
    calibration.solve_seconds = sum(s["flow_seconds"] - s["compile_seconds"] for s in stats)
    calibration.compile_seconds = max((s["compile_seconds"] for s in stats), default=0.0)
    return calibration
