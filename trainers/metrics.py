"""Video-level metrics the papers report (top-1, top-5, mean class accuracy), late fusion, confusion matrix."""

from __future__ import annotations

import cv2
import numpy as np


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


def confusion_png(cm: np.ndarray, classes: list[str], cell: int = 24) -> bytes:
    """A row-normalised confusion matrix as PNG bytes (rows: true class, columns: predicted), classes labelled."""
    n = len(classes)
    rows = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    grid = cv2.resize((255 * (1 - rows)).astype(np.uint8), (n * cell, n * cell), interpolation=cv2.INTER_NEAREST)
    margin = 8 * max(len(c) for c in classes) + 8 if n <= 60 else 0
    image = np.full((n * cell + margin, n * cell + margin, 3), 255, np.uint8)
    image[margin:, margin:] = cv2.applyColorMap(grid, cv2.COLORMAP_BONE)
    if margin:
        for i, name in enumerate(classes):
            label = np.full((cell, margin, 3), 255, np.uint8)
            cv2.putText(label, name, (2, cell // 2 + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
            span = slice(margin + i * cell, margin + (i + 1) * cell)
            image[span, :margin] = label  # true class, left of its row
            image[:margin, span] = cv2.rotate(label, cv2.ROTATE_90_COUNTERCLOCKWISE)  # predicted, above its column
    return cv2.imencode(".png", image)[1].tobytes()
