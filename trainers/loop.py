"""Training and evaluation loops: plain functions a reader can follow in one sitting.

`run_training` is what one process (or one DDP rank) does: build the model and loader, resume from the
run's last checkpoint if there is one, train epoch by epoch, checkpoint after each, and every `eval_every`
epochs score the validation split the test way (all ranks, each its own shards) and keep the best checkpoint.
Distributed training (Ray Train in `jobs.train`) only differs in that torch.distributed is initialised: the
model is wrapped in DDP, each rank draws its own stream of shards, and rank 0 writes checkpoints and logs.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from torch import nn

from schemas.dataset import read_dataset_info
from schemas.sample import FORMAT_VERSION
from storage import Location, redact, redacted

from .curves import curves_png
from .data import ExampleConfig, make_loader, read_cost
from .epochs import steps_in_epoch
from .metrics import softmax, video_metrics
from .models import MODELS, build_model

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"  # the checkpoint of the epoch with the highest validation top-1 so far
METRICS_CSV = "metrics.csv"
CURVES_PNG = "curves.png"
VALIDATION_FIELDS = ["val_top1", "val_top5", "val_mean_class"]
# A row per training step (loss, lr, samples/s), then one per epoch (its training top-1, and its validation scores
# when it validated), in the order they happened.
EPOCH_FIELDS = ["train_top1", *VALIDATION_FIELDS]
METRICS_FIELDS = ["epoch", "step", "loss", "lr", "samples_per_s", *EPOCH_FIELDS]


@dataclass(frozen=True)
class TrainConfig:
    """A training run. Defaults follow TSN where it has one (SGD, 3 segments, 5 flows per snippet)."""

    data: str  # a preprocessed dataset (jobs.preprocess --out), a local path or URI
    model: str  # tsn_rgb | tsn_flow | i3d_rgb | i3d_flow
    out: str  # the run folder (a local path or URI): checkpoint.pt, metrics.csv, config.json
    backbone: str = "resnet18"  # TSN: resnet18 or resnet50
    flow_modality: str = "tvl1"  # which flow the *_flow models read: tvl1 or warp_tvl1
    epochs: int = 20
    batch_size: int = 16
    lr: float = 0.01
    optimizer: str = "sgd"  # sgd | adamw
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine | step (x0.1 at each of step_epochs)
    step_epochs: tuple[int, ...] = ()
    warmup_epochs: float = 1.0
    clip_grad: float | None = 40.0  # max gradient norm (TSN: 40 RGB, 20 flow); None = off
    dropout: float = 0.5
    segments: int = 3
    new_length: int = 5
    clip_len: int = 16
    interval: int = 2
    input_size: int = 224
    flip: bool = True
    pretrained: str | None = None  # a 2D ImageNet state dict (torchvision names; a path or URI); nothing is downloaded
    loader_workers: int = 2
    decode_on_device: bool = False  # decode the JPEGs in this process on the training device (nvJPEG), not in the workers
    use_gpu: bool = False
    amp: bool = True  # mixed precision, on a GPU only
    seed: int = 0
    print_freq: int = 10
    split: str = "train"
    eval_every: int = 0  # validate every K epochs and after the last one (0 = never); best.pt keeps the best
    eval_split: str | None = None  # the split validated on; None = "val" where the dataset has one, else "test"
    eval_segments: int = 5  # TSN segments (I3D clips) per video when validating, centre crop (jobs.evaluate: 25 x 10 crops)

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; choose one of {', '.join(MODELS)}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be sgd or adamw, got {self.optimizer!r}")
        if self.schedule not in ("cosine", "step"):
            raise ValueError(f"schedule must be cosine or step, got {self.schedule!r}")
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError("epochs and batch size must be at least 1 and lr positive")
        if self.schedule == "step" and not self.step_epochs:
            raise ValueError("--schedule step needs --step-epochs, the epochs where the lr drops x0.1 (e.g. --step-epochs 30 60)")
        if self.eval_every < 0 or self.eval_segments < 1:
            raise ValueError(f"--eval-every must be 0 or more and --eval-segments at least 1, got {self.eval_every}, {self.eval_segments}")

    @property
    def arch(self) -> str:
        """tsn or i3d, from the model name."""
        return self.model.split("_")[0]

    @property
    def modality(self) -> str:
        """rgb, or the flow modality the *_flow models read."""
        return "rgb" if self.model.endswith("_rgb") else self.flow_modality

    def example_config(self, crops: int = 1, segments: int | None = None, clips: int = 1) -> ExampleConfig:
        """How this run's model turns a video into an input (test-time crops, segments, clips as given)."""
        return ExampleConfig(
            arch=self.arch,
            modality=self.modality,
            segments=segments or self.segments,
            new_length=self.new_length,
            clip_len=self.clip_len,
            interval=self.interval,
            clips=clips,
            input_size=self.input_size,
            crops=crops,
            flip=self.flip,
        )


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


