"""UCF101: `classInd.txt` plus `trainlist0N.txt` / `testlist0N.txt` (official splits 1-3)."""

from __future__ import annotations

from pathlib import PurePosixPath

from schemas.manifest import VideoRecord, safe_key
from storage import join

from .common import AnnotationError, DatasetManifest, VideoIndex, checked_name, read_lines, require_dir, resolve, video_relpath


def read_class_index(path: str) -> list[str]:
    """Class names in label order from `classInd.txt` (`<1-based index> <name>` per line)."""
    classes: dict[int, str] = {}
    for lineno, line in read_lines(path):
        parts = line.split()
        if len(parts) != 2 or not _is_number(parts[0]):
            raise AnnotationError(f"{path}:{lineno}: expected '<index> <ClassName>', got {line!r}; fix or remove the line")
        name = checked_name(parts[1], "class name", f"{path}:{lineno}")
        if int(parts[0]) in classes or name in classes.values():
            raise AnnotationError(f"{path}:{lineno}: class index {parts[0]} or name {name!r} is listed twice; fix or remove the line")
        classes[int(parts[0])] = name
    if sorted(classes) != list(range(1, len(classes) + 1)):
        raise AnnotationError(f"{path}: class indices must run 1..{len(classes)} without gaps; fix the file")
    return [classes[i] for i in range(1, len(classes) + 1)]


def _is_number(text: str) -> bool:
    """Whether `text` is a class number: ASCII digits, few enough for int() (which refuses over 4300 digits)."""
    return text.isascii() and text.isdigit() and len(text) <= 9


def _video_class(relpath: str, path: str, lineno: int, line: str) -> str:
    parts = relpath.split("/")
    if len(parts) != 2:
        raise AnnotationError(f"{path}:{lineno}: expected '<Class>/<video>.avi', got {line!r}; fix the line")
    return parts[0]


def load(annotations: str, videos: str, split: int = 1) -> DatasetManifest:
    """Read split `split` of UCF101 from the folder `annotations`, looking for the videos under `videos`.

    Raises:
        AnnotationError: a missing file or malformed line (naming file and line) or a label/folder mismatch.
    """
    require_dir(annotations, "UCF101 annotation folder", "--annotations")
    classes = read_class_index(join(annotations, "classInd.txt"))
    class_ids = {name: i for i, name in enumerate(classes)}
    index = VideoIndex(videos)
    records = []
    lists = [(join(annotations, f"trainlist{split:02d}.txt"), "train"), (join(annotations, f"testlist{split:02d}.txt"), "test")]
    for list_path, split_name in lists:
        for lineno, line in read_lines(list_path):
            parts = line.split()
            relpath = video_relpath(parts[0], videos, f"{list_path}:{lineno}")
            folder = _video_class(relpath, list_path, lineno, line)
            if folder not in class_ids:
                raise AnnotationError(f"{list_path}:{lineno}: class folder {folder!r} is not in classInd.txt; fix the line")
            label = class_ids[folder]
            if split_name == "train":
                if len(parts) != 2 or not _is_number(parts[1]):
                    raise AnnotationError(f"{list_path}:{lineno}: expected '<Class>/<video>.avi <label>', got {line!r}; fix the line")
                if int(parts[1]) - 1 != label:
                    meaning = classes[int(parts[1]) - 1] if 0 < int(parts[1]) <= len(classes) else "no class"
                    raise AnnotationError(
                        f"{list_path}:{lineno}: label {parts[1]} means {meaning} but the video is in folder {folder!r}; "
                        "fix the label or the folder"
                    )
            elif len(parts) != 1:
                raise AnnotationError(f"{list_path}:{lineno}: expected '<Class>/<video>.avi', got {line!r}; fix the line")
            path, exists = resolve(index, relpath, prefer_dir=folder)
            records.append(
                VideoRecord(
                    video_id=safe_key(PurePosixPath(relpath).stem),
                    path=path,
                    label=label,
                    label_name=classes[label],
                    split=split_name,
                    dataset="ucf101",
                    exists=exists,
                )
            )
    return DatasetManifest(records, classes, "ucf101", sources=[p for p, _ in lists])
