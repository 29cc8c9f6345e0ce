"""The video manifest: one row per video of a dataset, written by `jobs.manifest`, read by `jobs.preprocess`.

The ordered class list travels in the Parquet file's schema metadata, so label indices can always be
turned back into names without the annotation files.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from storage import Location

SPLITS = ("train", "val", "test")
CLASSES_METADATA_KEY = b"flowshard.classes"
DATASET_METADATA_KEY = b"flowshard.dataset"

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),  # unique, a valid WebDataset key (no '.' or '/')
        pa.field("path", pa.string(), nullable=False),  # absolute path or URI of the video file
        pa.field("label", pa.int32(), nullable=False),  # 0-based class index, -1 where the split has no label
        pa.field("label_name", pa.string(), nullable=False),  # "" where the split has no label
        pa.field("split", pa.string(), nullable=False),  # one of SPLITS
        pa.field("dataset", pa.string(), nullable=False),  # ucf101 | hmdb51 | kinetics | folder | csv
        pa.field("start_sec", pa.float64(), nullable=True),  # trim window inside `path`, None = whole file
        pa.field("end_sec", pa.float64(), nullable=True),
        pa.field("exists", pa.bool_(), nullable=False),  # False only when kept with --allow-missing
    ]
)

NAME_MAX_BYTES = 255  # a file name's limit on common file systems: a class name is a folder name in exports
# Characters no name may hold, by Unicode category: they end or break a line (list files, terminals) or a path, or
# are invisible format characters (a byte-order mark from joined files, right-to-left overrides that show a name
# reversed), except the zero-width (non-)joiners that Persian, Indic scripts and emoji need.
_FORBIDDEN = {
    "Cc": "the control character",
    "Cs": "the lone surrogate",
    "Zl": "the line separator",
    "Zp": "the paragraph separator",
    "Cf": "the invisible format character",
}
_JOINERS = ("\u200c", "\u200d")


def _forbidden(char: str) -> str | None:
    """What `char` is when no name may hold it ('the control character'), else None."""
    what = _FORBIDDEN.get(unicodedata.category(char))
    return None if char in _JOINERS else what


@dataclass(frozen=True)
class VideoRecord:
    """One manifest row; see MANIFEST_SCHEMA for the meaning of each field."""

    video_id: str
    path: str
    label: int
    label_name: str
    split: str
    dataset: str
    start_sec: float | None = None
    end_sec: float | None = None
    exists: bool = True


def name_problem(name: str) -> str | None:
    """What keeps `name` from being a class name or video id, as a phrase naming the character ('holds '/', a path
    separator'), or None when it may be one. Names come from downloaded annotation files and become folder and file
    names (exports, tar members) and words of list files, so they are data, never paths: no '/', '\\', control or
    line-separator character, not '.' or '..', not empty, at most 255 bytes in UTF-8."""
    if not name:
        return "is empty"
    if name in (".", ".."):
        return f"is {name!r}, a folder's alias"
    for char in name:
        if char in "/\\":
            return f"holds {char!r}, a path separator"
        if _forbidden(char):
            return f"holds {_forbidden(char)} U+{ord(char):04X}"
    if len(name.encode()) > NAME_MAX_BYTES:
        return f"is {len(name.encode())} bytes long, more than a file name's {NAME_MAX_BYTES}"
    return None


def safe_key(name: str) -> str:
    """Turn a file stem into a WebDataset-safe key: '.', '/', '\\', whitespace and control characters become '_'.

    WebDataset splits a member name at its first '.', and '/' would make a directory, so neither may
    appear in a key.
    """
    marked = "".join("\0" if c in "./\\" or c.isspace() or _forbidden(c) else c for c in name)  # NUL itself is Cc
    key = re.sub("\0+", "_", marked)
    if not key:
        raise ValueError(f"cannot derive a video id from {name!r}: nothing is left once '.', '/' and spaces are removed")
    return key


def check_manifest(records: list[VideoRecord], classes: list[str]) -> None:
    """Check what every manifest must hold, however it was made: class names and video ids pass `name_problem`,
    ids are unique WebDataset keys, each label fits the class list and matches its name, splits are known.

    Raises:
        ValueError: the first row or class that breaks a rule, named, with what to fix.
    """
    for i, name in enumerate(classes):
        why = name_problem(name) if isinstance(name, str) else "is not a string"
        if why:
            raise ValueError(f"class {i} ({name!r}) {why}; class names are data, never paths")
    if len(set(classes)) != len(classes):
        twice = next(name for name in classes if classes.count(name) > 1)
        raise ValueError(f"class name {twice!r} is listed twice; each class must appear once")
    seen: dict[str, str] = {}
    for r in records:
        if r.video_id in seen:
            raise ValueError(
                f"video id {r.video_id!r} is used by both {seen[r.video_id]} and {r.path}; rename one of the files so their names differ"
            )
        seen[r.video_id] = r.path
        why = name_problem(r.video_id)
        if why:
            raise ValueError(f"video id {r.video_id!r} {why}; video ids are data, never paths")
        if safe_key(r.video_id) != r.video_id:
            raise ValueError(f"video id {r.video_id!r} is not a valid WebDataset key (no '.', '/' or spaces)")
        if not -1 <= r.label < len(classes):
            raise ValueError(f"label {r.label} of {r.video_id!r} is outside the {len(classes)} classes")
        expected = classes[r.label] if r.label >= 0 else ""
        if r.label_name != expected:
            raise ValueError(f"label name {r.label_name!r} of {r.video_id!r} is not class {r.label}'s name {expected!r}")
        if r.split not in SPLITS:
            raise ValueError(f"split {r.split!r} of {r.video_id!r} is not one of {', '.join(SPLITS)}")


def manifest_table(records: list[VideoRecord], classes: list[str], dataset: str) -> pa.Table:
    """Build the manifest table, checked by `check_manifest`.

    Raises:
        ValueError: a record or class name that breaks a rule of `check_manifest`.
    """
    check_manifest(records, classes)
    columns = {name: [getattr(r, name) for r in records] for name in MANIFEST_SCHEMA.names}
    table = pa.Table.from_pydict(columns, schema=MANIFEST_SCHEMA)
    return table.replace_schema_metadata({CLASSES_METADATA_KEY: json.dumps(list(classes)).encode(), DATASET_METADATA_KEY: dataset.encode()})


def write_manifest(table: pa.Table, path: str) -> None:
    """Write the manifest (a local path or URI) atomically, so a crash never leaves half a file."""
    with Location(path).atomic_write() as stream:
        pq.write_table(table, stream)


def read_manifest(path: str) -> tuple[list[VideoRecord], list[str]]:
    """Read a manifest (a local path or URI) written by `write_manifest`.

    Returns:
        (records, classes): the rows in file order and the ordered class names.

    Raises:
        ValueError: the file is not a flowshard manifest (missing columns or class list), with the fix.
        StorageError: its store cannot be reached.
    """
    source = Location(path)
    kind = source.info().type
    if kind == pafs.FileType.Directory:
        raise ValueError(f"manifest {path} is a folder, not a file; pass the .parquet file `python -m jobs.manifest --out` wrote")
    if kind != pafs.FileType.File:
        raise ValueError(f"manifest {path} does not exist; build one with `python -m jobs.manifest`")
    try:
        table = pq.read_table(source.open_input_file())
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValueError(f"manifest {path} is not a readable Parquet file ({exc}); rebuild it with `python -m jobs.manifest`") from None
    missing = [n for n in MANIFEST_SCHEMA.names if n not in table.column_names]
    metadata = table.schema.metadata or {}
    if missing or CLASSES_METADATA_KEY not in metadata:
        what = f"columns {', '.join(missing)}" if missing else "its class list"
        raise ValueError(f"manifest {path} lacks {what}; rebuild it with `python -m jobs.manifest`")
    try:
        classes = json.loads(metadata[CLASSES_METADATA_KEY])
        table = table.select(MANIFEST_SCHEMA.names).cast(MANIFEST_SCHEMA.remove_metadata())
    except (ValueError, pa.ArrowException) as exc:  # JSONDecodeError, ArrowInvalid, ArrowNotImplementedError
        raise ValueError(
            f"manifest {path} is not a flowshard manifest ({_first_line(exc)}); rebuild it with `python -m jobs.manifest`"
        ) from None
    nulls = [f.name for f in MANIFEST_SCHEMA if not f.nullable and table.column(f.name).null_count]
    if nulls or not isinstance(classes, list):
        what = f"empty values in column {nulls[0]}" if nulls else "a class list that is not a list"
        raise ValueError(f"manifest {path} has {what}; rebuild it with `python -m jobs.manifest`")
    records = [VideoRecord(**row) for row in table.to_pylist()]
    try:
        check_manifest(records, classes)
    except ValueError as exc:
        raise ValueError(f"manifest {path}: {exc}; rebuild it with `python -m jobs.manifest`") from None
    return records, classes


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
