"""Preprocess a manifest into WebDataset shards of RGB frames and TV-L1 / warped TV-L1 flow, on Ray.

python -m jobs.preprocess --manifest m.parquet --out data/ [--modalities rgb,tvl1,warp_tvl1]
python -m jobs.preprocess --manifest m.parquet --out data/ --dry-run plan/   # what it would do and cost, first
ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m jobs.preprocess --manifest ...
"""

from __future__ import annotations

import argparse
import ast
from dataclasses import dataclass

from jobs.common import ArgumentParser, check_locations, cli, parse_size, write_config
from pipeline.decode import PIXEL_GRIDS, DecodeConfig
from pipeline.dry_run import DryRunConfig, dry_run
from pipeline.flow import PRESETS
from pipeline.preprocess import PreprocessConfig, format_summary, run_preprocess
from pipeline.ray_tasks import ClusterConfig
from pipeline.shards import ProcessConfig
from schemas.sample import FLOW_ENCODINGS, MODALITIES
from storage import join

EXIT_FAILURES = 1  # --strict and some videos failed


@dataclass(frozen=True)
class PreprocessJobConfig:
    """The command line: a run, and how the command exits when some videos failed."""

    run: PreprocessConfig
    strict: bool = False
    dry_run: DryRunConfig | None = None  # plan the run instead of running it


def _modalities(text: str) -> tuple[str, ...]:
    names = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in names if m not in MODALITIES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown modality {','.join(unknown) or text!r}; choose from {','.join(MODALITIES)}")
    return tuple(m for m in MODALITIES if m in names)  # one order: tvl1,rgb is the run rgb,tvl1 is


