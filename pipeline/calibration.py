"""Calibration: a few videos through the real stages at a run's settings, to measure what a plan needs.

Each chosen video is processed by `shards.process_video`, cut to its first `frames` frames, with the flow
solved by the run's own flow service on the devices the run would use (or, without Ray, by a one-threaded flow
worker in the same process): what the flow path costs in a run (requests, transfers, workers sharing the cores
with the shard tasks) is in the measurement. What it measures is kept as sums with the pixels they cover, so that parts
measured in parallel merge (`merged`) and a plan scales them to every video's size (`per_pixel`): the bytes of
an RGB JPEG and of a flow pair's images (beyond what an image costs whatever its size, its headers and tables:
a third of a 64x48 JPEG, `fixed_bytes`), the seconds to decode (per stored pixel) and to encode (per output
pixel), and the flow solver's seconds per pair solved (per output pixel, with its share of the launches' padding:
short videos leave launches part empty, in a run as in its calibration).

Each video's own sums are kept too (`per_video`): their spread gives a plan its range (`rate_bounds`: the rates
of the calibration videos drawn again with replacement, a bootstrap, whose middle 95% a run's rates are expected in).
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from schemas.manifest import VideoRecord
from schemas.sample import RGB, encode_flow, encode_jpeg

from .census import VideoCensus
from .decode import VideoError
from .flow_requests import LocalFlow
from .shards import ProcessConfig, Timings, process_video

CALIBRATION_VIDEOS = 8
CALIBRATION_FRAMES = 32
BOOTSTRAP_DRAWS = 1000  # resamples of the calibration videos behind a plan's range
RANGE_COVERAGE = 0.95  # the middle share of those resamples' rates that a range spans
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
    rgb_bytes_per_frame: float = 0.0  # what an RGB JPEG costs whatever its size (`fixed_bytes`)
    flow_bytes_per_pair: float = 0.0  # and a flow pair's images
    seconds: float = 0.0  # wall time of the calibration (the longest part, once merged)
    per_video: list[dict] = field(default_factory=list)  # each video's own sums (`_video_sums`), for `rate_bounds`

    def per_pixel(self) -> dict:
        """The rates a plan scales by each video's pixels; a rate nothing measured is None."""
        per = lambda total, pixels, scale=1.0: scale * total / pixels if pixels else None  # noqa: E731
        solve = self.solve_seconds / self.solves if self.solves else None  # per real solve: its share of padding too
        mean_pair_pixels = self.pair_pixels / self.pairs if self.pairs else None
        rgb_data = max(self.rgb_bytes - self.frames * self.rgb_bytes_per_frame, 0.0)  # beyond what any image costs
        flow_data = {m: max(b - self.pairs * self.flow_bytes_per_pair, 0.0) for m, b in self.flow_bytes.items()}
        return {
            "rgb_bytes_per_pixel": per(rgb_data, self.frame_pixels) if self.rgb_bytes else None,
            "rgb_bytes_per_frame": self.rgb_bytes_per_frame,
            "flow_bytes_per_pixel": {m: per(b, self.pair_pixels) for m, b in flow_data.items()},
            "flow_bytes_per_pair": self.flow_bytes_per_pair,
            "decode_ns_per_pixel": per(self.decode_seconds, self.decoded_pixels, 1e9),
            "encode_ns_per_pixel": per(self.encode_seconds, self.frame_pixels, 1e9),
            "flow_ns_per_pixel": 1e9 * solve / mean_pair_pixels if solve and mean_pair_pixels else None,
            "homography_ms_per_pair": 1e3 * self.homography_seconds / self.pairs if self.homography_seconds and self.pairs else None,
            "flow_pairs_per_s": 1.0 / solve if solve else None,  # at the calibration's mean frame size
        }

    def rate_bounds(self, draws: int = BOOTSTRAP_DRAWS, seed: int = 0) -> tuple[dict, dict]:
        """(low, high) rates in `per_pixel`'s terms: the calibration videos drawn again with replacement `draws`
        times (seeded), each draw's rates as `per_pixel` computes them (so a small video weighs little), and the
        middle `RANGE_COVERAGE` of them: how far the rates of the videos not measured may plausibly lie from these.
        The solver's rate (measured over all videos by the flow workers) is scaled by each draw's solver seconds per
        pixel against all videos'. Each bound holds the `per_pixel` rate between them."""
        mean = self.per_pixel()
        if len(self.per_video) < 2:
            return mean, mean
        rng, n = random.Random(seed), len(self.per_video)
        everyone = _solve_per_pixel(self.per_video)
        samples = []
        for _ in range(draws):
            picked = [self.per_video[rng.randrange(n)] for _ in range(n)]
            drawn = _sums_of(picked, list(self.flow_bytes))
            drawn.rgb_bytes_per_frame, drawn.flow_bytes_per_pair = self.rgb_bytes_per_frame, self.flow_bytes_per_pair
            rates = drawn.per_pixel()
            solve = _solve_per_pixel(picked)
            rates["flow_ns_per_pixel"] = mean["flow_ns_per_pixel"] * solve / everyone if mean["flow_ns_per_pixel"] and everyone else None
            samples.append(rates)

        def spread(get) -> tuple[float | None, float | None]:
            values = sorted(v for v in (get(r) for r in samples) if v is not None)
            if not values or get(mean) is None:
                return get(mean), get(mean)
            cut = int(len(values) * (1 - RANGE_COVERAGE) / 2)
            return min(values[cut], get(mean)), max(values[-1 - cut], get(mean))

        low, high = dict(mean), dict(mean)
        for key in ("rgb_bytes_per_pixel", "decode_ns_per_pixel", "encode_ns_per_pixel", "homography_ms_per_pair", "flow_ns_per_pixel"):
            low[key], high[key] = spread(lambda r, key=key: r[key])
        low["flow_bytes_per_pixel"], high["flow_bytes_per_pixel"] = {}, {}
        for m in mean["flow_bytes_per_pixel"]:
            low["flow_bytes_per_pixel"][m], high["flow_bytes_per_pixel"][m] = spread(lambda r, m=m: r["flow_bytes_per_pixel"].get(m))
        return low, high

    def to_dict(self) -> dict:
        return {**asdict(self), **self.per_pixel()}


