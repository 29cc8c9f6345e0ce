"""The video manifest: one row per video of a dataset, written by `jobs.manifest`, read by `jobs.preprocess`.

The ordered class list travels in the Parquet file's schema metadata, so label indices can always be
turned back into names without the annotation files.
"""

from __future__ import annotations

import json
import re
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

_UNSAFE_KEY_CHARS = re.compile(r"[./\\\s]+")


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


def safe_key(name: str) -> str:
    """Turn a file stem into a WebDataset-safe key: '.', '/', '\\' and whitespace become '_'.

    WebDataset splits a member name at its first '.', and '/' would make a directory, so neither may
    appear in a key.
    """
    key = _UNSAFE_KEY_CHARS.sub("_", name)
    if not key:
        raise ValueError(f"cannot derive a video id from {name!r}: nothing is left once '.', '/' and spaces are removed")
    return key


def manifest_table(records: list[VideoRecord], classes: list[str], dataset: str) -> pa.Table:
    """Build the manifest table, checking ids are unique/safe and labels fit the class list.

    Raises:
        ValueError: a duplicate or unsafe video_id, a label outside [-1, len(classes)), or an unknown split.
    """
    seen: dict[str, str] = {}
    for r in records:
        if r.video_id in seen:
            raise ValueError(
                f"video id {r.video_id!r} is used by both {seen[r.video_id]} and {r.path}; rename one of the files so their names differ"
            )
        seen[r.video_id] = r.path
        if safe_key(r.video_id) != r.video_id:
            raise ValueError(f"video id {r.video_id!r} is not a valid WebDataset key (no '.', '/' or spaces)")
        if not -1 <= r.label < len(classes):
            raise ValueError(f"label {r.label} of {r.video_id!r} is outside the {len(classes)} classes")
        if r.split not in SPLITS:
            raise ValueError(f"split {r.split!r} of {r.video_id!r} is not one of {', '.join(SPLITS)}")
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
    classes = json.loads(metadata[CLASSES_METADATA_KEY])
    rows = table.select(MANIFEST_SCHEMA.names).to_pylist()
    return [VideoRecord(**row) for row in rows], classes
