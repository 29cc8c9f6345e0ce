"""A folder dataset: `ROOT/<class>/<video>`, or `ROOT/<split>/<class>/<video>` with split folders train/val/test."""

from __future__ import annotations

from pathlib import Path

from schemas.manifest import SPLITS, VideoRecord

from .common import VIDEO_EXTENSIONS, AnnotationError, DatasetManifest, require_dir, unique_ids


def load(annotations: Path | None, videos: Path, split: int | None = None) -> DatasetManifest:
    """Every video under `videos`, labelled by its class folder (classes sorted by name).

    Without split folders every video is in split `train`. `annotations` and `split` are unused.
    """
    require_dir(videos, "video folder", "--videos")
    top = sorted(p for p in videos.iterdir() if p.is_dir())
    if top and all(p.name in SPLITS for p in top):
        split_dirs = [(p, p.name) for p in top]
    else:
        split_dirs = [(videos, "train")]
    classes = sorted({c.name for d, _ in split_dirs for c in d.iterdir() if c.is_dir()})
    if not classes:
        raise AnnotationError(f"no class folders under {videos}; expected {videos}/<class>/<video>")
    entries = []
    for split_dir, split_name in split_dirs:
        for label, name in enumerate(classes):
            class_dir = split_dir / name
            if not class_dir.is_dir():
                continue
            for f in sorted(class_dir.rglob("*")):
                if f.is_file() and f.suffix.lower() in VIDEO_EXTENSIONS:
                    entries.append((f, label, name, split_name))
    ids = unique_ids([f for f, *_ in entries], videos)
    records = [
        VideoRecord(video_id=vid, path=str(f.absolute()), label=label, label_name=name, split=split_name, dataset="folder")
        for vid, (f, label, name, split_name) in zip(ids, entries)
    ]
    return DatasetManifest(records, classes, "folder", sources=[str(videos)])
