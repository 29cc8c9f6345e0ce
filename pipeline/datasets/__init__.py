"""Dataset adapters: official annotation files -> one manifest (see `schemas.manifest`).

Each adapter module has `load(annotations, videos, split) -> DatasetManifest`.
"""

from __future__ import annotations

from collections import Counter

from schemas.manifest import SPLITS

from . import csvlist, folder, hmdb51, kinetics, ucf101
from .common import AnnotationError, DatasetManifest

DATASETS = ("ucf101", "hmdb51", "kinetics", "folder", "csv")
_LOADERS = {"ucf101": ucf101.load, "hmdb51": hmdb51.load, "kinetics": kinetics.load, "folder": folder.load, "csv": csvlist.load}

__all__ = ["DATASETS", "AnnotationError", "DatasetManifest", "load_dataset", "summarize"]


def load_dataset(dataset: str, annotations: str | None, videos: str, split: int = 1, label_map: str | None = None) -> DatasetManifest:
    """Read `dataset`'s annotations into a manifest, looking for its video files under `videos`.

    Every path is a local path or a URI (s3://, gs://, hdfs://).

    Raises:
        ValueError: an unknown dataset name or an option that dataset does not take.
        AnnotationError: a missing or malformed annotation file, naming the file and line.
        StorageError: a store that cannot be reached.
    """
    if dataset not in _LOADERS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if dataset in ("ucf101", "hmdb51", "kinetics", "csv") and annotations is None:
        raise ValueError(f"{dataset} needs --annotations (the official annotation files)")
    if label_map is not None and dataset != "kinetics":
        raise ValueError("--label-map applies only to kinetics")
    if dataset in ("ucf101", "hmdb51") and split not in (1, 2, 3):
        raise ValueError(f"--split must be 1, 2 or 3 for {dataset}, got {split}")
    if dataset == "kinetics":
        return kinetics.load(annotations, videos, label_map=label_map)
    return _LOADERS[dataset](annotations, videos, split)


def summarize(manifest: DatasetManifest, show_missing: int = 5) -> str:
    """A few lines for the terminal: rows per split, classes, missing files (first few named)."""
    per_split = Counter(r.split for r in manifest.records)
    lines = [f"{manifest.dataset}: {len(manifest.records)} videos, {len(manifest.classes)} classes"]
    lines += [f"  {split:<5} {per_split[split]}" for split in SPLITS if per_split[split]]
    missing = manifest.missing
    lines.append(f"  missing files: {len(missing)}")
    lines += [f"    {r.path}" for r in missing[:show_missing]]
    if len(missing) > show_missing:
        lines.append(f"    ... and {len(missing) - show_missing} more")
    return "\n".join(lines)
