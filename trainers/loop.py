"""Training and evaluation loops: plain functions a reader can follow in one sitting.

`run_training` is what one process (or one DDP rank) does: build the model and loader, resume from the
run's last checkpoint if there is one, train epoch by epoch, checkpoint after each, and every `eval_every`
epochs score the validation split the test way (all ranks, each its own shards) and keep the best checkpoint.
Distributed training (Ray Train in `jobs.train`) only differs in that torch.distributed is initialised: the
model is wrapped in DDP, each rank reads its own share of each epoch, and rank 0 writes checkpoints and logs
(`trainers.run_folder`). The run's settings are `trainers.config.TrainConfig`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace

import numpy as np
import torch
from torch import nn

from schemas.dataset import read_dataset_info
from storage import Location, redact, redacted

from .config import TrainConfig, config_from_checkpoint, resumed_config
from .data import make_loader, read_cost
from .epochs import steps_in_epoch
from .metrics import softmax, video_metrics
from .models import build_model
from .run_folder import CHECKPOINT, VALIDATION_FIELDS, load_checkpoint, read_metrics, read_state_dict, save_epoch, tensorboard_writer

log = logging.getLogger(__name__)


def say(line: str) -> None:
    """A progress line on stdout, written to the stream rather than with `print`: Ray Train replaces `print` in
    its workers with one that logs each line and, where stdout is redirected (as Ray does), prints it too, so
    every line would reach the driver twice. Credentials in the URIs it names are redacted."""
    sys.stdout.write(redact(line) + "\n")
    sys.stdout.flush()


def get_lr(
    step: int, total_steps: int, warmup_steps: int, base_lr: float, schedule: str = "cosine", milestones: tuple[int, ...] = ()
) -> float:
    """The learning rate at `step`: linear warm-up, then cosine decay to 0 or x0.1 at each milestone step."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "step":
        return base_lr * 0.1 ** sum(step >= m for m in milestones)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * base_lr * (1 + math.cos(math.pi * min(progress, 1.0)))


