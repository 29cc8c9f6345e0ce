"""Evaluate trained streams the TSN way (K segments x crops, late fusion): top-1, top-5, mean class accuracy.

    python -m jobs.evaluate --data data/ucf101 --split test --run rgb=runs/rgb --run flow=runs/flow \\
        --segments 25 --crops 10 --fusion rgb=1,flow=1.5 --json metrics.json
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
from dataclasses import dataclass

import numpy as np
import torch

from jobs.common import ArgumentParser, check_locations, cli, write_config
from schemas.dataset import read_dataset_info
from storage import Location, join, parent
from trainers.config import config_from_checkpoint
from trainers.data import CROPS, make_loader, read_cost
from trainers.loop import build, evaluate
from trainers.metrics import confusion_matrix, confusion_png, fuse, softmax, video_metrics
from trainers.run_folder import load_checkpoint


@dataclass(frozen=True)
class EvaluateConfig:
    """What `jobs.evaluate` scores: trained runs on a dataset split, the test sampling, and late fusion."""

    data: str
    runs: tuple[tuple[str, str], ...]  # (stream name, run folder)
    split: str = "test"
    segments: int = 25
    crops: int = 1
    mirror: str = "run"  # with 10 crops, the 5 mirrored views: "run" = as the run trained (none after --no-flip), "yes", "no"
    clips: int = 10  # I3D clips per video
    fusion: tuple[tuple[str, float], ...] = ()  # default: every stream weight 1
    json: str | None = None
    out: str | None = None  # scores.npz and confusion.png (default: beside --json, else the first run)
    batch_size: int = 4
    loader_workers: int = 2
    use_gpu: bool = False


def _named(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(f"expected NAME=RUN_FOLDER such as flow=runs/flow, got {text!r}")
    return name, value


def _weights(text: str) -> tuple[tuple[str, float], ...]:
    pairs = []
    for item in text.split(","):
        name, sep, value = item.partition("=")
        try:
            pairs.append((name.strip(), float(value)))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected NAME=WEIGHT[,NAME=WEIGHT...] such as rgb=1,flow=1.5, got {text!r}") from None
    return tuple(pairs)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m jobs.evaluate",
        description="Segment-sampled (TSN) evaluation of one or more trained streams, with late fusion.",
        add_help=add_help,
    )
    d = EvaluateConfig(data="", runs=())  # the defaults, defined once there
    parser.add_argument(
        "--data", required=True, help="a dataset written by `python -m jobs.preprocess` (a local path or URI, as every path here)"
    )
    parser.add_argument("--split", default=d.split, help="split to evaluate (default %(default)s)")
    parser.add_argument(
        "--run",
        type=_named,
        action="append",
        required=True,
        metavar="NAME=RUN",
        help="a stream and its run folder, e.g. rgb=runs/rgb (repeat for each stream)",
    )
    parser.add_argument("--segments", type=int, default=d.segments, help="TSN: segments per video at test time (default %(default)s)")
    parser.add_argument(
        "--crops",
        type=int,
        choices=CROPS,
        default=d.crops,
        help="1 centre crop, 3 crops along the long side, or 10 (corners + centre, and their mirror images) (default %(default)s)",
    )
    parser.add_argument(
        "--mirror",
        choices=["run", "yes", "no"],
        default=d.mirror,
        help="with --crops 10, the mirrored views: as each run trained (run: none for a run trained with --no-flip, where "
        "direction can be the class; 5 views then), or forced on or off (default %(default)s)",
    )
    parser.add_argument("--clips", type=int, default=d.clips, help="I3D: clips per video (default %(default)s)")
    parser.add_argument(
        "--fusion", type=_weights, default=d.fusion, help="late-fusion weights on softmax scores, e.g. rgb=1,flow=1.5 (default: 1 each)"
    )
    parser.add_argument("--json", help="write the metrics here as JSON")
    parser.add_argument("--out", help="folder for scores.npz (per-video scores, to recompute fusion) and confusion.png")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="videos per batch (default %(default)s)")
    parser.add_argument("--loader-workers", type=int, default=d.loader_workers, help="data loader processes (default %(default)s)")
    parser.add_argument("--use-gpu", action="store_true", help="evaluate on the GPU")
    return parser


def config_from_args(args: argparse.Namespace) -> EvaluateConfig:
    names = [n for n, _ in args.run]
    if len(set(names)) != len(names):
        raise ValueError(f"stream names must differ, got {', '.join(names)}")
    unknown = [n for n, _ in args.fusion if n not in names]
    if unknown:
        raise ValueError(f"--fusion names {', '.join(unknown)}, which no --run defines")
    if args.segments < 1 or args.clips < 1:
        raise ValueError("--segments and --clips must be at least 1")
    return EvaluateConfig(
        data=args.data,
        runs=tuple(args.run),
        split=args.split,
        segments=args.segments,
        crops=args.crops,
        mirror=args.mirror,
        clips=args.clips,
        fusion=args.fusion,
        json=args.json,
        out=args.out,
        batch_size=args.batch_size,
        loader_workers=args.loader_workers,
        use_gpu=args.use_gpu,
    )


def score_stream(cfg: EvaluateConfig, run: str, num_classes: int, device) -> tuple[list[str], np.ndarray, np.ndarray, str]:
    """Evaluate one trained run: (keys sorted, labels, softmax scores, a description of the sampling)."""
    state = load_checkpoint(run)
    train_cfg = config_from_checkpoint(state)
    if state["num_classes"] != num_classes:
        raise ValueError(f"run {run} has {state['num_classes']} classes, {cfg.data} has {num_classes}")
    model = build(dataclasses.replace(train_cfg, pretrained=None), state["num_classes"])  # weights come from the checkpoint
    model.load_state_dict(state["model"])
    model.to(device)
    mirrored = mirrors(cfg, train_cfg)
    example = dataclasses.replace(train_cfg.example_config(crops=cfg.crops, segments=cfg.segments, clips=cfg.clips), flip=mirrored)
    loader = make_loader(cfg.data, cfg.split, example, train=False, batch_size=cfg.batch_size, workers=cfg.loader_workers)
    keys, labels, logits = evaluate(model, loader, device)
    order = np.argsort(keys)  # loader workers interleave videos; align streams by key
    sampling = f"{example.segments} segments" if example.arch == "tsn" else f"{example.clips} clips"
    cost = read_cost(loader.reads.per_example(len(keys)))
    return [keys[i] for i in order], labels[order], softmax(logits[order]), f"{sampling} x {_views(cfg, train_cfg, mirrored)}; {cost}"


def mirrors(cfg: EvaluateConfig, train_cfg) -> bool:
    """Whether a run's test views include mirror images: as it trained (--mirror run), or as forced."""
    return train_cfg.flip if cfg.mirror == "run" else cfg.mirror == "yes"


