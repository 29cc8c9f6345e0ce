"""Video-level metrics the papers report (top-1, top-5, mean class accuracy), late fusion, confusion matrix."""

from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

COUNTS_UP_TO = 30  # classes up to which confusion.png writes every cell's count and every class's name


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, C) logits, numerically stable."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of videos whose label is among the k highest scores (k capped at the number of classes)."""
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1)[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


def mean_class_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean over the classes present of per-class recall (top-1)."""
    predicted = scores.argmax(axis=1)
    recalls = [float((predicted[labels == c] == c).mean()) for c in np.unique(labels)]
    return float(np.mean(recalls))


def video_metrics(scores: np.ndarray, labels: np.ndarray) -> dict:
    """{"top1", "top5", "mean_class", "videos"} for (N, classes) scores and (N,) labels."""
    if len(labels) == 0:
        raise ValueError("no videos to evaluate")
    return {
        "top1": topk_accuracy(scores, labels, 1),
        "top5": topk_accuracy(scores, labels, 5),
        "mean_class": mean_class_accuracy(scores, labels),
        "videos": int(len(labels)),
    }


def fuse(scores: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    """Late fusion: the weighted sum of each stream's softmax scores (TSN: rgb 1, flow 1.5)."""
    missing = sorted(set(weights) - set(scores))
    if missing:
        raise ValueError(f"fusion weights name streams that were not evaluated: {', '.join(missing)}")
    return sum(w * scores[name] for name, w in weights.items())


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) counts: row = true class, column = predicted class."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (labels, predicted), 1)
    return cm


def most_confused(cm: np.ndarray, classes: list[str], k: int = 20) -> list[tuple[str, str, int, float]]:
    """The `k` largest off-diagonal cells: (true class, predicted class, videos, fraction of the true class)."""
    off = cm.astype(np.int64).copy()
    np.fill_diagonal(off, 0)
    totals = np.maximum(cm.sum(axis=1), 1)
    order = np.argsort(off, axis=None, kind="stable")[::-1][:k]
    pairs = [np.unravel_index(i, cm.shape) for i in order]
    return [(classes[t], classes[p], int(off[t, p]), off[t, p] / totals[t]) for t, p in pairs if off[t, p] > 0]


def confusion_png(cm: np.ndarray, classes: list[str], title: str = "") -> bytes:
    """A confusion matrix as PNG bytes: rows the true class, columns the predicted one, coloured by the fraction
    of the true class's videos. Up to `COUNTS_UP_TO` classes every cell shows its count and every class its
    name; beyond, the most-confused pairs are listed beside the heat map. The size grows with the classes."""
    n = len(classes)
    rows = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    side = min(max(5.0, 0.42 * n + 2.5), 16.0)  # inches of the heat map: ~0.4 per class, then denser
    listed = most_confused(cm, classes) if n > COUNTS_UP_TO else []
    figure = Figure(figsize=(side + (6.5 if listed else 1.5), side + 1.0), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    heat, *rest = figure.subplots(1, 2, width_ratios=[side, 6.0]) if listed else [figure.subplots()]
    image = heat.imshow(rows, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    figure.colorbar(image, ax=heat, fraction=0.04, pad=0.02, label="fraction of the true class's videos")
    heat.set(xlabel="predicted class", ylabel="true class")
    total = int(cm.sum())
    accuracy = np.trace(cm) / max(total, 1)
    heat.set_title(title or f"confusion matrix: {total} videos, {n} classes, top-1 {100 * accuracy:.1f}%")
    names = n <= 120  # UCF101's 101 names still fit, small; Kinetics' 400 would be a black smear
    font = min(9.0, 0.55 * 72 * side / n)  # points: about half a cell's height
    if names:
        heat.set_xticks(range(n), classes, rotation=90, fontsize=font)
        heat.set_yticks(range(n), classes, fontsize=font)
    else:
        heat.set(xticks=[], yticks=[])
    if n <= COUNTS_UP_TO:
        count_font = min(14.0, max(7.0, 0.3 * 72 * side / n))  # points: about a third of a cell
        for t in range(n):
            for p in range(n):
                if cm[t, p]:
                    dark = rows[t, p] > 0.5
                    color = "white" if dark else "black"
                    heat.text(p, t, str(int(cm[t, p])), ha="center", va="center", fontsize=count_font, color=color)
    if listed:
        table = rest[0]
        table.axis("off")
        lines = ["most confused pairs", "videos  % of true  true class -> predicted", ""]
        lines += [f"{v:>6}  {100 * f:7.1f}%  {t} -> {p}" for t, p, v, f in listed]
        table.text(0, 0.98, "\n".join(lines), va="top", ha="left", family="monospace", fontsize=9, transform=table.transAxes)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight", pad_inches=0.15)  # the axis titles whole, whatever the names
    return buffer.getvalue()