def _flow_param(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE such as lambda=0.2, got {text!r}")
    lowered = value.strip().lower()
    if lowered in ("true", "false", "none"):
        return key.strip(), {"true": True, "false": False, "none": None}[lowered]
    try:
        return key.strip(), ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
        return key.strip(), value.strip()


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m jobs.preprocess",
        description="Decode the videos of a manifest, compute optical flow, and write WebDataset shards "
        "(OUT/shards/<split>-NNNNNN.tar) with OUT/index.parquet, OUT/results.parquet and OUT/dataset.json. "
        "Runs on an embedded local Ray unless --address or RAY_ADDRESS names a cluster. Re-running resumes; a manifest "
        "with rows added grows the dataset, processing only the new videos.",
        add_help=add_help,
    )
    # Every default comes from the configuration types (the help shows it with %(default)s), so none can drift.
    process, decode, cluster, run_defaults = ProcessConfig(), DecodeConfig(), ClusterConfig(), PreprocessConfig(manifest="", out="")
    io = parser.add_argument_group("input and output")
    io.add_argument("--manifest", required=True, help="manifest written by `python -m jobs.manifest` (a local path or URI)")
    io.add_argument(
        "--out",
        required=True,
        help="output folder: a local path (created if missing; on several nodes it must be "
        "shared by all) or an object-storage URI such as s3://bucket/prefix",
    )
    io.add_argument("--overwrite", action="store_true", help="delete the shards already in --out and start over")
    io.add_argument(
        "--retry-failed",
        action="store_true",
        help="process again, into new shards, the videos of --out whose result is failed (after fixing or "
        "re-downloading their files); one that succeeds becomes ok, one that fails again keeps its one row",
    )
    io.add_argument("--strict", action="store_true", help="exit with status 1 when any video failed (default: 0, failures are listed)")

    frames = parser.add_argument_group("frames")
    frames.add_argument(
        "--modalities",
        type=_modalities,
        default=process.modalities,
        help=f"comma-separated subset of rgb,tvl1,warp_tvl1 (default {','.join(process.modalities)})",
    )
    size = frames.add_mutually_exclusive_group()
    size.add_argument(
        "--short-side",
        type=int,
        default=decode.short_side,
        help="resize so the shorter side is this many pixels, never upscaling (default %(default)s)",
    )
    size.add_argument("--size", type=parse_size, help="resize to exactly WIDTHxHEIGHT (e.g. 340x256) instead")
    frames.add_argument("--fps", type=float, help="resample to this frame rate (default: keep every frame)")
    frames.add_argument("--max-frames", type=int, help="keep at most this many frames per video (default: all)")
    frames.add_argument(
        "--pixel-grid",
        choices=PIXEL_GRIDS,
        default=decode.pixel_grid,
        help="stored: pixels as stored, like OpenCV-based tools; square: correct the sample aspect ratio (default %(default)s)",
    )
    frames.add_argument(
        "--strict-decode",
        action="store_true",
        help="fail a video with damaged packets (default: kept without the frames they lose, as players show it; "
        "results.parquet records the frames lost and when)",
    )
    frames.add_argument(
        "--jpeg-quality",
        type=int,
        default=process.jpeg_quality,
        help="JPEG quality of RGB frames and flow images (default %(default)s)",
    )

    flow = parser.add_argument_group("optical flow")
    flow.add_argument(
        "--flow-preset",
        choices=list(PRESETS),
        default=process.flow_preset,
        help="TV-L1 preset: opencv (OpenCV's defaults) or accurate (default %(default)s)",
    )
    flow.add_argument(
        "--flow-param",
        type=_flow_param,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override one TV-L1 or homography parameter, e.g. lambda_=0.2 or warps=3 (repeatable)",
    )
    flow.add_argument(
        "--flow-bound",
        type=float,
        default=process.flow_bound,
        help="flow clipped to +-this many pixels before 8-bit quantisation (default %(default)g)",
    )
    flow.add_argument(
        "--flow-encoding",
        choices=FLOW_ENCODINGS,
        default=process.flow_encoding,
        help="jpeg: 8-bit x/y JPEGs; png16 or float16: lossless (default %(default)s)",
    )
    flow.add_argument(
        "--flow-batch", type=int, help="frame pairs per flow launch, the same for every launch (default 8 on the CPU, 256 on a GPU)"
    )
    flow.add_argument("--device", choices=("cpu", "cuda"), help="force the flow device (default: cuda when a task has a GPU)")
    flow.add_argument(
        "--video-timeout",
        type=float,
        default=process.video_timeout,
        help="seconds one video may take before it is recorded as failed (timed out) and its shard goes on; "
        "0 = no limit (default %(default)g)",
    )

    run = parser.add_argument_group("sharding and cluster")
    run.add_argument(
        "--shard-size-mb", type=float, default=run_defaults.shard_size_mb, help="approximate shard size in MB (default %(default)g)"
    )
    run.add_argument("--videos-per-shard", type=int, help="videos per shard, instead of estimating it from --shard-size-mb")
    run.add_argument(
        "--address", help="Ray cluster address (host:6379 or ray://host:10001); default: RAY_ADDRESS, else an embedded local Ray"
    )
    run.add_argument("--cpus-per-task", type=float, default=cluster.cpus_per_task, help="CPUs per shard task (default %(default)g)")
    run.add_argument(
        "--flow-workers",
        type=int,
        help="flow workers: default one per GPU (each owns it), or on a cluster without GPUs one single-threaded "
        "worker per CPU core of each node; N = N in all on GPUs, N per node without; 0 = each shard task computes its own flow",
    )
    run.add_argument(
        "--max-retries", type=int, default=cluster.max_retries, help="retries of a shard task whose worker died (default %(default)s)"
    )
    run.add_argument(
        "--lease-seconds",
        type=float,
        default=run_defaults.lease_seconds,
        help="a run holds --out so that a second run on it is refused; on object storage that hold is renewed while the run "
        "lives and outlives a killed run by this many seconds, after which its rerun takes over (on a local or shared "
        "disk it ends with the run's process) (default %(default)g)",
    )
    run.add_argument(
        "--progress-seconds", type=float, default=run_defaults.progress_seconds, help="seconds between progress lines (default %(default)g)"
    )

    before = parser.add_argument_group("before a run (see README: Before a big run)")
    dry_defaults = DryRunConfig(plan_dir="")
    before.add_argument(
        "--dry-run",
        metavar="DIR",
        help="plan the run instead of running it: a census of its videos, a calibration of a few through the real stages, "
        "and the forecast (failures, frames, bytes, wall time, cost) written to DIR/plan.json, DIR/census.parquet and DIR/plan.png; "
        "nothing is written under --out",
    )
    before.add_argument(
        "--calibration-videos",
        type=int,
        default=dry_defaults.calibration_videos,
        help="videos a dry run puts through the real stages, drawn at random (default %(default)s)",
    )
    before.add_argument(
        "--calibration-frames",
        type=int,
        default=dry_defaults.calibration_frames,
        help="frames of each calibration video (default %(default)s)",
    )
    before.add_argument("--price-cpu-hour", type=float, help="a dry run's price of one CPU core for an hour, to cost the run")
    before.add_argument("--price-gpu-hour", type=float, help="a dry run's price of one GPU for an hour, to cost the run")
    before.add_argument(
        "--compare-plan",
        metavar="DIR",
        help="end the run with its figures beside those a --dry-run DIR planned with the same command (also in report.json)",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> PreprocessJobConfig:
    decode = DecodeConfig(
        short_side=None if args.size else args.short_side,
        size=args.size,
        fps=args.fps,
        max_frames=args.max_frames,
        pixel_grid=args.pixel_grid,
        strict=args.strict_decode,
    )
    process = ProcessConfig(
        modalities=args.modalities,
        decode=decode,
        flow_preset=args.flow_preset,
        flow_params=tuple(args.flow_param),
        flow_bound=args.flow_bound,
        flow_encoding=args.flow_encoding,
        jpeg_quality=args.jpeg_quality,
        flow_batch=args.flow_batch,
        device=args.device,
        video_timeout=args.video_timeout or None,
    )
    cluster = ClusterConfig(
        address=args.address, cpus_per_task=args.cpus_per_task, flow_workers=args.flow_workers, max_retries=args.max_retries
    )
    if args.videos_per_shard is not None and args.videos_per_shard < 1:
        raise ValueError(f"--videos-per-shard must be at least 1, got {args.videos_per_shard}")
    if args.shard_size_mb <= 0:
        raise ValueError(f"--shard-size-mb must be positive, got {args.shard_size_mb}")
    if not args.lease_seconds >= 5:
        raise ValueError(f"--lease-seconds must be at least 5 (it is renewed every fifth of it), got {args.lease_seconds:g}")
    run = PreprocessConfig(
        manifest=args.manifest,
        out=args.out,
        process=process,
        cluster=cluster,
        shard_size_mb=args.shard_size_mb,
        videos_per_shard=args.videos_per_shard,
        overwrite=args.overwrite,
        retry_failed=args.retry_failed,
        compare_plan=args.compare_plan,
        progress_seconds=args.progress_seconds,
        lease_seconds=args.lease_seconds,
    )
    dry, defaults = None, DryRunConfig(plan_dir="")
    planning = {
        "--calibration-videos": args.calibration_videos != defaults.calibration_videos,
        "--calibration-frames": args.calibration_frames != defaults.calibration_frames,
        "--price-cpu-hour": args.price_cpu_hour is not None,
        "--price-gpu-hour": args.price_gpu_hour is not None,
    }
    if not args.dry_run and any(planning.values()):
        flag = next(f for f, given in planning.items() if given)
        raise ValueError(f"{flag} applies to a plan: add --dry-run DIR, or leave it out")
    if args.dry_run:
        dry = DryRunConfig(
            plan_dir=args.dry_run,
            calibration_videos=args.calibration_videos,
            calibration_frames=args.calibration_frames,
            price_cpu_hour=args.price_cpu_hour,
            price_gpu_hour=args.price_gpu_hour,
        )
    return PreprocessJobConfig(run=run, strict=args.strict, dry_run=dry)


def main(cfg: PreprocessJobConfig) -> int:
    if cfg.dry_run is not None:
        check_locations(cfg.run.manifest, outputs=(cfg.run.out, cfg.dry_run.plan_dir))
        dry_run(cfg.run, cfg.dry_run, print_fn=lambda line: print(line, flush=True))
        return 0
    check_locations(cfg.run.manifest, outputs=(cfg.run.out,))
    summary = run_preprocess(cfg.run, print_fn=lambda line: print(line, flush=True))
    write_config(cfg, join(cfg.run.out, "preprocess.config.json"))
    print(format_summary(summary, cfg.run.out), flush=True)
    return EXIT_FAILURES if cfg.strict and summary.failed else 0


if __name__ == "__main__":
    raise SystemExit(cli(get_args_parser, config_from_args, main))