def _views(cfg: EvaluateConfig, train_cfg, mirrored: bool) -> str:
    """The test-time views, as the header states them: which crops, and whether mirrored ones are among them."""
    if cfg.crops != 10:
        return f"{cfg.crops} crop{'s' if cfg.crops > 1 else ''}"
    if mirrored:
        return "10 crops (corners + centre, mirrored too)"
    why = "the run trained without flips" if cfg.mirror == "run" and not train_cfg.flip else "--mirror no"
    return f"5 crops (corners + centre, not mirrored: {why})"


def main(cfg: EvaluateConfig) -> int:
    check_locations(cfg.data, *(run for _, run in cfg.runs), outputs=(cfg.json, cfg.out))
    if cfg.json and Location(cfg.json).is_dir():  # refused before the evaluation, not when writing after it
        raise ValueError(f"--json {cfg.json} is a folder; give a file such as {join(cfg.json, 'metrics.json')}")
    device = torch.device("cuda" if cfg.use_gpu and torch.cuda.is_available() else "cpu")
    info = read_dataset_info(cfg.data)
    keys, labels, scores = score_streams(cfg, len(info.classes), device)
    weights = dict(cfg.fusion) or {name: 1.0 for name in scores}
    fused = fuse(scores, weights)
    metrics = {name: video_metrics(s, labels) for name, s in scores.items()}
    if len(scores) > 1:
        metrics["fused"] = video_metrics(fused, labels)
    metrics["videos"] = len(labels)
    metrics["fusion_weights"] = weights
    out = Location(cfg.out or (parent(cfg.json) if cfg.json else cfg.runs[0][1]))
    write_results(cfg, out, info.classes, keys, labels, scores, fused, metrics)
    print_results(cfg, out, len(info.classes), labels, scores, metrics, weights)
    return 0


def score_streams(cfg: EvaluateConfig, num_classes: int, device) -> tuple[list[str], np.ndarray, dict[str, np.ndarray]]:
    """Every run's softmax scores on the same videos: (keys, labels, {stream: scores})."""
    scores, labels, keys = {}, None, None
    for name, run in cfg.runs:
        k, y, scores[name], sampling = score_stream(cfg, run, num_classes, device)
        if keys is not None and k != keys:
            raise ValueError(f"stream {name} saw other videos than the first stream")
        keys, labels = k, y
        print(f"{name}: {len(k)} videos evaluated ({sampling})", flush=True)
    return keys, labels, scores


def write_results(cfg: EvaluateConfig, out: Location, classes, keys, labels, scores, fused, metrics: dict) -> None:
    """scores.npz, confusion.png (of the fused scores), the --json metrics and the configuration."""
    npz = io.BytesIO()
    np.savez(npz, keys=np.array(keys), labels=labels, classes=np.array(classes), **{f"scores_{n}": s for n, s in scores.items()})
    out.write_bytes(npz.getvalue(), "scores.npz")
    cm = confusion_matrix(labels, fused.argmax(1), len(classes))
    out.write_bytes(confusion_png(cm, classes), "confusion.png")
    if cfg.json:
        Location(cfg.json).write_text(json.dumps(metrics, indent=2) + "\n")
    write_config(cfg, out.uri_of("evaluate.config.json"))


def print_results(cfg: EvaluateConfig, out: Location, num_classes: int, labels, scores, metrics: dict, weights: dict) -> None:
    """The metrics table (per stream, and fused) and where the files went."""
    print(f"\n{cfg.split}: {len(labels)} videos, {num_classes} classes")
    print("| stream | top-1 | top-5 | mean class |")
    print("|---|---|---|---|")
    for name in [*scores, *(["fused"] if "fused" in metrics else [])]:
        m = metrics[name]
        print(f"| {name} | {100 * m['top1']:.1f} | {100 * m['top5']:.1f} | {100 * m['mean_class']:.1f} |")
    if "fused" in metrics:
        print("fusion weights: " + ", ".join(f"{n}={w:g}" for n, w in weights.items()))
    print(
        f"per-video scores {out.uri_of('scores.npz')}, confusion matrix {out.uri_of('confusion.png')}"
        + (f", metrics {cfg.json}" if cfg.json else "")
    )


if __name__ == "__main__":
    raise SystemExit(cli(get_args_parser, config_from_args, main))
