"""A plain CSV list: `path,label[,split]` per row (optional header); paths absolute or relative to the video root."""

from __future__ import annotations

import csv
from pathlib import Path

from schemas.manifest import SPLITS, VideoRecord

from .common import AnnotationError, DatasetManifest, unique_ids


def _class_order(labels: set[str]) -> list[str]:
    """Sorted class names; numerically when every label is an integer, so labels 0..K-1 keep their index."""
    if labels and all(label.lstrip("-").isdigit() for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def load(annotations: Path, videos: Path, split: int | None = None) -> DatasetManifest:
    """Read a `path,label[,split]` CSV. An empty label means unlabelled (-1); a missing split means `train`.

    Raises:
        AnnotationError: a row without 2 or 3 fields or with an unknown split, naming file and line.
    """
    if not annotations.is_file():
        raise AnnotationError(f"CSV list {annotations} does not exist; pass it with --annotations")
    rows = []
    with annotations.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        for row in reader:
            row = [c.strip() for c in row]
            if not row or not any(row):
                continue
            if reader.line_num == 1 and [c.lower() for c in row[:2]] == ["path", "label"]:
                continue  # header
            if len(row) not in (2, 3) or not row[0]:
                raise AnnotationError(f"{annotations}:{reader.line_num}: expected 'path,label[,split]', got {','.join(row)!r}; fix the line")
            split_name = row[2] if len(row) == 3 and row[2] else "train"
            if split_name not in SPLITS:
                raise AnnotationError(f"{annotations}:{reader.line_num}: split {split_name!r} is not one of {', '.join(SPLITS)}; fix the line")
            rows.append((row[0], row[1], split_name))
    classes = _class_order({label for _, label, _ in rows if label})
    class_ids = {name: i for i, name in enumerate(classes)}
    paths = [Path(p) if Path(p).is_absolute() else videos / p for p, _, _ in rows]
    ids = unique_ids(paths, videos)
    records = [
        VideoRecord(
            video_id=vid,
            path=str(path.absolute()),
            label=class_ids[label] if label else -1,
            label_name=label,
            split=split_name,
            dataset="csv",
            exists=path.is_file(),
        )
        for vid, path, (_, label, split_name) in zip(ids, paths, rows)
    ]
    return DatasetManifest(records, classes, "csv", sources=[str(annotations)])
