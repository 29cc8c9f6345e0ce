"""What a run folder holds, written and read: checkpoints (loaded as tensors and plain values only), metrics.csv (a
row per step, then one per epoch), curves.png and TensorBoard logs."""

from __future__ import annotations

import csv
import io
from dataclasses import asdict

import torch
from torch import nn

from schemas.sample import FORMAT_VERSION
from storage import Location, redacted

from .curves import curves_png

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"  # the checkpoint of the epoch with the highest validation top-1 so far
METRICS_CSV = "metrics.csv"
CURVES_PNG = "curves.png"
VALIDATION_FIELDS = ["val_top1", "val_top5", "val_mean_class"]
# A row per training step (loss, lr, samples/s), then one per epoch (its training top-1, and its validation scores
# when it validated), in the order they happened.
EPOCH_FIELDS = ["train_top1", *VALIDATION_FIELDS]
METRICS_FIELDS = ["epoch", "step", "loss", "lr", "samples_per_s", *EPOCH_FIELDS]


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


def save_epoch(
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


def tensorboard_writer(out: Location):
    """A SummaryWriter for a local run folder when tensorboard is installed, else None (metrics.csv is always
    written)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(out.path("tensorboard")) if out.is_local else None
