"""The files a dry run writes (`python -m jobs.preprocess ... --dry-run DIR`), in a folder of the user's, never
beside the shards:

DIR/plan.json       what the run would do and cost: videos expected ok and failed by reason, frames and flow
                    pairs per split, shards and bytes, wall time and what bounds it, machine hours and price,
                    the calibration it was scaled from, and what could not be measured
DIR/census.parquet  one row per video to run: what its container says, and what the run should make of it
DIR/plan.png        the census at a glance: durations, sizes, frame rates, codecs, predicted failures
"""

from __future__ import annotations

import pyarrow as pa

PLAN_FILE = "plan.json"
CENSUS_FILE = "census.parquet"
PLAN_PICTURE = "plan.png"
PLAN_VERSION = 1

CENSUS_SCHEMA = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("label", pa.int32(), nullable=False),
        pa.field("status", pa.string(), nullable=False),  # "ok" or "failed": what preprocessing is expected to give
        pa.field("reason", pa.string(), nullable=False),  # preprocessing's one-line reason where failed, else ""
        pa.field("bytes", pa.int64(), nullable=False),  # the file's size
        pa.field("container", pa.string(), nullable=False),  # FFmpeg's name for it, e.g. "mov,mp4,m4a,3gp,3g2,mj2"
        pa.field("codec", pa.string(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),  # stored
        pa.field("height", pa.int32(), nullable=False),
        pa.field("sample_aspect", pa.float64(), nullable=False),
        pa.field("display_width", pa.int32(), nullable=False),  # as a player shows it: sample aspect, rotation
        pa.field("display_height", pa.int32(), nullable=False),
        pa.field("rotation", pa.int32(), nullable=False),  # degrees counter-clockwise its frames will be turned
        pa.field("mirrored", pa.bool_(), nullable=False),
        pa.field("fps", pa.float64(), nullable=False),  # the stream's frame rate
        pa.field("duration", pa.float64(), nullable=False),  # seconds; 0 where the container gives none
        pa.field("declared_frames", pa.int64(), nullable=False),  # 0: the container declares none
        pa.field("frames_in_file", pa.int64(), nullable=False),  # declared, else from the duration, else packets
        pa.field("frames_from", pa.string(), nullable=False),  # "declared", "duration" or "packets"
        pa.field("estimated_frames", pa.int64(), nullable=False),  # kept by the run: trim window, --fps, --max-frames
        pa.field("out_width", pa.int32(), nullable=False),  # the stored frames' size at the run's settings
        pa.field("out_height", pa.int32(), nullable=False),
        pa.field("audio", pa.bool_(), nullable=False),
    ]
)
