"""A plain CSV list: `path,label[,split]` per row (optional header); paths absolute or relative to the video root."""

from __future__ import annotations

import csv
import io
import os
from collections import defaultdict

from schemas.manifest import SPLITS, VideoRecord
from storage import Location, basename, is_uri, parent

from .common import AnnotationError, DatasetManifest, read_annotation, unique_ids


def _class_order(labels: set[str]) -> list[str]:
    """Sorted class names; numerically when every label is an integer, so labels 0..K-1 keep their index."""
    if labels and all(label.lstrip("-").isdigit() for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def load(annotations: str, videos: str, split: int | None = None) -> DatasetManifest:
    """Read a `path,label[,split]` CSV. An empty label means unlabelled (-1); a missing split means `train`.

    Raises:
        AnnotationError: a row without 2 or 3 fields or with an unknown split, naming file and line.
    """
    text = read_annotation(annotations, "CSV list")
    rows = []
    with io.StringIO(text, newline="") as f:
        reader = csv.reader(f)
        for row in reader:
            row = [c.strip() for c in row]
            if not row or not any(row):
                continue
            if reader.line_num == 1 and [c.lower() for c in row[:2]] == ["path", "label"]:
                continue  # header
            if len(row) not in (2, 3) or not row[0]:
                raise AnnotationError(
                    f"{annotations}:{reader.line_num}: expected 'path,label[,split]', got {','.join(row)!r}; fix the line"
                )
            split_name = row[2] if len(row) == 3 and row[2] else "train"
            if split_name not in SPLITS:
                raise AnnotationError(
                    f"{annotations}:{reader.line_num}: split {split_name!r} is not one of {', '.join(SPLITS)}; fix the line"
                )
            rows.append((row[0], row[1], split_name))
    classes = _class_order({label for _, label, _ in rows if label})
    class_ids = {name: i for i, name in enumerate(classes)}
    root = Location(videos)
    paths = [p if is_uri(p) or os.path.isabs(p) else root.uri_of(p) for p, _, _ in rows]  # relative: below --videos
    ids = unique_ids(paths, videos)
    found = _existing(paths)
    records = [
        VideoRecord(
            video_id=vid,
            path=path,
            label=class_ids[label] if label else -1,
            label_name=label,
            split=split_name,
            dataset="csv",
            exists=path in found,
        )
        for vid, path, (_, label, split_name) in zip(ids, paths, rows)
    ]
    return DatasetManifest(records, classes, "csv", sources=[annotations])


def _existing(paths: list[str]) -> set[str]:
    """The paths that are files, found by listing each folder once (not one request per file)."""
    by_folder: dict[str, set[str]] = defaultdict(set)
    for p in paths:
        by_folder[parent(p)].add(p)
    found = set()
    for folder, wanted in by_folder.items():
        names = set(Location(folder).list())
        found |= {p for p in wanted if basename(p) in names}
    return found
