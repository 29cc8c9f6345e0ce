"""Exports to other tools: MMAction2's rawframes tree and file lists, byte for byte from the shards."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from pipeline.export import FLOW_TEMPLATE, RGB_TEMPLATE, class_folder, list_lines, list_name, rawframe_files
from schemas.sample import decode_flow, decode_image, decode_sample, encode_flow, quantize
from tests.conftest import run_inline, shared_path
from tests.helpers import synthetic_sample, write_dataset


def rawframedataset_lines(path: Path) -> list[tuple[str, int, int]]:
    """What MMAction2's RawframeDataset.load_data_list takes from each line: whitespace-split frame_dir,
    total_frames, label."""
    out = []
    for line in path.read_text().splitlines():
        frame_dir, total, *label = line.strip().split()
        assert len(label) == 1, line
        out.append((frame_dir, int(total), int(label[0])))
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    samples = [synthetic_sample(f"v{i}", i % 3) for i in range(5)]
    renamed = dataclasses.replace(samples[4].meta, label_name="riding a 'bike'")
    samples[4] = dataclasses.replace(samples[4], meta=renamed)
    write_dataset(root / "data", {"train-000000.tar": samples[:3], "test-000000.tar": samples[3:]})
    result = run_inline("jobs.export", "rawframes", "--data", str(root / "data"), "--out", str(root / "rf"), "--name", "ucf101")
    assert result.returncode == 0, result.stderr
    return root, result


def test_rawframes_equal_the_shards_byte_for_byte(exported):
    root, result = exported
    assert "exported 5 videos" in result.stdout
    shards = sorted(str(p) for p in (root / "data" / "shards").glob("*.tar"))
    for members in wds.WebDataset(shards, shardshuffle=False):
        sample = decode_sample(members)
        folder = root / "rf" / class_folder(sample.meta.label_name) / sample.key
        names = sorted(p.name for p in folder.iterdir())
        assert len(names) == sample.meta.num_frames + 2 * sample.meta.num_flows
        for i, data in enumerate(sample.rgb):
            assert (folder / f"img_{i + 1:05d}.jpg").read_bytes() == data
        for i, (x, y) in enumerate(sample.flow["tvl1"]):
            assert (folder / f"flow_x_{i + 1:05d}.jpg").read_bytes() == x and (folder / f"flow_y_{i + 1:05d}.jpg").read_bytes() == y


def test_the_lists_parse_as_mmaction2_reads_them_and_name_every_file(exported):
    root, _ = exported
    lists = sorted(p.name for p in (root / "rf").glob("*.txt"))
    rgb_lists = ["ucf101_train_split_1_rawframes.txt", "ucf101_val_split_1_rawframes.txt"]
    flow_lists = ["ucf101_train_split_1_rawframes_flow.txt", "ucf101_val_split_1_rawframes_flow.txt"]
    assert lists == sorted(rgb_lists + flow_lists)
    lines = {name: rawframedataset_lines(root / "rf" / name) for name in lists}
    assert [label for _, _, label in lines["ucf101_train_split_1_rawframes.txt"]] == [0, 1, 2]  # 0-based, as written
    assert [d for d, _, _ in lines["ucf101_val_split_1_rawframes.txt"]] == ["c0/v3", "riding_a_bike/v4"]
    for name in lists:
        flow = name in flow_lists
        for frame_dir, total, _ in lines[name]:
            folder = root / "rf" / frame_dir  # data_prefix joined with frame_dir
            # RawframeDataset's defaults: start_index 1, 'img_{:05}.jpg'; flow configs: 'flow_{}_{:05d}.jpg'. Every
            # index 1..total that SampleFrames may ask for exists, and none past it.
            template = "flow_x_{:05d}.jpg" if flow else "img_{:05}.jpg"
            assert all((folder / template.format(i)).is_file() for i in range(1, total + 1))
            assert not (folder / template.format(total + 1)).exists() and not (folder / template.format(0)).exists()
            if flow:
                assert all((folder / f"flow_y_{i:05d}.jpg").is_file() for i in range(1, total + 1))


def test_file_names_follow_the_real_mmaction2_sample():
    sample = shared_path("rawframes_mmaction2")  # skips where ../shared/data is absent
    frames = sorted(p.name for p in sample.glob("img_*.jpg"))
    assert frames == [RGB_TEMPLATE.format(i) for i in range(1, len(frames) + 1)]
    flows = sorted(p.name for p in sample.glob("x_*.jpg"))  # this fixture's flow prefix is x_, its numbering ours
    assert [f.removeprefix("x_") for f in flows] == [FLOW_TEMPLATE.format("x", i).removeprefix("flow_x_") for i in range(1, len(flows) + 1)]


def test_lossless_flow_is_written_as_8_bit_jpeg_with_the_dataset_bound():
    sample = synthetic_sample("v0", 2, frames=3)
    field = np.broadcast_to(np.float32([2.5, -7.0]), (40, 56, 2)).copy()
    meta = dataclasses.replace(sample.meta, flow_encoding="png16", flow_bound=10.0)
    lossless = dataclasses.replace(sample, meta=meta, flow={"tvl1": [encode_flow(field, "png16", 10.0)] * 2})
    files = rawframe_files(lossless, "tvl1")
    assert sorted(files) == [
        "flow_x_00001.jpg",
        "flow_x_00002.jpg",
        "flow_y_00001.jpg",
        "flow_y_00002.jpg",
        *[f"img_{i:05d}.jpg" for i in (1, 2, 3)],
    ]
    x, y = quantize(decode_flow(lossless.flow["tvl1"][0], "png16", 10.0), 10.0)
    assert np.abs(decode_image(files["flow_x_00001.jpg"], color=False).astype(int) - x).max() <= 1
    assert np.abs(decode_image(files["flow_y_00002.jpg"], color=False).astype(int) - y).max() <= 1


def test_names_of_folders_and_lists():
    assert class_folder("riding a 'bike'") == "riding_a_bike" and class_folder("") == "unlabelled"
    assert list_name("hmdb51", "test", 2, ["test", "train"]) == "hmdb51_val_split_2_rawframes.txt"
    assert list_name("hmdb51", "test", 2, ["test", "train"], flow=True) == "hmdb51_val_split_2_rawframes_flow.txt"
    # a dataset with both val and test splits (Kinetics) keeps them apart
    assert list_name("kinetics400", "val", 1, ["test", "train", "val"]) == "kinetics400_val_split_1_rawframes.txt"
    assert list_name("kinetics400", "test", 1, ["test", "train", "val"]) == "kinetics400_test_split_1_rawframes.txt"


def test_a_video_without_flow_has_no_flow_line():
    one = synthetic_sample("v0", 1, frames=1)
    assert list_lines(one, "tvl1") == ("c1/v0 1 1\n", None)
    assert list_lines(synthetic_sample("v1", 2, frames=4), "tvl1") == ("c2/v1 4 2\n", "c2/v1 3 2\n")
    assert list_lines(synthetic_sample("v1", 2, frames=4), None) == ("c2/v1 4 2\n", None)


def test_a_flow_the_dataset_lacks_is_one_sentence(exported, tmp_path):
    root, _ = exported
    result = run_inline("jobs.export", "rawframes", "--data", str(root / "data"), "--out", str(tmp_path / "o"), "--flow", "warp_tvl1")
    assert result.returncode == 2 and "--flow warp_tvl1:" in result.stderr and "choose one of tvl1" in result.stderr, result.stderr
    assert not (tmp_path / "o").exists()
