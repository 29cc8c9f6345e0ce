"""Train a TSN or I3D stream from shards (one process, or DDP on Ray Train with --workers N).

python -m jobs.train --data data/ucf101 --model tsn_flow --epochs 80 --out runs/flow
python -m jobs.train --data data/ucf101 --model tsn_rgb --workers 2 --out runs/rgb    # DDP, embedded Ray
python -m jobs.train --data s3://bucket/ucf101 --model tsn_rgb --workers 8 --address auto --out s3://bucket/runs/rgb

With --workers N, a rank or node lost mid-run restarts every rank from the run's last checkpoint (up to
--max-failures times) once the cluster can place them again; a cluster that cannot within --rank-wait seconds
ends the run with one sentence, the checkpoint kept for a later resume.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from dataclasses import asdict, dataclass
from unittest.mock import patch

from jobs.common import ArgumentParser, check_locations, cli
from storage import Location, join
from trainers.config import TrainConfig
from trainers.loop import check_dataset, run_training
from trainers.models import MODELS
from trainers.models.tsn import BACKBONES
from trainers.run_folder import BEST, CHECKPOINT, CURVES_PNG, METRICS_CSV

EXIT_STOPPED = 1  # a run that started and could not finish (not a usage error)


@dataclass(frozen=True)
class TrainJobConfig:
    """The command line of `jobs.train`: a training run, and how many Ray Train workers run it."""

    train: TrainConfig
    workers: int = 1  # Ray Train workers (DDP ranks); 1 = this process, no Ray
    address: str | None = None
    max_failures: int = 3  # times a lost rank or node restarts the ranks from the last checkpoint (Ray Train)
    rank_wait: float = 600.0  # seconds the cluster may take to place every rank (at the start and after a loss)

    def __post_init__(self):
        if self.workers < 1:
            raise ValueError(f"--workers must be at least 1, got {self.workers}")
        if self.max_failures < 0:
            raise ValueError(f"--max-failures must be 0 or more, got {self.max_failures}")
        if not self.rank_wait > 0:
            raise ValueError(f"--rank-wait must be positive seconds, got {self.rank_wait}")


class RunStopped(Exception):
    """A distributed run that started and ended without finishing; the message is one sentence."""


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    d = TrainConfig(data="", model="tsn_rgb", out="")
    parser = ArgumentParser(
        prog="python -m jobs.train", description="Train a two-stream (TSN) or I3D stream from flowshard shards.", add_help=add_help
    )
    parser.add_argument(
        "--data",
        required=True,
        help="a dataset written by `python -m jobs.preprocess` (its --out; a local path or URI such as s3://bucket/prefix)",
    )
    parser.add_argument("--model", required=True, choices=MODELS, help="tsn_rgb, tsn_flow, i3d_rgb or i3d_flow")
    parser.add_argument(
        "--out",
        required=True,
        help="run folder (a local path or URI): checkpoint.pt (resumed if present), best.pt, metrics.csv, curves.png, config.json",
    )
    parser.add_argument("--backbone", choices=list(BACKBONES), default=d.backbone, help="TSN backbone (default %(default)s)")
    parser.add_argument(
        "--flow-modality", choices=("tvl1", "warp_tvl1"), default=d.flow_modality, help="flow the *_flow models read (default %(default)s)"
    )
    parser.add_argument("--epochs", type=int, default=d.epochs, help="passes over the training split (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="videos per batch and rank (default %(default)s)")
    parser.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (default %(default)s)")
    parser.add_argument(
        "--optimizer", choices=("sgd", "adamw"), default=d.optimizer, help="SGD with momentum 0.9, or AdamW (default %(default)s)"
    )
    parser.add_argument("--weight-decay", type=float, default=d.weight_decay, help="L2 weight decay (default %(default)s)")
    parser.add_argument(
        "--schedule", choices=("cosine", "step"), default=d.schedule, help="after warm-up: cosine decay or x0.1 steps (default %(default)s)"
    )
    parser.add_argument("--step-epochs", type=int, nargs="*", default=[], help="epochs where the step schedule divides the lr by 10")
    parser.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs, help="linear warm-up (default %(default)g)")
    parser.add_argument("--clip-grad", type=float, default=d.clip_grad, help="max gradient norm, 0 = off (default %(default)g)")
    parser.add_argument("--dropout", type=float, default=d.dropout, help="before the classifier (default %(default)s)")
    parser.add_argument("--segments", type=int, default=d.segments, help="TSN segments K (default %(default)s)")
    parser.add_argument("--new-length", type=int, default=d.new_length, help="TSN flow: stacked flows per snippet L (default %(default)s)")
    parser.add_argument("--clip-len", type=int, default=d.clip_len, help="I3D: frames per clip (default %(default)s)")
    parser.add_argument("--interval", type=int, default=d.interval, help="I3D: frame step within a clip (default %(default)s)")
    parser.add_argument("--input-size", type=int, default=d.input_size, help="crop side fed to the network (default %(default)s)")
    parser.add_argument(
        "--no-flip", action="store_true", help="no horizontal flips (needed when left/right is the class, as in jobs.make_synthetic)"
    )
    parser.add_argument(
        "--pretrained", help="2D ImageNet weights (.pth state dict, torchvision names; a path or URI); nothing is downloaded"
    )
    workers = TrainJobConfig(train=d).workers
    parser.add_argument(
        "--workers", type=int, default=workers, help="DDP ranks on Ray Train; 1 = this process, no Ray (default %(default)s)"
    )
    parser.add_argument("--loader-workers", type=int, default=d.loader_workers, help="data loader processes per rank (default %(default)s)")
    parser.add_argument(
        "--decode-on-device",
        action="store_true",
        help="decode the frames on the training device (nvJPEG with --use-gpu) instead of in the loader workers, which then only "
        "read the shards and choose: fewer CPU cores per GPU",
    )
    parser.add_argument("--use-gpu", action="store_true", help="train on GPUs (one per rank), with mixed precision")
    parser.add_argument("--address", help="Ray cluster address for --workers > 1 (default: RAY_ADDRESS, else embedded Ray)")
    job = TrainJobConfig(train=d)
    parser.add_argument(
        "--max-failures",
        type=int,
        default=job.max_failures,
        help="with --workers > 1: times a lost rank or node restarts every rank from the last checkpoint (default %(default)s)",
    )
    parser.add_argument(
        "--rank-wait",
        type=float,
        default=job.rank_wait,
        help="with --workers > 1: seconds the cluster may take to place every rank, at the start and after a loss; "
        "then the run stops, its checkpoint kept (default %(default)g)",
    )
    parser.add_argument(
        "--eval-every",
        type=int,
        default=d.eval_every,
        help="validate every K epochs and after the last one: top-1/top-5/mean class in metrics.csv, the best epoch kept "
        "as best.pt (0 = never; default %(default)s)",
    )
    parser.add_argument("--eval-split", choices=("val", "test"), help="the split validated on (default: val if the data has it, else test)")
    parser.add_argument(
        "--eval-segments",
        type=int,
        default=d.eval_segments,
        help="TSN segments (I3D clips) per video when validating, centre crop; jobs.evaluate scores the full way (default %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=d.seed, help="(default %(default)s)")
    parser.add_argument("--print-freq", type=int, default=d.print_freq, help="steps between progress lines (default %(default)s)")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainJobConfig:
    train = TrainConfig(
        data=args.data,
        model=args.model,
        out=Location(args.out).uri_of(),
        backbone=args.backbone,
        flow_modality=args.flow_modality,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        optimizer=args.optimizer,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        step_epochs=tuple(args.step_epochs),
        warmup_epochs=args.warmup_epochs,
        clip_grad=args.clip_grad or None,
        dropout=args.dropout,
        segments=args.segments,
        new_length=args.new_length,
        clip_len=args.clip_len,
        interval=args.interval,
        input_size=args.input_size,
        flip=not args.no_flip,
        pretrained=args.pretrained,
        loader_workers=args.loader_workers,
        decode_on_device=args.decode_on_device,
        use_gpu=args.use_gpu,
        seed=args.seed,
        print_freq=args.print_freq,
        eval_every=args.eval_every,
        eval_split=args.eval_split,
        eval_segments=args.eval_segments,
    )
    return TrainJobConfig(train=train, workers=args.workers, address=args.address, max_failures=args.max_failures, rank_wait=args.rank_wait)


def _ray_train_loop(config: dict) -> None:
    """Runs on every Ray Train worker; Ray Train has set up torch.distributed (gloo on CPU, nccl on GPU)."""
    import ray.train

    _quiet_reports()
    config["step_epochs"] = tuple(config["step_epochs"])
    run_training(TrainConfig(**config), report=ray.train.report)


def _quiet_reports() -> None:
    """Silence Ray Train's "Reporting training result ..." INFO line (one per rank and epoch). Its logger is named
    after its file, outside the `ray.train` logger that RunConfig's LoggingConfig sets, and a restarted worker
    group logs it at INFO again; where a Ray version moves it, nothing breaks, the lines just show."""
    with contextlib.suppress(ImportError, AttributeError):
        from ray.train.v2._internal.execution import context

        context.logger.setLevel(logging.WARNING)


def train_with_ray(cfg: TrainJobConfig) -> None:
    """DDP on Ray Train. A failed rank (its process or node lost) restarts every rank, each resuming from the
    run folder's checkpoint, up to `max_failures` times; placing the ranks may take `rank_wait` seconds.

    Raises:
        RunStopped: the run could not finish (failures used up, or no room for the ranks in time).
    """
    from ray.train import FailureConfig, LoggingConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchTrainer

    from pipeline.ray_tasks import connect

    # Ray Train's controller reads this from the driver's environment: how long it waits for the ranks' placement
    # group. Its own retries of that wait are off (controller_failure_limit=0), so rank_wait is the whole wait.
    # Set for this run only (patch.dict restores the environment), so a caller in the same process keeps its own.
    with patch.dict(os.environ, {"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": str(cfg.rank_wait)}):
        connect(cfg.address, dashboard=True)
        trainer = TorchTrainer(
            _ray_train_loop,
            train_loop_config=asdict(cfg.train),
            scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.train.use_gpu),
            run_config=RunConfig(
                storage_path=join(cfg.train.out, "ray"),
                name="train",
                failure_config=FailureConfig(max_failures=cfg.max_failures, controller_failure_limit=0),
                # Ray Train's own INFO lines (a "Reporting training result ..." per rank and epoch) would bury the
                # run's; rank 0 says where the ranks run instead, and Ray Train's warnings and errors still show.
                logging_config=LoggingConfig(log_level="WARNING"),
            ),
        )
        try:
            trainer.fit()
        except TrainingFailedError as exc:
            raise RunStopped(_stopped_sentence(cfg, exc)) from exc


def _stopped_sentence(cfg: TrainJobConfig, exc: Exception) -> str:
    """Why a distributed run stopped, and how to go on, in one sentence."""
    controller_failure = getattr(exc, "controller_failure", None)  # Ray Train's ControllerError
    if type(controller_failure).__name__ == "WorkerGroupStartupTimeoutError":
        why = f"the cluster could not place {cfg.workers} ranks within {cfg.rank_wait:g} s (--rank-wait)"
    else:
        failures = getattr(exc, "worker_failures", None) or {}  # Ray Train's WorkerGroupError: rank -> error
        cause = next(iter(failures.values()), controller_failure or exc)
        detail = next((line.strip() for line in str(cause).splitlines() if line.strip()), type(cause).__name__)
        why = f"it failed {cfg.max_failures + 1} times (--max-failures {cfg.max_failures}), last with: {detail[:300]}"
    kept = Location(cfg.train.out).is_file(CHECKPOINT)
    then = "run the same command again to resume from its checkpoint" if kept else "it wrote no checkpoint"
    return f"training stopped: {why}; {then} ({cfg.train.out})"


def main(cfg: TrainJobConfig) -> int:
    """Train (or resume) the run; a distributed run that cannot finish exits 1 with one sentence."""
    check_locations(cfg.train.data, cfg.train.pretrained, outputs=(cfg.train.out,))
    check_dataset(cfg.train)  # a wrong --data or modality is one sentence here, not a failure on every rank
    if cfg.workers > 1:
        try:
            train_with_ray(cfg)
        except RunStopped as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_STOPPED
    else:
        run_training(cfg.train)
    best = f", best {join(cfg.train.out, BEST)}" if Location(cfg.train.out).is_file(BEST) else ""
    print(
        f"run {cfg.train.out}: checkpoint {join(cfg.train.out, CHECKPOINT)}{best}, metrics {join(cfg.train.out, METRICS_CSV)}, "
        f"curves {join(cfg.train.out, CURVES_PNG)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(cli(get_args_parser, config_from_args, main))