def _load_plain(data: bytes):
    """`torch.load` of tensors and plain values only (`weights_only=True`), so loading a file cannot run code.

    Raises:
        ValueError: the file is not one (pickle, zip and torch errors alike), with the first line of why.
    """
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - an unpickling refusal, a zip or a torch error: not a file we load
        raise ValueError(next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)) from None


def read_state_dict(name: str, data: bytes) -> dict:
    """A state dict from a file's bytes (a plain one, or the "model"/"state_dict" entry of a checkpoint); a file
    that is none is a ValueError in one sentence, not an unpickling traceback."""
    fix = "pass a .pth file of torch.save(model.state_dict())"
    try:
        state = _load_plain(data)
    except ValueError as exc:
        raise ValueError(f"pretrained weights {name} are not a PyTorch state dict ({str(exc)[:120]}); {fix}") from None
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"pretrained weights {name} hold no state dict of tensors; {fix}")
    return state


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """AdamW or SGD with momentum, as configured, over every parameter."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def save_checkpoint(out: Location, state: dict, name: str = CHECKPOINT) -> None:
    """Write `out/name` atomically, so a run killed while saving keeps its previous checkpoint."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    out.write_bytes(buffer.getvalue(), name)


def load_checkpoint(path: str) -> dict:
    """A checkpoint written by `run_training`: a run folder or a checkpoint file (a local path or URI).

    Loaded with `weights_only=True`: tensors and plain values only, which is all a flowshard checkpoint holds, so
    a run folder from someone else (a shared bucket) cannot run code when it is loaded.

    Raises:
        ValueError: no checkpoint, one that holds anything else (refused, not unpickled), or one from another
            format version.
    """
    where = Location(path)
    if where.is_dir():
        where = where.child(CHECKPOINT)
    if not where.is_file():
        raise ValueError(f"no checkpoint at {where.uri_of()}; train one with `python -m jobs.train`")
    try:
        state = _load_plain(where.read_bytes())
    except ValueError as exc:
        raise ValueError(
            f"{where.uri_of()} is not a flowshard checkpoint of tensors and plain values ({str(exc)[:160]}); it was not "
            "loaded, since unpickling anything more could run code: use a checkpoint written by `python -m jobs.train`"
        ) from None
    if not isinstance(state, dict):
        raise ValueError(f"{where.uri_of()} is not a flowshard checkpoint (it holds a {type(state).__name__}, not a dict)")
    if state.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} was trained on sample format {state.get('format_version')}, this flowshard reads {FORMAT_VERSION}")
    return state


def read_metrics(out: Location) -> list[dict]:
    """The rows of `out/metrics.csv` ([] when there is none yet)."""
    if not out.is_file(METRICS_CSV):
        return []
    return list(csv.DictReader(io.StringIO(out.read_text(METRICS_CSV))))


