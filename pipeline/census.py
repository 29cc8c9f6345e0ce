"""The census of a run's videos, before the run: each file opened for its container's metadata and its first
frame (for the display matrix, and to prove its codec decodes), never decoded further.

It predicts which videos preprocessing will fail, with the one-line reasons preprocessing gives them (missing,
empty, unreadable, audio-only, cut off, too short), and how many frames each of the others will give at the
run's settings (`estimated_frames`: the frames the container presents, as decoding counts them: its index less
what an edit list hides, else the declared count, else its packets counted (Matroska declares none; its duration
times an average rate is wrong for a variable frame rate); then the trim window, `--fps` and `--max-frames`).
Damage inside a file (packets that do not decode) is found only by decoding: the run keeps such videos, and
`--strict-decode` fails them where the census cannot tell.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import av

from schemas.manifest import VideoRecord

from .decode import (
    DecodeConfig,
    Orientation,
    VideoError,
    corrupt,
    cut_off,
    frame_orientation,
    held_frames,
    open_container,
    output_size,
    presented_frames,
    stream_aspect,
    stream_rate,
    too_short,
    turned_size,
    video_file,
    video_stream,
)
from .shards import LISTED_MISSING

FRAME_SOURCES = ("index", "declared", "packets")  # where a video's frame count came from


@dataclass
class VideoCensus:
    """One row of census.parquet: what a video's container says, and what the run is expected to make of it."""

    video_id: str
    split: str
    label: int
    status: str  # "ok" or "failed": what preprocessing is expected to give
    reason: str  # preprocessing's one-line reason where failed, else ""
    bytes: int = 0  # the file's size
    container: str = ""
    codec: str = ""
    width: int = 0  # stored
    height: int = 0
    sample_aspect: float = 1.0
    display_width: int = 0  # as a player shows it: sample aspect corrected, turned
    display_height: int = 0
    rotation: int = 0  # degrees counter-clockwise, as in results.parquet
    mirrored: bool = False
    fps: float = 0.0  # the stream's frame rate
    duration: float = 0.0  # seconds
    declared_frames: int = 0  # 0: the container declares none
    frames_in_file: int = 0  # presented (the index less what an edit list hides), else declared, else packets counted
    frames_from: str = ""  # one of FRAME_SOURCES
    estimated_frames: int = 0  # what the run keeps: trim window, --fps and --max-frames applied
    out_width: int = 0  # the stored frames' size at the run's --short-side / --size
    out_height: int = 0
    audio: bool = False


def census_video(record: VideoRecord, cfg: DecodeConfig) -> VideoCensus:
    """Open `record`'s file for its metadata and first frame; never raises for a bad file (the row says why)."""
    row = VideoCensus(record.video_id, record.split, record.label, "ok", "")
    try:
        if not record.exists:
            raise VideoError(LISTED_MISSING)
        source, row.bytes = video_file(record.path)
        with contextlib.ExitStack() as files:
            _read_container(open_container(record.path, files, source), row, record, cfg)
    except VideoError as exc:
        row.status, row.reason = "failed", str(exc)
    return row


def _read_container(container: av.container.InputContainer, row: VideoCensus, record: VideoRecord, cfg: DecodeConfig) -> None:
    """Fill `row` from an open container; VideoError where preprocessing would fail."""
    row.container = container.format.name
    row.audio = any(s.type == "audio" for s in container.streams)
    stream = video_stream(container)
    codec = stream.codec_context
    row.codec, row.width, row.height = codec.name, codec.width, codec.height
    aspect = stream_aspect(stream)
    row.sample_aspect = float(aspect)
    row.fps = stream_rate(stream)
    row.declared_frames = max(stream.frames, 0)
    if stream.duration is not None:
        row.duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        row.duration = container.duration / av.time_base
    try:
        first = next(container.decode(stream), None)
    except av.error.FFmpegError as exc:
        raise corrupt(0, exc) from None
    orientation = frame_orientation(first) if first is not None else Orientation()
    row.rotation, row.mirrored = orientation.rotation, orientation.mirrored
    shown = turned_size((round(row.width * aspect), row.height), orientation, DecodeConfig(short_side=None))
    row.display_width, row.display_height = shown
    row.out_width, row.out_height = turned_size(output_size(row.width, row.height, aspect, cfg), orientation, cfg)
    held = held_frames(stream, row.bytes)
    if held is not None:
        row.frames_in_file, row.frames_from = presented_frames(stream), "index"
    elif row.declared_frames:
        row.frames_in_file, row.frames_from = row.declared_frames, "declared"
    else:  # neither: count the packets a player shows (demuxed, not decoded; the whole file is read)
        shown = sum(p.size > 0 and not p.is_discard for p in container.demux(stream))
        row.frames_in_file, row.frames_from = (first is not None) + shown, "packets"
    trimming = record.start_sec is not None or record.end_sec is not None
    row.estimated_frames = estimated_frames(
        row.frames_in_file if held is None else min(held, row.frames_in_file),
        row.fps,
        cfg,
        record.start_sec,
        record.end_sec,
        row.duration if row.frames_from == "packets" else None,
    )
    full = cfg.max_frames is not None and row.estimated_frames >= cfg.max_frames
    error = None if held is None or trimming or full else cut_off(held, row.frames_in_file)
    if error:
        raise error
    if row.estimated_frames < 2:
        raise too_short(row.estimated_frames)


def estimated_frames(
    frames: int,
    rate: float,
    cfg: DecodeConfig,
    start_sec: float | None = None,
    end_sec: float | None = None,
    duration: float | None = None,
) -> int:
    """The frames a run keeps of a video of `frames` at `rate` frames/s: those inside [start_sec, end_sec),
    resampled to `cfg.fps` (as `decode.nearest_in_time` does: one per 1/fps of the frames' span), at most
    `cfg.max_frames`. `duration`: the frames' span in seconds where it is not frames / rate (a variable frame
    rate). Pure."""
    length = duration if duration else frames / rate if rate > 0 else 0.0
    rate = frames / length if length > 0 else rate
    if start_sec is not None or end_sec is not None:
        window = min(end_sec if end_sec is not None else length, length) - max(start_sec or 0.0, 0.0)
        length = max(window, 0.0)
        frames = round(length * rate)
    if cfg.fps is not None and frames:
        frames = max(1, math.floor(length * cfg.fps + 1e-6))
    return min(frames, cfg.max_frames) if cfg.max_frames is not None else frames