def merged(parts: list[Calibration]) -> Calibration:
    """Calibrations measured in parallel as one: sums added, the wall time the longest part's."""
    total = Calibration(device=next((p.device for p in parts if p.device), ""))
    total.device_name = next((p.device_name for p in parts if p.device_name), "")
    total.rgb_bytes_per_frame = max((p.rgb_bytes_per_frame for p in parts), default=0.0)  # the same in every part
    total.flow_bytes_per_pair = max((p.flow_bytes_per_pair for p in parts), default=0.0)
    for p in parts:
        total.videos += p.videos
        total.per_video += p.per_video
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
    result.rgb_bytes_per_frame, result.flow_bytes_per_pair = fixed_bytes(cfg)
    for record in records:
        before = dict(timings.seconds)
        try:
            sample = process_video(record, cut, flow, timings=timings)
        except VideoError as exc:
            result.failed[record.video_id] = str(exc)
            continue
        meta, row = sample.meta, census[record.video_id]
        spent = {stage: timings.seconds[stage] - before[stage] for stage in before}
        result.per_video.append(_video_sums(sample, row.width * row.height, spent, cfg.flow_modalities, bool(flow)))
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


def fixed_bytes(cfg: ProcessConfig) -> tuple[float, float]:
    """(RGB JPEG, flow pair) bytes an image costs whatever its size at `cfg`'s encoding: its headers and tables (an
    8x8 flat image's whole size; at quality 95, 629 bytes a JPEG, a third of a 64x48 frame's)."""
    rgb = len(encode_jpeg(np.full((8, 8, 3), 128, np.uint8), cfg.jpeg_quality)) if RGB in cfg.modalities else 0
    pair = sum(len(b) for b in encode_flow(np.zeros((8, 8, 2), np.float32), cfg.flow_encoding, cfg.flow_bound, cfg.jpeg_quality))
    return float(rgb), float(pair) if cfg.flow_modalities else 0.0


def _video_sums(sample, stored_pixels: int, spent: dict[str, float], flows: tuple[str, ...], with_flow: bool) -> dict:
    """One calibration video's own sums (`SUMS`, the solver's left out), its flow bytes and the solver's seconds for
    its pairs (`FlowChunk.seconds`: its share of the launches it was in, however long it waited for them)."""
    meta = sample.meta
    pixels = meta.width * meta.height
    return {
        "video_id": meta.video_id,
        "frames": meta.num_frames,
        "pairs": meta.num_flows if with_flow else 0,
        "decoded_pixels": stored_pixels * meta.num_frames,
        "frame_pixels": pixels * meta.num_frames,
        "pair_pixels": pixels * meta.num_flows if with_flow else 0,
        "rgb_bytes": sum(len(b) for b in sample.rgb),
        "flow_bytes": {m: sum(len(b) for f in sample.flow[m] for b in f) for m in flows},
        "decode_seconds": spent["decode"],
        "encode_seconds": spent["encode"],
        "homography_seconds": spent["homography"],
        "solve_seconds": spent["solve"],
    }


def _sums_of(videos: list[dict], flows: list[str]) -> Calibration:
    """A Calibration of these videos' own sums (as `_video_sums` keeps them; no solver figures)."""
    total = Calibration(flow_bytes=dict.fromkeys(flows, 0))
    for v in videos:
        for name in ("frames", "pairs", "decoded_pixels", "frame_pixels", "pair_pixels", "rgb_bytes", "decode_seconds", "encode_seconds"):
            setattr(total, name, getattr(total, name) + v[name])
        total.homography_seconds += v["homography_seconds"]
        for m in flows:
            total.flow_bytes[m] += v["flow_bytes"].get(m, 0)
    return total


def _solve_per_pixel(videos: list[dict]) -> float:
    """The solver's seconds for these videos' pairs, per pair pixel (0 without flow)."""
    pixels = sum(v["pair_pixels"] for v in videos)
    return sum(v["solve_seconds"] for v in videos) / pixels if pixels else 0.0


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
