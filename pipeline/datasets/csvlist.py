"""A plain CSV list: `path,label[,split]` per row (optional header); paths relative to the video root (or absolute inside it)."""

from __future__ import annotations

import re
from collections import defaultdict

from schemas.manifest import SPLITS, VideoRecord
from storage import Location, basename, parent

from .common import AnnotationError, DatasetManifest, checked_name, csv_rows, read_annotation, unique_ids, video_relpath


def _class_order(labels: set[str]) -> list[str]:
    """Sorted class names; numerically when every label is an integer, so labels 0..K-1 keep their index."""
    if labels and all(re.fullmatch(r"-?[0-9]{1,18}", label) for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def load(annotations: str, videos: str, split: int | None = None) -> DatasetManifest:
    """Read a `path,label[,split]` CSV. An empty label means unlabelled (-1); a missing split means `train`.

    Raises:
        AnnotationError: a row without 2 or 3 fields, with an unknown split, a class name that is no name or a path
            outside `videos`, naming file and line.
    """
    rows = []
    for line_num, row in csv_rows(read_annotation(annotations, "CSV list"), annotations):
        row = [c.strip() for c in row]
        if not any(row):
            continue
        if line_num == 1 and [c.lower() for c in row[:2]] == ["path", "label"]:
            continue  # header
        where = f"{annotations}:{line_num}"
        if len(row) not in (2, 3) or not row[0]:
            raise AnnotationError(f"{where}: expected 'path,label[,split]', got {','.join(row)!r}; fix the line")
        split_name = row[2] if len(row) == 3 and row[2] else "train"
        if split_name not in SPLITS:
            raise AnnotationError(f"{where}: split {split_name!r} is not one of {', '.join(SPLITS)}; fix the line")
        if row[1]:
            checked_name(row[1], "class name", where)
        rows.append((video_relpath(row[0], videos, where), row[1], split_name))
    classes = _class_order({label for _, label, _ in rows if label})
    class_ids = {name: i for i, name in enumerate(classes)}
    root = Location(videos)
    paths = [root.uri_of(rel) for rel, _, _ in rows]
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
