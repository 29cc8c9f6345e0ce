"""Dataset adapters on small fixtures written here, and on the official annotation files in ../shared/data."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from pipeline.datasets import AnnotationError, load_dataset
from schemas.manifest import manifest_table, read_manifest, write_manifest
from tests.conftest import shared_path
from tests.helpers import touch

# --- UCF101 ----------------------------------------------------------------------------------------------


def test_ucf101_labels_splits_and_missing(ucf):
    ann, videos = ucf
    m = load_dataset("ucf101", ann, videos, split=1)
    assert m.classes == ["ApplyEyeMakeup", "HandstandPushups", "YoYo"]
    by_id = {r.video_id: r for r in m.records}
    assert by_id["v_HandStandPushups_g08_c01"].label == 1  # 1-based "2" -> 0-based 1
    assert by_id["v_YoYo_g01_c01"].label == 2  # test list: class from the folder
    assert by_id["v_YoYo_g01_c01"].split == "test"
    assert not by_id["v_YoYo_g01_c01"].exists  # the one file not created
    assert [r.video_id for r in m.missing] == ["v_YoYo_g01_c01"]
    assert Counter(r.split for r in m.records) == {"train": 3, "test": 2}
    assert all(Path(r.path).is_absolute() for r in m.records)


def test_ucf101_finds_videos_in_a_flat_folder(ucf, tmp_path):
    ann, _ = ucf
    flat = tmp_path / "flat"
    touch(flat / "v_YoYo_g01_c01.avi")
    m = load_dataset("ucf101", ann, flat, split=1)
    assert {r.video_id for r in m.records if r.exists} == {"v_YoYo_g01_c01"}


@pytest.mark.parametrize(
    "file, content, fragment",
    [
        ("trainlist01.txt", b"YoYo/v_YoYo_g09_c01.avi 3\r\nYoYo/v_YoYo_g09_c02.avi\r\n", "trainlist01.txt:2"),
        ("trainlist01.txt", b"YoYo/v_YoYo_g09_c01.avi 1\r\n", "label 1 means ApplyEyeMakeup"),
        ("testlist01.txt", b"Nope/v_Nope_g01_c01.avi\r\n", "testlist01.txt:1"),
        ("classInd.txt", b"1 ApplyEyeMakeup\r\nHandstandPushups\r\n", "classInd.txt:2"),
    ],
)
def test_ucf101_malformed_lines_name_file_and_line(ucf, file, content, fragment):
    ann, videos = ucf
    (ann / file).write_bytes(content)
    with pytest.raises(AnnotationError, match=fragment.replace(".", r"\.")):
        load_dataset("ucf101", ann, videos, split=1)


def test_ucf101_missing_split_file(ucf):
    ann, videos = ucf
    with pytest.raises(AnnotationError, match="trainlist02.txt does not exist"):
        load_dataset("ucf101", ann, videos, split=2)


# --- HMDB51 ----------------------------------------------------------------------------------------------


def test_hmdb51_tags_odd_names_and_sorted_classes(tmp_path):
    ann, videos = tmp_path / "splits", tmp_path / "hmdb51"
    ann.mkdir()
    odd = "Crazy_[Party]_Hug!_&_Run_hug_f_cm_np2_ri_med_0"
    (ann / "wave_test_split1.txt").write_text("wave_a_0.avi 1 \nwave_b_0.avi 2 \nwave_c_0.avi 0 \n")
    (ann / "hug_test_split1.txt").write_text(f"{odd}.avi 2 \n")
    (ann / "hug_test_split2.txt").write_text(f"{odd}.avi 1 \n")
    (ann / "class_list.txt").write_text("hug\nwave\n")  # not a split file: ignored
    for rel in ["wave/wave_a_0.avi", "wave/wave_b_0.avi", f"hug/{odd}.avi"]:
        touch(videos / rel)
    m = load_dataset("hmdb51", ann, videos, split=1)
    assert m.classes == ["hug", "wave"]
    by_id = {r.video_id: r for r in m.records}
    assert set(by_id) == {"wave_a_0", "wave_b_0", odd}  # tag 0 excluded
    assert (by_id["wave_a_0"].split, by_id["wave_b_0"].split, by_id[odd].split) == ("train", "test", "test")
    assert by_id[odd].label == 0 and by_id["wave_a_0"].label == 1
    assert all(r.exists for r in m.records)
    assert load_dataset("hmdb51", ann, videos, split=2).records[0].split == "train"


def test_hmdb51_bad_tag(tmp_path):
    (tmp_path / "run_test_split1.txt").write_text("run_a.avi 1 \nrun_b.avi 3 \n")
    with pytest.raises(AnnotationError, match=r"run_test_split1\.txt:2"):
        load_dataset("hmdb51", tmp_path, tmp_path, split=1)


def test_hmdb51_no_split_files(tmp_path):
    with pytest.raises(AnnotationError, match="no '\\*_test_split3.txt' files"):
        load_dataset("hmdb51", tmp_path, tmp_path, split=3)


# --- Kinetics --------------------------------------------------------------------------------------------

KINETICS_CSV = (
    "label,youtube_id,time_start,time_end,split,is_cc\n"
    '"air drumming",--nQbRBEz2s,104,114,val,0\n'
    "abseiling,0wR5jVB-WPk,417,427,val,0\n"
    "abseiling,_aQSjArgAqA,7,17,val,0\n"
    '"air drumming",Zz9,1,11,val,0\n'
)


def test_kinetics_clip_layouts_full_video_and_missing(tmp_path):
    csv_path, videos = tmp_path / "val.csv", tmp_path / "k400"
    csv_path.write_text(KINETICS_CSV)
    touch(videos / "val" / "air drumming" / "--nQbRBEz2s_000104_000114.mp4")  # split/label layout
    touch(videos / "0wR5jVB-WPk_000417_000427.webm")  # flat, webm
    touch(videos / "full" / "_aQSjArgAqA.mkv")  # only the full video
    m = load_dataset("kinetics", csv_path, videos)
    assert m.classes == ["abseiling", "air drumming"]
    by_id = {r.video_id: r for r in m.records}
    assert by_id["--nQbRBEz2s_000104_000114"].label == 1
    assert by_id["--nQbRBEz2s_000104_000114"].path.endswith("val/air drumming/--nQbRBEz2s_000104_000114.mp4")
    assert by_id["0wR5jVB-WPk_000417_000427"].path.endswith(".webm")
    full = by_id["_aQSjArgAqA_000007_000017"]
    assert full.path.endswith("_aQSjArgAqA.mkv") and (full.start_sec, full.end_sec) == (7.0, 17.0)
    assert by_id["--nQbRBEz2s_000104_000114"].start_sec is None
    assert [r.video_id for r in m.missing] == ["Zz9_000001_000011"]
    assert {r.split for r in m.records} == {"val"}


def test_kinetics_label_map_order_and_unknown_label(tmp_path):
    csv_path = tmp_path / "val.csv"
    csv_path.write_text(KINETICS_CSV)
    label_map = tmp_path / "map.txt"
    label_map.write_text("air drumming\nabseiling\nzumba\n")
    m = load_dataset("kinetics", csv_path, tmp_path, label_map=label_map)
    assert m.classes == ["air drumming", "abseiling", "zumba"]
    assert {r.label_name: r.label for r in m.records} == {"air drumming": 0, "abseiling": 1}
    label_map.write_text("abseiling\n")
    with pytest.raises(AnnotationError, match=r"val\.csv:2: label 'air drumming' is not in the label map"):
        load_dataset("kinetics", csv_path, tmp_path, label_map=label_map)


def test_kinetics_test_csv_without_labels(tmp_path):
    csv_path = tmp_path / "test.csv"
    csv_path.write_text("youtube_id,time_start,time_end,split\nabc,0,10,test\n")
    (m,) = [load_dataset("kinetics", csv_path, tmp_path)]
    assert m.classes == [] and m.records[0].label == -1 and m.records[0].split == "test"


@pytest.mark.parametrize(
    "row, fragment",
    [
        ("abseiling,x,ten,20,val,0", "val.csv:2: time_start 'ten'"),
        ("abseiling,x,1,2,val", "val.csv:2: expected 6"),
        ("abseiling,x,1,2,dev,0", "split 'dev'"),
    ],
)
def test_kinetics_malformed_rows(tmp_path, row, fragment):
    csv_path = tmp_path / "val.csv"
    csv_path.write_text("label,youtube_id,time_start,time_end,split,is_cc\n" + row + "\n")
    with pytest.raises(AnnotationError, match=fragment.replace(".", r"\.")):
        load_dataset("kinetics", csv_path, tmp_path)


# --- folder and csv --------------------------------------------------------------------------------------


def test_folder_with_and_without_split_folders(tmp_path):
    touch(tmp_path / "plain" / "walk" / "a.mp4")
    touch(tmp_path / "plain" / "run" / "a.mp4")  # same stem in two classes: ids fall back to relative paths
    touch(tmp_path / "plain" / "run" / "notes.txt")
    m = load_dataset("folder", None, tmp_path / "plain")
    assert m.classes == ["run", "walk"]
    assert sorted(r.video_id for r in m.records) == ["run_a", "walk_a"]
    assert {r.split for r in m.records} == {"train"}

    touch(tmp_path / "split" / "train" / "walk" / "w1.avi")
    touch(tmp_path / "split" / "val" / "run" / "r1.mkv")
    m = load_dataset("folder", None, tmp_path / "split")
    assert {(r.video_id, r.split, r.label_name) for r in m.records} == {("w1", "train", "walk"), ("r1", "val", "run")}


def test_csv_list(tmp_path):
    touch(tmp_path / "v" / "clip 1.mp4")
    absolute = tmp_path / "v" / "sub" / "missing.avi"  # absolute, inside --videos
    (tmp_path / "list.csv").write_text(f"path,label,split\nclip 1.mp4,10,train\n{absolute},2,test\nx.mp4,,test\n")
    m = load_dataset("csv", tmp_path / "list.csv", tmp_path / "v")
    assert m.classes == ["2", "10"]  # integer labels sort numerically
    by_id = {r.video_id: r for r in m.records}
    assert by_id["clip_1"].label == 1 and by_id["clip_1"].exists
    assert by_id["missing"].path == str(absolute) and not by_id["missing"].exists
    assert by_id["x"].label == -1
    (tmp_path / "bad.csv").write_text("a.mp4,1,train,extra\n")
    with pytest.raises(AnnotationError, match=r"bad\.csv:1"):
        load_dataset("csv", tmp_path / "bad.csv", tmp_path)


# --- the manifest file -----------------------------------------------------------------------------------


def test_manifest_round_trip_keeps_classes_and_nulls(ucf, tmp_path):
    ann, videos = ucf
    m = load_dataset("ucf101", ann, videos, split=1)
    path = tmp_path / "out" / "m.parquet"
    write_manifest(manifest_table(m.records, m.classes, m.dataset), path)
    records, classes = read_manifest(path)
    assert classes == m.classes and records == m.records
    assert records[0].start_sec is None


def test_manifest_rejects_duplicate_ids(ucf):
    ann, videos = ucf
    m = load_dataset("ucf101", ann, videos, split=1)
    with pytest.raises(ValueError, match="is used by both"):
        manifest_table(m.records + m.records[:1], m.classes, m.dataset)


def test_read_manifest_errors_say_how_to_fix(tmp_path):
    with pytest.raises(ValueError, match="build one with"):
        read_manifest(tmp_path / "none.parquet")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match="rebuild it with"):
        read_manifest(tmp_path / "junk.parquet")


# --- the official annotation files -----------------------------------------------------------------------


def test_official_ucf101_split1_counts(tmp_path):
    ann = shared_path("annotations", "ucf101_splits")
    m = load_dataset("ucf101", ann, tmp_path)
    assert Counter(r.split for r in m.records) == {"train": 9537, "test": 3783}
    assert len(m.classes) == 101
    assert len({r.video_id for r in m.records}) == 13320
    hs = [r for r in m.records if r.video_id.startswith("v_HandStandPushups")]
    assert hs and {r.label_name for r in hs} == {"HandstandPushups"}
    manifest_table(m.records, m.classes, m.dataset)  # ids unique and safe


def test_official_ucf101_all_splits_cover_every_video(tmp_path):
    ann = shared_path("annotations", "ucf101_splits")
    ids = [{r.video_id for r in load_dataset("ucf101", ann, tmp_path, split=s).records} for s in (1, 2, 3)]
    assert ids[0] == ids[1] == ids[2] and len(ids[0]) == 13320


def test_official_hmdb51_split1_counts(tmp_path):
    ann = shared_path("annotations", "hmdb51_splits")
    m = load_dataset("hmdb51", ann, tmp_path)
    assert Counter(r.split for r in m.records) == {"train": 3570, "test": 1530}
    assert len(m.classes) == 51 and m.classes == sorted(m.classes)
    manifest_table(m.records, m.classes, m.dataset)


def test_official_kinetics400_val(tmp_path):
    csv_path = shared_path("annotations", "kinetics", "kinetics-400_val.csv")
    label_map = shared_path("annotations", "kinetics", "kinetics400_label_map_i3d.txt")
    m = load_dataset("kinetics", csv_path, tmp_path, label_map=label_map)
    assert len(m.records) == 19906 and len(m.classes) == 400
    assert {r.split for r in m.records} == {"val"}
    assert len({r.label for r in m.records}) == 400
    assert any(r.video_id.startswith("-") for r in m.records)
    unmapped = load_dataset("kinetics", csv_path, tmp_path)
    assert unmapped.classes == sorted(m.classes)
    manifest_table(m.records, m.classes, m.dataset)
