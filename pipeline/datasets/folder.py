"""A folder dataset: `ROOT/<class>/<video>`, or `ROOT/<split>/<class>/<video>` with split folders train/val/test."""

from __future__ import annotations

from schemas.manifest import SPLITS, VideoRecord

from .common import AnnotationError, DatasetManifest, checked_name, is_video, require_dir, unique_ids


def load(annotations: str | None, videos: str, split: int | None = None) -> DatasetManifest:
    """Every video under `videos` (a local path or URI), labelled by its class folder (classes sorted by name).

    Without split folders every video is in split `train`. `annotations` and `split` are unused.
    """
    root = require_dir(videos, "video folder", "--videos")
    top = root.list_dirs()
    split_dirs = top if top and all(name in SPLITS for name in top) else []
    classes = sorted({c for d in split_dirs for c in root.list_dirs(d)} if split_dirs else top)
    for name in classes:
        checked_name(name, "class folder", videos, fix="rename the folder")
    if not classes:
        raise AnnotationError(f"no class folders under {videos}; expected {videos}/<class>/<video>")
    class_ids = {name: i for i, name in enumerate(classes)}
    entries = []  # (relative path, label, split)
    for rel in root.walk():
        parts = rel.split("/")
        split_name, parts = (parts[0], parts[1:]) if split_dirs else ("train", parts)
        if len(parts) >= 2 and parts[0] in class_ids and is_video(rel):
            entries.append((rel, class_ids[parts[0]], split_name))
    entries.sort(key=lambda e: (SPLITS.index(e[2]), e[1], e[0]))
    paths = [root.uri_of(rel) for rel, _, _ in entries]
    ids = unique_ids(paths, videos)
    records = [
        VideoRecord(video_id=vid, path=path, label=label, label_name=classes[label], split=split_name, dataset="folder")
        for vid, path, (_, label, split_name) in zip(ids, paths, entries)
    ]
    return DatasetManifest(records, classes, "folder", sources=[videos])
