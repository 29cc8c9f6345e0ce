"""Sampling (TSN segments, I3D clips) and the stack transforms, as pure functions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainers.sampling import clip_indices, snippet_indices, tsn_offsets
from trainers.transforms import (
    crop_resize,
    hflip_flow,
    multi_scale_crop_box,
    normalize_flow,
    stack_flow_channels,
    ten_crop_boxes,
    three_crop_boxes,
)


def test_tsn_test_offsets_are_segment_centres():
    # 30 frames, 3 segments of 10: centres at 5, 15, 25 (RGB snippet of 1)
    assert list(tsn_offsets(30, 3, 1, train=False)) == [5, 15, 25]
    # flow snippets of 5 over 29 flows: 25 start positions in 3 segments
    starts = tsn_offsets(29, 3, 5, train=False)
    assert list(starts) == [4, 12, 20] and starts.max() + 5 <= 29


def test_tsn_train_offsets_fall_inside_their_segments():
    rng = np.random.default_rng(0)
    for _ in range(200):
        starts = tsn_offsets(100, 4, 5, train=True, rng=rng)
        interval = (100 - 5 + 1) // 4
        assert all(k * interval <= s < (k + 1) * interval for k, s in enumerate(starts))
    draws = {tuple(tsn_offsets(100, 4, 5, True, rng)) for _ in range(20)}
    assert len(draws) > 1  # random, not fixed


def test_tsn_train_offsets_with_fewer_positions_than_segments_are_sorted_random_starts():
    # 5 frames, snippets of 3: 3 start positions for 4 segments (mmaction2's SampleFrames draws sorted starts)
    rng = np.random.default_rng(0)
    draws = [tsn_offsets(5, 4, 3, train=True, rng=rng) for _ in range(50)]
    assert all(list(d) == sorted(d) and d.min() >= 0 and d.max() <= 2 for d in draws)
    assert len({tuple(d) for d in draws}) > 1
    # no more frames than segments: the first positions in order, the last repeated
    assert list(tsn_offsets(4, 4, 2, train=True, rng=rng)) == [0, 1, 2, 2]


@pytest.mark.parametrize("length", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("train", [True, False])
def test_short_videos_never_crash_and_stay_in_range(length, train):
    rng = np.random.default_rng(1)
    for snippet in (1, 5):
        idx = snippet_indices(tsn_offsets(length, 3, snippet, train, rng), snippet, length)
        assert idx.shape == (3, snippet) and idx.min() >= 0 and idx.max() <= length - 1
    clips = clip_indices(length, 8, 2, 2, train, rng)
    assert clips.shape == (2 if not train else 2, 8) and clips.max() <= length - 1


def test_snippets_are_consecutive_items():
    idx = snippet_indices(np.array([0, 10]), 5, 20)
    assert idx.tolist() == [[0, 1, 2, 3, 4], [10, 11, 12, 13, 14]]


def test_i3d_clips_cover_the_video_at_test_time():
    idx = clip_indices(100, 8, 2, 3, train=False)
    assert idx.shape == (3, 8)
    assert (np.diff(idx, axis=1) == 2).all()
    part = (100 - 15 + 1) / 3  # a clip spans 15 frames: 86 start positions in 3 parts, each clip centred in its part
    assert idx[:, 0].tolist() == [int(k * part + part / 2) for k in range(3)] == [14, 43, 71]


def test_multi_scale_crop_box_stays_inside():
    rng = np.random.default_rng(0)
    for _ in range(100):
        top, left, h, w = multi_scale_crop_box(72, 96, rng)
        assert 0 <= top and top + h <= 72 and 0 <= left and left + w <= 96
        assert h >= int(72 * 0.66)


def test_test_crops():
    h, w, s = 72, 96, 64
    mid_y, mid_x = (h - s) // 2, (w - s) // 2
    assert three_crop_boxes(h, w, s) == [(mid_y, 0, s, s), (mid_y, mid_x, s, s), (mid_y, w - s, s, s)]  # along the long side
    five = [(0, 0), (0, w - s), (h - s, 0), (h - s, w - s), (mid_y, mid_x)]  # corners, then the centre
    assert ten_crop_boxes(h, w, s) == [(t, left, s, s, flip) for flip in (False, True) for t, left in five]
    assert three_crop_boxes(w, h, s) == [(0, mid_y, s, s), (mid_x, mid_y, s, s), (w - s, mid_y, s, s)]  # portrait


def test_flow_flip_negates_x_on_every_flow_and_keeps_y():
    rng = np.random.default_rng(2)
    flow = rng.uniform(-5, 5, (3, 8, 10, 2))  # 3 flows
    bound = 20.0
    stored = 255.0 * (flow + bound) / (2 * bound)  # 0..255 scale
    x = torch.from_numpy(stored).permute(0, 3, 1, 2).float()  # (3, 2, H, W)
    flipped = normalize_flow(hflip_flow(x)) * bound
    original = torch.from_numpy(flow).permute(0, 3, 1, 2).float()
    assert torch.allclose(flipped[:, 0], -original[:, 0].flip(-1), atol=1e-4)
    assert torch.allclose(flipped[:, 1], original[:, 1].flip(-1), atol=1e-4)


def test_normalize_flow_gives_v_over_bound():
    p = torch.tensor([0.0, 127.5, 255.0])
    assert torch.allclose(normalize_flow(p), torch.tensor([-1.0, 0.0, 1.0]))


def test_stacked_flow_channels_are_x0_y0_x1_y1():
    x = torch.arange(2 * 3 * 2).float().view(6, 2, 1, 1)  # K=2 snippets of L=3 flows
    stacked = stack_flow_channels(x, 3)
    assert stacked.shape == (2, 6, 1, 1)
    assert stacked[0, :, 0, 0].tolist() == [0, 1, 2, 3, 4, 5]  # x0 y0 x1 y1 x2 y2 of the first snippet


def test_crop_resize_layout_and_size():
    stack = np.zeros((4, 72, 96, 3), np.uint8)
    stack[:, :, :48] = 255
    out = crop_resize(stack, (0, 0, 72, 72), 32)
    assert out.shape == (4, 3, 32, 32) and out.dtype == torch.float32
    assert out[0, 0, 0, 0] == 255 and out[0, 0, 0, -1] == 0  # the antialiasing support of the last column is all dark
