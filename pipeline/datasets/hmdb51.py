"""HMDB51: 51 x 3 files `<class>_test_split<N>.txt`, lines `<video>.avi <tag>` (1 train, 2 test, 0 unused)."""

from __future__ import annotations

from pathlib import PurePosixPath

from schemas.manifest import VideoRecord, safe_key
from storage import join

from .common import AnnotationError, DatasetManifest, VideoIndex, checked_name, read_lines, require_dir, resolve

TAGS = {"1": "train", "2": "test", "0": None}  # 0 = not used in this split


def load(annotations: str, videos: str, split: int = 1) -> DatasetManifest:
    """Read split `split` of HMDB51 from the folder `annotations`; classes are the sorted file-name prefixes.

    Raises:
        AnnotationError: no split files, or a malformed line (naming file and line).
    """
    folder = require_dir(annotations, "HMDB51 annotation folder", "--annotations")
    suffix = f"_test_split{split}.txt"
    by_class = {name[: -len(suffix)]: join(annotations, name) for name in folder.list(suffix=suffix)}
    for name, list_path in by_class.items():
        checked_name(name, "class name", list_path, fix="rename the file")
    if not by_class:
        raise AnnotationError(f"no '*{suffix}' files in {annotations}; pass the folder holding the HMDB51 split files")
    classes = sorted(by_class)  # by class name: 'climb' before 'climb_stairs', unlike the file names
    files = [by_class[name] for name in classes]
    index = VideoIndex(videos)
    records = []
    for label, (name, list_path) in enumerate(zip(classes, files)):
        for lineno, line in read_lines(list_path):
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2 or parts[1] not in TAGS:
                raise AnnotationError(f"{list_path}:{lineno}: expected '<video>.avi <0|1|2>', got {line!r}; fix the line")
            split_name = TAGS[parts[1]]
            if split_name is None:
                continue
            checked_name(parts[0], "video file name", f"{list_path}:{lineno}")
            path, exists = resolve(index, f"{name}/{parts[0]}", prefer_dir=name)
            records.append(
                VideoRecord(
                    video_id=safe_key(PurePosixPath(parts[0]).stem),
                    path=path,
                    label=label,
                    label_name=name,
                    split=split_name,
                    dataset="hmdb51",
                    exists=exists,
                )
            )
    return DatasetManifest(records, classes, "hmdb51", sources=files)