def build(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """The model of a configuration, with its pretrained weights (a local path or URI) loaded when given."""
    pretrained = None
    if cfg.pretrained:
        weights = Location(cfg.pretrained)
        if not weights.is_file():
            raise ValueError(f"pretrained weights {cfg.pretrained} not found; pass a .pth state dict (nothing is downloaded)")
        pretrained = read_state_dict(cfg.pretrained, weights.read_bytes())
    return build_model(
        cfg.model, num_classes=num_classes, backbone=cfg.backbone, new_length=cfg.new_length, pretrained=pretrained, dropout=cfg.dropout
    )


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """AdamW or SGD with momentum, as configured, over every parameter."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def train_one_epoch(
    model,
    criterion,
    optimizer,
    lr_at: Callable[[int], float],
    loader,
    device,
    epoch: int,
    step: int,
    print_freq: int = 10,
    scaler=None,
    clip_grad: float | None = None,
    on_step: Callable[[dict], None] | None = None,
) -> tuple[dict, int]:
    """One pass over `loader`. Returns (epoch stats, the next global step)."""
    model.train()
    seen, loss_sum, correct, start = 0, 0.0, 0, time.monotonic()
    for i, (x, y, _) in enumerate(loader):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, enabled=scaler is not None):
            logits = model(x)
            loss = criterion(logits, y)
        _optimizer_step(loss, model, optimizer, scaler, clip_grad)
        n = len(y)
        seen += n
        loss_value = loss.item()
        loss_sum += loss_value * n
        correct += int((logits.argmax(1) == y).sum())
        rate = seen / max(time.monotonic() - start, 1e-9)
        row = {"epoch": epoch, "step": step, "loss": loss_value, "lr": lr_at(step), "samples_per_s": rate}
        if on_step is not None:
            on_step(row)
        if print_freq and i % print_freq == 0:
            say(f"epoch {epoch} step {step}: loss {loss_value:.4f}, lr {row['lr']:.5f}, {rate:.1f} samples/s")
        step += 1
    stats = {
        "epoch": epoch,
        "loss": loss_sum / max(seen, 1),
        "train_top1": correct / max(seen, 1),
        "samples": seen,
        "seconds": time.monotonic() - start,
    }
    reads = getattr(loader, "reads", None)  # an EpochLoader's: what this rank's workers read from the shards
    if reads is not None:
        stats |= reads.per_example(seen)
    return stats, step


def _optimizer_step(loss: torch.Tensor, model: nn.Module, optimizer, scaler, clip_grad: float | None) -> None:
    """Backward and step, through the AMP gradient scaler when there is one; gradients clipped to `clip_grad`."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    else:
        loss.backward()
    if clip_grad:
        nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


@torch.no_grad()
def evaluate(model, loader, device) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Video-level logits: each example is one video (its segments / clips / crops averaged by the model).

    Returns:
        (keys, labels (N,), logits (N, classes)).
    """
    model.eval()
    keys, labels, logits = [], [], []
    for x, y, k in loader:
        logits.append(model(x.to(device)).float().cpu())
        labels.append(y)
        keys += list(k)
    if not keys:
        return [], np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    return keys, torch.cat(labels).numpy(), torch.cat(logits).numpy()


def _device(cfg: TrainConfig) -> torch.device:
    """This rank's GPU when asked for (LOCAL_RANK picks it under DDP), else the CPU."""
    if cfg.use_gpu and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if cfg.use_gpu:
        raise ValueError("--use-gpu was given but no GPU is visible")
    return torch.device("cpu")


def _decode_on(cfg: TrainConfig, device: torch.device) -> torch.device | None:
    """Where the loader's JPEGs are decoded: None = in the loader workers (OpenCV)."""
    return device if cfg.decode_on_device else None


def check_dataset(cfg: TrainConfig):
    """The dataset's description and its number of samples in the training split; ValueError when unusable."""
    info = read_dataset_info(cfg.data)
    if cfg.modality not in info.modalities:
        raise ValueError(
            f"{cfg.data} has no {cfg.modality} (it has {', '.join(info.modalities)}); preprocess with --modalities including it"
        )
    samples = info.counts.get("samples", {})
    epoch_samples = samples.get(cfg.split, 0)
    if not epoch_samples:
        raise ValueError(f"{cfg.data} has no {cfg.split} samples")
    if cfg.eval_every and not samples.get(validation_split(cfg, samples), 0):
        raise ValueError(f"{cfg.data} has no {validation_split(cfg, samples)} samples to validate on; pass --eval-split or --eval-every 0")
    return info, epoch_samples


def validation_split(cfg: TrainConfig, samples: dict[str, int]) -> str:
    """The split validated on: as configured, else "val" where the dataset has it, else "test"."""
    return cfg.eval_split or ("val" if samples.get("val") else "test")


def validate(model: nn.Module, cfg: TrainConfig, split: str, device) -> dict:
    """Score `split` the test way (`eval_segments` segments or clips, centre crop) on every rank, each reading its
    own share of the videos, and gather them: {"val_top1", "val_top5", "val_mean_class"}, the same on every rank.

    `model` is the plain module (not DDP's wrapper, whose forward would wait for ranks with fewer batches)."""
    example = cfg.example_config(crops=1, segments=cfg.eval_segments, clips=cfg.eval_segments)
    loader = make_loader(
        cfg.data, split, example, train=False, batch_size=cfg.batch_size, workers=cfg.loader_workers, decode_on=_decode_on(cfg, device)
    )
    keys, labels, logits = evaluate(model, loader, device)
    parts = [(keys, labels, logits)]
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        parts = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(parts, (keys, labels, logits))
    videos = {}  # by key: a video two ranks read counts once
    for part_keys, part_labels, part_logits in parts:
        videos.update((key, (label, row)) for key, label, row in zip(part_keys, part_labels, part_logits))
    if not videos:
        raise ValueError(f"{cfg.data}: no {split} video could be read to validate on")
    labels = np.array([label for label, _ in videos.values()])
    scores = softmax(np.stack([row for _, row in videos.values()]))
    metrics = video_metrics(scores, labels)
    return {"val_top1": metrics["top1"], "val_top5": metrics["top5"], "val_mean_class": metrics["mean_class"]}


def _resume(
    cfg: TrainConfig, state: dict | None, model: nn.Module, optimizer, num_classes: int, epoch_samples: int, verbose: bool
) -> tuple[int, int, dict]:
    """Load the run's checkpoint (`state`, None for a new run) into the model and optimizer: (first epoch to run,
    step, the best validation so far: {"epoch", "val_top1"} or {}). A dataset grown since the checkpoint is trained
    on whole from the next epoch (said in a line); one with other classes is refused."""
    if state is None:
        return 0, 0, {}
    if state["num_classes"] != num_classes:  # a changed model or recipe was refused by `resumed_config`
        raise ValueError(
            f"{cfg.out} holds a {state['config']['model']} run for {state['num_classes']} classes and {cfg.data} now has "
            f"{num_classes}: a trained classifier cannot take other classes; choose another --out"
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if verbose:
        say(f"resuming {cfg.out} after epoch {state['epoch']} (step {state['step']})")
        before = state["lr_scheduler"].get("samples", epoch_samples)  # older checkpoints lack it
        if before != epoch_samples:
            say(f"{cfg.data} has {epoch_samples} {cfg.split} samples ({before} at the checkpoint): epochs from here read all of them")
    return state["epoch"] + 1, state["step"], state.get("best") or {}


def _say_where_ranks_run(rank: int, world: int, device: torch.device) -> None:
    """Rank 0 prints one line naming every rank's host, process and device (gathered from all ranks)."""
    places: list = [None] * world
    torch.distributed.all_gather_object(places, f"{socket.gethostname()} pid {os.getpid()} {device}")
    if rank == 0:
        say(f"{world} ranks ({torch.distributed.get_backend()}): " + ", ".join(f"rank {i} on {p}" for i, p in enumerate(places)))


def run_training(cfg: TrainConfig, report: Callable[[dict], None] | None = None) -> dict:
    """Train (or resume) the run `cfg.out`; returns the last epoch's stats. Works in one process or as a DDP rank."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank = torch.distributed.get_rank() if distributed else 0
    world = torch.distributed.get_world_size() if distributed else 1
    out = Location(cfg.out)
    saved = load_checkpoint(out.uri_of(CHECKPOINT)) if out.is_file(CHECKPOINT) else None
    if saved is not None:
        cfg = resumed_config(cfg, config_from_checkpoint(saved))
    device = _device(cfg)
    torch.manual_seed(cfg.seed)
    info, epoch_samples = check_dataset(cfg)
    model = build(cfg if saved is None else replace(cfg, pretrained=None), len(info.classes)).to(device)  # resumed: its weights
    if cfg.pretrained and saved is None and rank == 0:
        say(f"pretrained weights {cfg.pretrained}: {model.pretrained_summary}")
    optimizer = make_optimizer(cfg, model)
    start_epoch, step, best = _resume(cfg, saved, model, optimizer, len(info.classes), epoch_samples, verbose=rank == 0)
    val_split = validation_split(cfg, info.counts.get("samples", {}))
    if distributed:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        _say_where_ranks_run(rank, world, device)
    scaler = torch.amp.GradScaler("cuda") if cfg.amp and device.type == "cuda" else None
    criterion = nn.CrossEntropyLoss()

    steps_per_epoch = steps_in_epoch(epoch_samples, world, cfg.loader_workers, cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    milestones = tuple(e * steps_per_epoch for e in cfg.step_epochs)
    lr_at = lambda s: get_lr(s, total, warmup, cfg.lr, cfg.schedule, milestones)  # noqa: E731
    if rank == 0:
        out.write_text(json.dumps(redacted(asdict(cfg)), indent=2) + "\n", "config.json")
    # Rows of epochs after the checkpoint belong to an interrupted epoch that runs again.
    metrics = [r for r in read_metrics(out) if int(r["epoch"]) < start_epoch] if rank == 0 else []
    tensorboard = tensorboard_writer(out) if rank == 0 else None

    def on_step(row: dict) -> None:
        if rank == 0:
            metrics.append(row)
        if tensorboard:
            tensorboard.add_scalar("train/loss", row["loss"], row["step"])
            tensorboard.add_scalar("train/lr", row["lr"], row["step"])

    stats = {}
    try:
        for epoch in range(start_epoch, cfg.epochs):
            loader = make_loader(
                cfg.data,
                cfg.split,
                cfg.example_config(),
                train=True,
                batch_size=cfg.batch_size,
                workers=cfg.loader_workers,
                seed=cfg.seed * 1000 + epoch,  # a different order and crops each epoch, the same on a resume
                decode_on=_decode_on(cfg, device),
            )
            stats, step = train_one_epoch(
                model,
                criterion,
                optimizer,
                lr_at,
                loader,
                device,
                epoch,
                step,
                cfg.print_freq if rank == 0 else 0,
                scaler,
                cfg.clip_grad,
                on_step,
            )
            plain = model.module if distributed else model
            if cfg.eval_every and ((epoch + 1) % cfg.eval_every == 0 or epoch == cfg.epochs - 1):
                stats.update(validate(plain, cfg, val_split, device))
                if tensorboard:
                    for name in VALIDATION_FIELDS:
                        tensorboard.add_scalar(f"val/{name.removeprefix('val_')}", stats[name], step)
            if rank == 0:
                schedule = {"step": step, "total": total, "warmup": warmup, "samples": epoch_samples}
                best = save_epoch(out, cfg, plain, optimizer, schedule, epoch, info.classes, metrics, stats, best)
                say(_epoch_line(epoch, stats, best, val_split) + f"; checkpoint {out.uri_of(CHECKPOINT)}")
            if report is not None:
                report(stats)
    finally:
        if tensorboard:
            tensorboard.close()
    return stats


def _epoch_line(epoch: int, stats: dict, best: dict, split: str) -> str:
    """The line printed after an epoch: training loss and top-1, validation scores when there were any."""
    rate = stats["samples"] / stats["seconds"]
    line = f"epoch {epoch}: loss {stats['loss']:.4f}, train top-1 {stats['train_top1']:.3f}, {rate:.1f} samples/s"
    if "read_mb" in stats:
        line += f" ({read_cost(stats)})"
    if "val_top1" in stats:
        line += (
            f"; {split} top-1 {stats['val_top1']:.3f}, top-5 {stats['val_top5']:.3f}, mean class {stats['val_mean_class']:.3f}"
            f" (best {best['val_top1']:.3f} at epoch {best['epoch']})"
        )
    return line
