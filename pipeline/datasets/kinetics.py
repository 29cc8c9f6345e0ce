"""Kinetics-400/600/700: CSV `label,youtube_id,time_start,time_end,split[,is_cc]` (test CSVs lack `label`).

A clip's file is `<youtube_id>_<start:06d>_<end:06d>.<ext>` anywhere under the video root (flat or
`<split>/<label>/`); where only the full video `<youtube_id>.<ext>` exists it is used with the trim window.
"""

from __future__ import annotations

import math

from schemas.manifest import SPLITS, VideoRecord, safe_key

from .common import AnnotationError, DatasetManifest, VideoIndex, checked_name, csv_rows, read_annotation, read_lines

EXTENSIONS = ("mp4", "webm", "mkv")
REQUIRED_COLUMNS = ("youtube_id", "time_start", "time_end", "split")


def read_label_map(path: str) -> list[str]:
    """Labels in index order, one per line (e.g. `kinetics400_label_map_i3d.txt`), each a name (see checked_name)."""
    labels = [checked_name(line, "label", f"{path}:{lineno}") for lineno, line in read_lines(path)]
    if len(set(labels)) != len(labels):
        raise AnnotationError(f"label map {path} lists a label twice; each label must appear once")
    return labels


def _seconds(value: str, csv_path: str, lineno: int, column: str) -> int | float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds >= 0):
        raise AnnotationError(f"{csv_path}:{lineno}: {column} {value!r} is not a number of seconds; fix the line")
    return int(seconds) if seconds.is_integer() else seconds


def _clip_stem(youtube_id: str, start: int | float, end: int | float) -> str:
    return f"{youtube_id}_{int(start):06d}_{int(end):06d}"


def load(annotations: str, videos: str, split: int | None = None, label_map: str | None = None) -> DatasetManifest:
    """Read a Kinetics CSV (`annotations`) and find its clips under `videos`.

    Labels are ordered by `label_map` when given, else sorted. `split` is unused (the CSV names each row's split).

    Raises:
        AnnotationError: missing columns, a malformed row, or a label absent from the label map.
    """
    header, rows = _read_rows(annotations)
    col = {name: i for i, name in enumerate(header)}
    has_labels = "label" in col
    row_labels = {row[col["label"]].strip() for _, row in rows} - {""} if has_labels else set()
    classes = read_label_map(label_map) if label_map is not None else sorted(row_labels)
    class_ids = {name: i for i, name in enumerate(classes)}
    index = VideoIndex(videos)
    records = [_record(annotations, lineno, row, col, class_ids, label_map, index) for lineno, row in rows]
    return DatasetManifest(records, classes, "kinetics", sources=[annotations])


def _read_rows(annotations: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The CSV's header and its non-blank rows with their line numbers; AnnotationError on missing columns or a bad row."""
    lines = csv_rows(read_annotation(annotations, "Kinetics CSV"), annotations)
    header = [h.strip() for h in next(lines, (1, []))[1]]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise AnnotationError(f"{annotations}:1: header lacks {', '.join(missing)}; expected 'label,youtube_id,time_start,time_end,split'")
    if len(set(header)) != len(header):
        twice = next(h for h in header if header.count(h) > 1)
        raise AnnotationError(f"{annotations}:1: the header names column {twice!r} twice; fix the header")
    rows = []
    for line_num, row in lines:
        if not "".join(row).strip():
            continue
        if len(row) != len(header):
            raise AnnotationError(
                f"{annotations}:{line_num}: expected {len(header)} comma-separated fields, got {len(row)}; quote labels that contain commas"
            )
        rows.append((line_num, row))
    return header, rows


def _record(annotations: str, lineno: int, row: list[str], col: dict, class_ids: dict, label_map, index: VideoIndex) -> VideoRecord:
    """One CSV row as a manifest record (the clip found under the videos root, or listed as missing)."""
    where = f"{annotations}:{lineno}"
    youtube_id = row[col["youtube_id"]].strip()
    split_name = row[col["split"]].strip()
    if not youtube_id:
        raise AnnotationError(f"{where}: empty youtube_id; fix the line")
    checked_name(youtube_id, "youtube_id", where)
    if split_name not in SPLITS:
        raise AnnotationError(f"{where}: split {split_name!r} is not one of {', '.join(SPLITS)}; fix the line")
    start = _seconds(row[col["time_start"]], annotations, lineno, "time_start")
    end = _seconds(row[col["time_end"]], annotations, lineno, "time_end")
    if end <= start:
        raise AnnotationError(f"{where}: time_end {end} is not after time_start {start}; fix the line")
    label_name = row[col["label"]].strip() if "label" in col else ""
    if label_name:
        checked_name(label_name, "label", where)
    if label_name and label_name not in class_ids:
        raise AnnotationError(f"{where}: label {label_name!r} is not in the label map {label_map}; fix one of them")
    stem = _clip_stem(youtube_id, start, end)
    video_id = checked_name(safe_key(stem), "clip id", where)
    path, start_sec, end_sec = _find_clip(index, youtube_id, stem, start, end, label_name)
    return VideoRecord(
        video_id=video_id,
        path=path if path is not None else index.expected(f"{stem}.{EXTENSIONS[0]}"),
        label=class_ids[label_name] if label_name else -1,
        label_name=label_name,
        split=split_name,
        dataset="kinetics",
        start_sec=start_sec,
        end_sec=end_sec,
        exists=path is not None,
    )


def _find_clip(index: VideoIndex, youtube_id: str, stem: str, start, end, label_name: str):
    """(path, start_sec, end_sec): the trimmed clip if present, else the full video with its window, else None."""
    label_dirs = [label_name, label_name.replace(" ", "_")] if label_name else [None]
    for name in (stem, youtube_id):
        for ext in EXTENSIONS:
            for prefer in label_dirs:
                found = index.find(f"{name}.{ext}", prefer_dir=prefer)
                if found is not None:
                    return (found, None, None) if name == stem else (found, float(start), float(end))
    return None, None, None
