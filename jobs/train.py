"""Train a TSN or I3D stream from shards (one process, or DDP on Ray Train with --workers N).

python -m jobs.train --data data/ucf101 --model tsn_flow --epochs 80 --out runs/flow
python -m jobs.train --data data/ucf101 --model tsn_rgb --workers 2 --out runs/rgb    # DDP, embedded Ray
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass

from jobs.common import check_locations, cli
from storage import Location, join
from trainers.loop import CHECKPOINT, METRICS_CSV, TrainConfig, run_training
from trainers.models import MODELS
from trainers.models.tsn import BACKBONES


@dataclass(frozen=True)
class TrainJobConfig:
    """The command line of `jobs.train`: a training run, and how many Ray Train workers run it."""

    train: TrainConfig
    workers: int = 1  # Ray Train workers (DDP ranks); 1 = this process, no Ray
    address: str | None = None


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    d = TrainConfig(data="", model="tsn_rgb", out="")
    parser = argparse.ArgumentParser(
        prog="python -m jobs.train", description="Train a two-stream (TSN) or I3D stream from flowshard shards.", add_help=add_help
    )
    parser.add_argument(
        "--data",
        required=True,
        help="a dataset written by `python -m jobs.preprocess` (its --out; a local path or URI such as s3://bucket/prefix)",
    )
    parser.add_argument("--model", required=True, choices=MODELS, help="tsn_rgb, tsn_flow, i3d_rgb or i3d_flow")
    parser.add_argument(
        "--out", required=True, help="run folder (a local path or URI): checkpoint.pt (resumed if present), metrics.csv, config.json"
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
    parser.add_argument("--use-gpu", action="store_true", help="train on GPUs (one per rank), with mixed precision")
    parser.add_argument("--address", help="Ray cluster address for --workers > 1 (default: RAY_ADDRESS, else embedded Ray)")
    parser.add_argument("--seed", type=int, default=d.seed, help="(default %(default)s)")
    parser.add_argument("--print-freq", type=int, default=d.print_freq, help="steps between progress lines (default %(default)s)")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainJobConfig:
    if args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
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
        use_gpu=args.use_gpu,
        seed=args.seed,
        print_freq=args.print_freq,
    )
    return TrainJobConfig(train=train, workers=args.workers, address=args.address)


def _ray_train_loop(config: dict) -> None:
    """Runs on every Ray Train worker; Ray Train has set up torch.distributed (gloo on CPU, nccl on GPU)."""
    import ray.train

    config["step_epochs"] = tuple(config["step_epochs"])
    run_training(TrainConfig(**config), report=ray.train.report)


def train_with_ray(cfg: TrainJobConfig) -> None:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipeline.ray_tasks import connect

    connect(cfg.address, dashboard=True)
    trainer = TorchTrainer(
        _ray_train_loop,
        train_loop_config=asdict(cfg.train),
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.train.use_gpu),
        run_config=RunConfig(storage_path=join(cfg.train.out, "ray"), name="train"),
    )
    trainer.fit()


def main(cfg: TrainJobConfig) -> int:
    check_locations(cfg.train.data, cfg.train.out, cfg.train.pretrained)
    if cfg.workers > 1:
        train_with_ray(cfg)
    else:
        run_training(cfg.train)
    print(f"run {cfg.train.out}: checkpoint {join(cfg.train.out, CHECKPOINT)}, metrics {join(cfg.train.out, METRICS_CSV)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli(get_args_parser, config_from_args, main))