def write_metrics(out: Location, rows: list[dict]) -> None:
    """Rewrite `out/metrics.csv` whole (object stores cannot append), atomically."""
    text = io.StringIO()
    writer = csv.DictWriter(text, METRICS_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    out.write_text(text.getvalue(), METRICS_CSV)


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


# What a resumed run may change: where its data and run folder are, how it runs (loader workers, device, mixed
# precision, printing), when and how it validates, and --epochs (raised, to extend the run). Every other setting
# shapes the model or its training recipe; --pretrained only matters before the first checkpoint.
RUNTIME_FIELDS = (
    "data",
    "out",
    "epochs",
    "loader_workers",
    "decode_on_device",
    "use_gpu",
    "amp",
    "print_freq",
    "eval_every",
    "eval_split",
    "eval_segments",
)


def resumed_config(cfg: TrainConfig, saved: TrainConfig) -> TrainConfig:
    """The configuration a run resumes with: the saved run's recipe with this invocation's runtime settings (so
    config.json keeps saying how the run was trained).

    Raises:
        ValueError: a recipe setting differs from the run's (each change named, with the ways out).
    """
    changes = [
        f"{f.name} {getattr(saved, f.name)!r} -> {getattr(cfg, f.name)!r}"
        for f in dataclasses.fields(TrainConfig)
        if f.name not in (*RUNTIME_FIELDS, "pretrained") and getattr(cfg, f.name) != getattr(saved, f.name)
    ]
    if changes:
        raise ValueError(
            f"{cfg.out} holds a run trained with other settings ({', '.join(changes)}); to resume it, pass the settings "
            "of its config.json (--epochs may be raised to extend it), or train into another --out"
        )
    return replace(saved, **{name: getattr(cfg, name) for name in RUNTIME_FIELDS})


def _resume(cfg: TrainConfig, state: dict | None, model: nn.Module, optimizer, num_classes: int, verbose: bool) -> tuple[int, int, dict]:
    """Load the run's checkpoint (`state`, None for a new run) into the model and optimizer: (first epoch to run,
    step, the best validation so far: {"epoch", "val_top1"} or {})."""
    if state is None:
        return 0, 0, {}
    if state["num_classes"] != num_classes:  # a changed model or recipe was refused by `resumed_config`
        raise ValueError(f"{cfg.out} holds a {state['config']['model']} run for {state['num_classes']} classes; choose another --out")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if verbose:
        say(f"resuming {cfg.out} after epoch {state['epoch']} (step {state['step']})")
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
    start_epoch, step, best = _resume(cfg, saved, model, optimizer, len(info.classes), verbose=rank == 0)
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
    tensorboard = _tensorboard(out) if rank == 0 else None

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
                schedule = {"step": step, "total": total, "warmup": warmup}
                best = _save_epoch(out, cfg, plain, optimizer, schedule, epoch, info.classes, metrics, stats, best)
                say(_epoch_line(epoch, stats, best, val_split) + f"; checkpoint {out.uri_of(CHECKPOINT)}")
            if report is not None:
                report(stats)
    finally:
        if tensorboard:
            tensorboard.close()
    return stats


def _save_epoch(
    out: Location, cfg, model: nn.Module, optimizer, schedule: dict, epoch: int, classes: list, metrics: list, stats: dict, best: dict
) -> dict:
    """metrics.csv (with the epoch's row) and curves.png, best.pt when validation top-1 improved, then the checkpoint
    (a resume drops metric rows past the checkpoint, never the reverse). Returns the best so far."""
    metrics.append({"epoch": epoch, "step": schedule["step"], **{k: v for k, v in stats.items() if k in EPOCH_FIELDS}})
    if "val_top1" in stats and (not best or stats["val_top1"] > best["val_top1"]):
        best = {"epoch": epoch, "val_top1": stats["val_top1"]}
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": schedule,
        "epoch": epoch,
        "step": schedule["step"],
        "config": redacted(asdict(cfg)),  # no credentials of a data or run URI in a file others may read
        "num_classes": len(classes),
        "classes": classes,
        "format_version": FORMAT_VERSION,
        "best": best,
    }
    write_metrics(out, metrics)
    out.write_bytes(curves_png(_as_read(metrics), f"{cfg.model} {out.uri_of()}"), CURVES_PNG)
    if best.get("epoch") == epoch:
        save_checkpoint(out, state, BEST)
    save_checkpoint(out, state)
    return best


def _as_read(rows: list[dict]) -> list[dict]:
    """Rows as `read_metrics` gives them back (strings; empty where a row has no value)."""
    return [{k: "" if r.get(k) is None else str(r[k]) for k in METRICS_FIELDS} for r in rows]


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


def _tensorboard(out: Location):
    """A SummaryWriter for a local run folder when tensorboard is installed, else None (metrics.csv is always
    written)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(out.path("tensorboard")) if out.is_local else None


def config_from_checkpoint(state: dict) -> TrainConfig:
    """The TrainConfig a checkpoint was trained with (fields of older versions ignored, new ones defaulted)."""
    raw = dict(state["config"])
    raw["step_epochs"] = tuple(raw.get("step_epochs", ()))
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in raw.items() if k in known})
