"""Which frames a training or test example uses: TSN segments and I3D clips. Pure functions on counts.

Indices are 0-based into a video's frames (RGB) or flows (flow i = frame i -> i+1); a video shorter
than a snippet or clip gets its last index repeated rather than an error.
"""

from __future__ import annotations

import numpy as np


def tsn_offsets(length: int, num_segments: int, snippet: int, train: bool, rng: np.random.Generator | None = None) -> np.ndarray:
    """Start index of the snippet in each of `num_segments` equal segments (TSN, mmaction2 SampleFrames).

    Args:
        length: frames (RGB) or flows available.
        num_segments: K.
        snippet: consecutive items per segment (1 for RGB, L flows for a flow snippet).
        train: a random start inside each segment; otherwise the centre of each segment.
    Returns:
        (K,) int64 start indices, each in [0, max(length - snippet, 0)].
    """
    if length < 1 or num_segments < 1 or snippet < 1:
        raise ValueError(f"length, segments and snippet must be positive, got {length}, {num_segments}, {snippet}")
    room = length - snippet + 1  # possible start positions
    if train:
        rng = rng or np.random.default_rng()
        interval = room // num_segments
        if interval > 0:
            return np.arange(num_segments) * interval + rng.integers(0, interval, num_segments)
        if length > max(num_segments, snippet):  # fewer start positions than segments: sorted random starts
            return np.sort(rng.integers(0, room, num_segments))
        return np.zeros(num_segments, np.int64) if room <= 0 else np.minimum(np.arange(num_segments), room - 1)
    if room <= 0:
        return np.zeros(num_segments, np.int64)
    interval = room / num_segments
    return (np.arange(num_segments) * interval + interval / 2).astype(np.int64)


def snippet_indices(offsets: np.ndarray, snippet: int, length: int) -> np.ndarray:
    """(K, snippet) indices: each offset followed by the next snippet-1 items, clamped to the last one."""
    idx = offsets[:, None] + np.arange(snippet)[None, :]
    return np.minimum(idx, max(length - 1, 0))


def clip_indices(
    length: int, clip_len: int, interval: int, num_clips: int, train: bool, rng: np.random.Generator | None = None
) -> np.ndarray:
    """(num_clips, clip_len) frame indices for I3D: clip_len frames `interval` apart.

    Training takes one random window per clip; testing spreads the clips evenly and centres each window
    in its part of the video. Videos shorter than a window repeat their last frame.
    """
    if clip_len < 1 or interval < 1 or num_clips < 1:
        raise ValueError(f"clip length, interval and clips must be positive, got {clip_len}, {interval}, {num_clips}")
    span = (clip_len - 1) * interval + 1
    room = length - span + 1
    if train:
        rng = rng or np.random.default_rng()
        starts = rng.integers(0, max(room, 1), num_clips)
    elif room <= 0:
        starts = np.zeros(num_clips, np.int64)
    else:
        part = room / num_clips
        starts = (np.arange(num_clips) * part + part / 2).astype(np.int64)
    idx = starts[:, None] + np.arange(clip_len)[None, :] * interval
    return np.minimum(idx, max(length - 1, 0))
