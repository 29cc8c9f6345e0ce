"""Contact sheets and animations: which samples, what each tile shows and says, sizes, and the job's files."""

from __future__ import annotations

import dataclasses
import io

import av
import cv2
import numpy as np
import pytest
from PIL import Image

from pipeline.contact_sheet import animation_frames, choose_samples, encode_gif, layout, sample_row, sheet_png
from pipeline.decode import encode_mp4
from pipeline.flow import color_wheel_legend, flow_to_color
from schemas.sample import decode_image, decode_sample, encode_sample
from tests.conftest import run_inline
from tests.helpers import H, W, synthetic_sample, write_dataset


def warped_sample(key="v0", label=1, frames=9):
    """A sample with plain and warped flow (constant flow (label, i/10)) and a homography per warped flow."""
    sample = synthetic_sample(key, label, frames)
    meta = dataclasses.replace(
        sample.meta,
        modalities=("rgb", "tvl1", "warp_tvl1"),
        split="test",
        homographies=[{"found": i % 2 == 0, "inliers": 40 + i, "matches": 90} for i in range(frames - 1)],
    )
    return decode_sample(encode_sample(dataclasses.replace(sample, meta=meta, flow={**sample.flow, "warp_tvl1": sample.flow["tvl1"]})))


def test_samples_are_spread_across_classes_then_splits():
    keys = [f"v{i}" for i in range(12)]
    splits = ["train", "test"] * 6
    labels = [i // 4 for i in range(12)]  # three classes, each with two train and two test videos
    every_class = choose_samples(keys, splits, labels, 3)
    assert sorted(labels[i] for i in every_class) == [0, 1, 2]
    every_pair = choose_samples(keys, splits, labels, 6)
    assert sorted((labels[i], splits[i]) for i in every_pair) == sorted((c, s) for c in range(3) for s in ("test", "train"))
    assert len(set(choose_samples(keys, splits, labels, 50))) == 12  # no more than there are, none twice


def test_a_row_shows_frames_across_the_video_and_each_flow_colours_and_as_stored():
    sample = warped_sample(frames=9)
    row = sample_row(sample, "c1")
    assert "v0" in row.title and "c1" in row.title and "test" in row.title
    labels = [t.label for t in row.tiles]
    assert labels[:3] == ["RGB\nframe 0 of 9", "RGB\nframe 4 of 9", "RGB\nframe 8 of 9"]
    assert labels[3].startswith("tvl1 4->5\nmax ") and labels[6].startswith("warp_tvl1 4->5\n")
    assert "homography 44 inliers" in labels[6]  # flow 4's homography
    assert "no homography" in sample_row(sample, "c1", flow_index=3).tiles[6].label
    assert [t.legend for t in row.tiles] == [False] * 3 + [True, False, False] * 2
    np.testing.assert_array_equal(row.tiles[1].image, sample.rgb_frame(4))
    # the x and y tiles are the 8-bit images stored in the shard, pixel for pixel
    x_stored, y_stored = (decode_image(part, color=False) for part in sample.flow["tvl1"][4])
    np.testing.assert_array_equal(row.tiles[4].image[..., 0], x_stored)
    np.testing.assert_array_equal(row.tiles[5].image[..., 0], y_stored)
    # the colours follow the flow: (1, 0.4) px everywhere is the colour flow_to_color gives that direction
    speed = np.hypot(1, 0.4)
    expected = flow_to_color(np.float32([[[1, 0.4]]]), max_flow=speed)[0, 0]
    assert np.abs(row.tiles[3].image[H // 2, W // 2].astype(int) - expected).max() <= 8
    with pytest.raises(ValueError, match="outside 0..7"):
        sample_row(sample, "c1", flow_index=8)


def test_the_sheet_has_readable_labelled_tiles_and_a_colour_key():
    rows = [sample_row(warped_sample(f"v{i}", i % 3), f"c{i % 3}") for i in range(3)]
    sheet = layout(rows, "header", tile_height=160)
    assert len(sheet.tiles) == 3 * 9 and all(h == 160 and w == round(W * 160 / H) for _, _, w, h, _ in sheet.tiles)
    boxes = [(x, y, x + w, y + h) for x, y, w, h, _ in sheet.tiles]
    assert all(a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1] for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    assert [text for _, _, text in sheet.texts[:2]] == ["header", rows[0].title]
    assert {label for *_, label in sheet.tiles} <= {text for *_, text in sheet.texts}  # every tile is labelled
    x, y, w, _, _ = sheet.tiles[3]  # the first colour tile: the key in its top right corner
    side = 160 // 4
    np.testing.assert_array_equal(sheet.canvas[y + 3 : y + 3 + side, x + w - side - 3 : x + w - 3], color_wheel_legend(side))
    png = cv2.imdecode(np.frombuffer(sheet_png(sheet), np.uint8), cv2.IMREAD_COLOR)
    assert png.shape == sheet.canvas.shape
    x, y, w, h, _ = sheet.tiles[0]
    tile = cv2.cvtColor(png[y : y + h, x : x + w], cv2.COLOR_BGR2RGB)
    assert np.abs(tile.astype(int) - sheet.canvas[y : y + h, x : x + w]).max() <= 1  # drawn where laid out


def test_a_narrow_tile_gets_a_smaller_key_or_none():
    portrait = sample_row(warped_sample(), "c1").tiles[3]
    tall = dataclasses.replace(portrait, image=np.ascontiguousarray(portrait.image.transpose(1, 0, 2)[:, :10]))
    for height in (32, 64, 180):  # the tile is ~6, 11 and 32 px wide
        sheet = layout([dataclasses.replace(sample_row(warped_sample(), "c1"), tiles=[tall])], "h", height)
        assert sheet.tiles[0][3] == height


def test_the_colour_key_points_right_as_red_and_is_white_outside():
    key = color_wheel_legend(41)
    assert key[20, 40, 0] == 255 and key[20, 40, 1] < 30  # right: red (Middlebury), at the rim fully saturated
    np.testing.assert_array_equal(key[20, 40], flow_to_color(np.float32([[[1, 0]]]), max_flow=1.0)[0, 0])
    assert (key[0, 0] == 255).all() and (key[20, 20] == 255).all()  # outside the disc; the centre: no motion


def test_an_animation_has_a_frame_per_flow_as_gif_and_mp4():
    sample = warped_sample(frames=7)
    frames = animation_frames(sample, height=161)
    assert len(frames) == 6 and all(f.shape[0] % 2 == 0 and f.shape[1] % 2 == 0 for f in frames)
    gif = Image.open(io.BytesIO(encode_gif(frames, fps=5)))
    assert gif.n_frames == 6 and gif.size == frames[0].shape[1::-1] and gif.info["duration"] == 200
    with av.open(io.BytesIO(encode_mp4(frames, 5))) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 6 and decoded[0].shape == frames[0].shape
    flow_only = dataclasses.replace(sample, rgb=[])
    assert animation_frames(flow_only, 160)[0].shape[1] < frames[0].shape[1]  # no RGB panel
    with pytest.raises(ValueError, match="no flow to animate"):
        animation_frames(dataclasses.replace(sample, flow={}), 160)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("sheet") / "data"
    train = [synthetic_sample(f"a{i}", i % 3) for i in range(6)]
    test = [dataclasses.replace(s, meta=dataclasses.replace(s.meta, video_id=f"b{i}")) for i, s in enumerate(train[:3])]
    write_dataset(root, {"train-000000.tar": train[:3], "train-000001.tar": train[3:], "test-000000.tar": test})
    return root


def test_visualize_draws_the_chosen_samples_and_an_animation(dataset, tmp_path):
    sheet, gif = tmp_path / "sheet.png", tmp_path / "one.gif"
    result = run_inline("jobs.visualize", "--data", str(dataset), "--out", str(sheet), "--samples", "4", "--gif", str(gif))
    assert result.returncode == 0, result.stderr
    assert "4 samples (b0, b1, b2, a0)" in result.stdout  # every class (test first), then train
    image = cv2.imread(str(sheet))
    assert image.shape[0] >= 4 * 160 and image.shape[1] >= 6 * 160 * W // H
    assert Image.open(gif).n_frames == 8
    by_class = run_inline("jobs.visualize", "--data", str(dataset), "--class", "c2", "--split", "train", "--tile-height", "64")
    assert by_class.returncode == 0, by_class.stderr
    assert "2 samples (a2, a5)" in by_class.stdout and (dataset / "contact_sheet.png").is_file()
    chosen = run_inline("jobs.visualize", "--data", str(dataset), "--keys", "b2,a4,b2", "--out", str(sheet), "--index", "0")
    assert "2 samples (b2, a4)" in chosen.stdout  # in the order given, each once


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--keys", "a0,zz"], "no sample zz in"),
        (["--class", "c9"], "--class 'c9' is not a class of"),
        (["--split", "val"], "no samples in split 'val' (the dataset has: test, train)"),
        (["--index", "8"], "flow index 8 is outside 0..7"),
        (["--samples", "0"], "--samples must be at least 1"),
        (["--keys", "a0", "--class", "c0"], "--keys chooses the samples itself"),
    ],
)
def test_a_wrong_choice_is_one_sentence(dataset, tmp_path, flags, message):
    result = run_inline("jobs.visualize", "--data", str(dataset), "--out", str(tmp_path / "s.png"), *flags)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "s.png").exists()
