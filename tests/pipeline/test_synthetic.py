"""The synthetic motion dataset: real decodable H.264 videos whose classes differ only in motion."""

from __future__ import annotations

from collections import Counter

import av
import cv2
import numpy as np
import pytest

from pipeline.datasets import load_dataset
from pipeline.synthetic import SyntheticConfig, class_direction, generate_dataset, plan_dataset, render_video

SMALL = SyntheticConfig(classes=3, videos_per_class=4, width=64, height=48, frames=6, fps=10, seed=3)


def decode(path):
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    entries = generate_dataset(SMALL, out)
    return out, entries


def test_videos_decode_to_requested_size_and_frame_count(small_dataset):
    out, entries = small_dataset
    assert len(entries) == 12
    for e in entries:
        frames = decode(out / e.relpath)
        assert frames.shape == (SMALL.frames, SMALL.height, SMALL.width, 3)
        with av.open(str(out / e.relpath)) as c:
            assert c.streams.video[0].codec_context.name == "h264"
            assert c.streams.video[0].average_rate == SMALL.fps


def test_ucf101_layout_balanced_classes_and_disjoint_groups(small_dataset):
    out, entries = small_dataset
    m = load_dataset("ucf101", out, out, split=1)
    assert all(r.exists for r in m.records)
    assert Counter(r.label for r in m.records) == {0: 4, 1: 4, 2: 4}
    assert Counter((r.label, r.split) for r in m.records) == {(c, s): 2 for c in range(3) for s in ("train", "test")}
    groups = {s: {(e.label, e.group) for e in entries if e.split == s} for s in ("train", "test")}
    assert not groups["train"] & groups["test"]


def test_generation_is_deterministic_per_seed(small_dataset, tmp_path):
    out, entries = small_dataset
    generate_dataset(SMALL, tmp_path / "again")
    first = entries[0].relpath
    assert (tmp_path / "again" / first).read_bytes() == (out / first).read_bytes()
    other = SyntheticConfig(**{**SMALL.__dict__, "seed": 4})
    generate_dataset(other, tmp_path / "other")
    assert not np.array_equal(decode(tmp_path / "other" / first), decode(out / first))


def test_split_plan_matches_ucf101_proportions():
    entries = plan_dataset(SyntheticConfig(classes=4, videos_per_class=12))
    assert Counter(e.split for e in entries) == {"train": 32, "test": 16}


def test_single_frames_carry_no_class_signal():
    """Nearest-class-mean on single frames of held-out videos is at chance, unlike on frame differences."""
    cfg = SyntheticConfig(classes=4, width=64, height=48, frames=4)
    rng = np.random.default_rng(0)

    def sample(label):
        video = render_video(cfg, label, int(rng.integers(1 << 31)), int(rng.integers(1 << 31)))
        return video.frames[0].astype(np.float32).ravel()

    train = {c: np.mean([sample(c) for _ in range(30)], axis=0) for c in range(4)}
    hits = sum(int(np.argmin([np.linalg.norm(sample(c) - train[k]) for k in range(4)]) == c) for c in range(4) for _ in range(15))
    assert hits / 60 <= 0.45  # chance is 0.25


@pytest.mark.parametrize("label", [0, 1, 2, 3])
def test_objects_move_in_the_class_direction(label):
    """Frame t+1 matches frame t shifted along the class direction, in the object regions, best of all classes."""
    cfg = SyntheticConfig(classes=4, width=96, height=72, frames=3, speed=(2.0, 2.0))
    video = render_video(cfg, label, 11, 12)
    a, b = (video.frames[i].astype(np.float32) for i in (0, 1))
    mask = video.object_mask[1]
    errors = []
    for k in range(4):
        ux, uy = class_direction(k, 4)
        shifted = cv2.warpAffine(a, np.float32([[1, 0, 2 * ux], [0, 1, 2 * uy]]), (96, 72), borderMode=cv2.BORDER_WRAP)
        errors.append(np.abs(shifted - b)[mask].mean())
    assert int(np.argmin(errors)) == label
    assert errors[label] < 0.5 * sorted(errors)[1]


def test_camera_pan_moves_the_background():
    cfg = SyntheticConfig(classes=4, width=96, height=72, frames=3, camera_pan=2.0)
    video = render_video(cfg, 0, 5, 6)
    assert video.background_velocity == (-2.0, 0.0)
    a, b = (video.frames[i].astype(np.float32) for i in (0, 1))
    bg = ~(video.object_mask[0] | video.object_mask[1])
    bg[:, -4:] = False  # the strip entering the view
    moved = np.abs(np.roll(a, -2, axis=1) - b)[bg].mean()
    still = np.abs(a - b)[bg].mean()
    assert moved < 0.3 * still


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="even"):
        SyntheticConfig(width=33)
    with pytest.raises(ValueError, match="classes"):
        SyntheticConfig(classes=1)
