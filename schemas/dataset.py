"""The files beside the shards of a preprocessed dataset, written last (after every shard has closed):

OUT/shards/<split>-<NNNNNN>.tar   the samples (see schemas.sample)
OUT/shards/<split>-<NNNNNN>.idx   its index for NVIDIA DALI's webdataset reader (schemas.sample.dali_index)
OUT/index.parquet                 one row per sample: key, shard, label, split, frames, and its byte range in
                                  the tar (offset, bytes): one ranged read gets the whole sample; its first
                                  `head` bytes hold its metadata and member table, which place every member
OUT/results.parquet               one row per manifest video: ok or failed, the reason, seconds
OUT/dataset.json                  classes, modalities, parameters, counts, the flowshard version
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import pyarrow as pa

from storage import Location

from .sample import FORMAT_VERSION

SHARDS_DIR = "shards"
DALI_INDEX_SUFFIX = ".idx"  # beside each tar, named as DALI's wds2idx names it: train-000000.idx
INDEX_FILE = "index.parquet"
RESULTS_FILE = "results.parquet"
DATASET_FILE = "dataset.json"

INDEX_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),  # the sample key (= video_id)
        pa.field("shard", pa.string(), nullable=False),  # tar file name under shards/
        pa.field("label", pa.int32(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("frames", pa.int32(), nullable=False),
        pa.field("bytes", pa.int64(), nullable=False),  # the sample's bytes in the tar, headers and padding included
        pa.field("offset", pa.int64(), nullable=False),  # where the sample's first header starts in the tar
        # its first bytes up to and including its member table (schemas.sample.MEMBERS); 0: a sample without one
        pa.field("head", pa.int64(), nullable=False),
    ]
)

RESULTS_SCHEMA = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),  # the tar file under shards/ the video was planned into
        # (as index.parquet names it; earlier flowshard wrote it without ".tar"; no such file where all its videos failed)
        pa.field("status", pa.string(), nullable=False),  # "ok" or "failed"
        pa.field("reason", pa.string(), nullable=False),  # one line; "" when ok
        pa.field("seconds", pa.float64(), nullable=False),
        pa.field("frames", pa.int32(), nullable=False),
        pa.field("bytes", pa.int64(), nullable=False),
        pa.field("label", pa.int32(), nullable=False),
        pa.field("rotation", pa.int32(), nullable=False),  # degrees counter-clockwise the frames were turned for display
        pa.field("mirrored", pa.bool_(), nullable=False),  # and mirrored after the turn
        # frames that damaged packets lost (the video was kept without them), and when they were to be shown
        pa.field("frames_lost", pa.int32(), nullable=False),
        pa.field("lost_at", pa.string(), nullable=False),  # '1.44-1.72 s'; "" where none were lost
    ]
)


@dataclass
class DatasetInfo:
    """dataset.json: what a trainer needs to know about the shards without opening them."""

    classes: list[str]
    modalities: list[str]
    parameters: dict  # the preprocessing configuration (decode, flow, encoding)
    counts: dict  # {"videos": n, "ok": n, "failed": n, "samples": {split: n}, "shards": {split: n}, "frames": n}
    shards: dict = field(default_factory=dict)  # {split: [tar file names]}
    flowshard_version: str = ""
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        """The text of dataset.json."""
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> DatasetInfo:
        """dataset.json read back."""
        return cls(**json.loads(text))


def read_dataset_info(root: str) -> DatasetInfo:
    """Read OUT/dataset.json of a preprocessed dataset (a local path or URI).

    Raises:
        ValueError: the folder is not a finished flowshard dataset, or from another format version.
        StorageError: its store cannot be reached.
    """
    data = Location(root)
    if not data.is_file(DATASET_FILE):
        raise ValueError(
            f"{root} has no {DATASET_FILE}: it is not a finished flowshard dataset (run `python -m jobs.preprocess` to completion)"
        )
    info = DatasetInfo.from_json(data.read_text(DATASET_FILE))
    if info.format_version != FORMAT_VERSION:
        raise ValueError(
            f"{root} was written in sample format {info.format_version}; this flowshard reads {FORMAT_VERSION}. Rebuild the shards."
        )
    return info
