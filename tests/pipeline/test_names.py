"""Names are data, never paths: hostile class names, video names and paths in annotation files end in one `error:`
line at `jobs.manifest` (exit 2, nothing written), other encodings are named with the fix, and a dataset whose
names were changed after the manifest was written exports nothing outside its folder."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.datasets import AnnotationError, load_dataset
from pipeline.export import class_folder
from schemas.manifest import CLASSES_METADATA_KEY, MANIFEST_SCHEMA
from tests.conftest import run_inline
from tests.helpers import synthetic_sample, touch, write_dataset


def tree(root: Path) -> set[str]:
    """Every file and folder below `root`, relative."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def one_error_line(result, *fragments: str) -> str:
    """The single stderr line of a refused command, checked for exit 2 and each fragment."""
    lines = result.stderr.splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (result.returncode, result.stderr)
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def ucf101_files(root: Path, class_ind: str = "1 Walk\n", train: str = "Walk/v_Walk_g01_c01.avi 1\n", test: str = "") -> Path:
    ann = root / "ann"
    ann.mkdir(parents=True)
    (ann / "classInd.txt").write_text(class_ind)
    (ann / "trainlist01.txt").write_text(train)
    (ann / "testlist01.txt").write_text(test)
    return ann


# Each case writes its annotation files under tmp/work and returns (dataset, --annotations, what the line names).
def csv_class(tmp: Path):
    (tmp / "list.csv").write_text("path,label\nok.mp4,walk\na.mp4,../../../esc/x\n")
    return "csv", tmp / "list.csv", ["list.csv:3", "class name '../../../esc/x'", "'/'"]


def csv_nul(tmp: Path):
    (tmp / "list.csv").write_bytes(b"a.mp4,ok\x00bad\n")
    return "csv", tmp / "list.csv", ["list.csv:1", "U+0000"]


def kinetics_label(tmp: Path):
    (tmp / "k.csv").write_text('label,youtube_id,time_start,time_end,split\nabseiling,abc,0,10,train\n"../../../x",def,0,10,train\n')
    return "kinetics", tmp / "k.csv", ["k.csv:3", "label '../../../x'", "'/'"]


def kinetics_youtube_id(tmp: Path):
    (tmp / "k.csv").write_text("label,youtube_id,time_start,time_end,split\nabseiling,../../etc,0,10,train\n")
    return "kinetics", tmp / "k.csv", ["k.csv:2", "youtube_id '../../etc'"]


def ucf101_class(tmp: Path):
    return "ucf101", ucf101_files(tmp, class_ind="1 Walk\n2 ..\n"), ["classInd.txt:2", "class name '..'", "a folder's alias"]


def ucf101_path(tmp: Path):
    ann = ucf101_files(tmp, train="Walk/v_Walk_g01_c01.avi 1\n../../../esc/Walk/v.avi 1\n")
    return "ucf101", ann, ["trainlist01.txt:2", "climbs out of --videos"]


def hmdb51_class(tmp: Path):
    ann = tmp / "ann"
    ann.mkdir()
    (ann / "walk_test_split1.txt").write_text("walk_a.avi 1 \n")
    (ann / "..\\esc_test_split1.txt").write_text("x.avi 1 \n")
    return "hmdb51", ann, ["..\\esc_test_split1.txt", "class name '..\\\\esc'", "'\\\\'", "rename the file"]


def hmdb51_newline(tmp: Path):
    ann = tmp / "ann"
    ann.mkdir()
    (ann / "wa\nlk_test_split1.txt").write_text("walk_a.avi 1 \n")
    return "hmdb51", ann, ["wa\\nlk_test_split1.txt: class name 'wa\\nlk' holds the control character U+000A"]


def hmdb51_video(tmp: Path):
    ann = tmp / "ann"
    ann.mkdir()
    (ann / "walk_test_split1.txt").write_text("walk_a.avi 1 \n../../../esc/x.avi 1 \n")
    return "hmdb51", ann, ["walk_test_split1.txt:2", "video file name '../../../esc/x.avi'"]


def folder_class(tmp: Path):
    touch(tmp / "videos" / "walk" / "a.mp4")
    touch(tmp / "videos" / "..\\..\\esc" / "b.mp4")
    return "folder", None, ["class folder '..\\\\..\\\\esc'", "rename the folder"]


def folder_control(tmp: Path):
    touch(tmp / "videos" / "ru\x1bn" / "b.mp4")
    return "folder", None, ["class folder 'ru\\x1bn'", "U+001B"]


def csv_absolute(tmp: Path):
    (tmp / "list.csv").write_text("/etc/passwd,walk\n")
    return "csv", tmp / "list.csv", ["list.csv:1", "'/etc/passwd' is not under --videos"]


def csv_climbs(tmp: Path):
    (tmp / "list.csv").write_text("path,label\nok.mp4,walk\nsub/../../../../esc/x.mp4,walk\n")
    return "csv", tmp / "list.csv", ["list.csv:3", "climbs out of --videos"]


def csv_percent_encoded(tmp: Path):
    (tmp / "list.csv").write_text("%2e%2e/%2e%2e/%2e%2e/etc/passwd,a\n")  # file:// and hdfs:// URIs decode %2e to '.'
    return "csv", tmp / "list.csv", ["list.csv:1", "climbs out of --videos"]


def csv_other_bucket(tmp: Path):
    (tmp / "list.csv").write_text("s3://elsewhere/x.mp4,walk\n")
    return "csv", tmp / "list.csv", ["list.csv:1", "'s3://elsewhere/x.mp4' is not under --videos"]


def csv_latin1(tmp: Path):
    data = "path,label\nok.mp4,walk\ncaf\xe9.mp4,walk\n".encode("latin-1")
    (tmp / "list.csv").write_bytes(data)
    return "csv", tmp / "list.csv", ["list.csv:3", f"byte 0xe9 at offset {data.index(0xE9)} is not UTF-8", "re-save the file as UTF-8"]


def kinetics_utf16(tmp: Path):
    (tmp / "k.csv").write_text("label,youtube_id,time_start,time_end,split\n", encoding="utf-16")
    return "kinetics", tmp / "k.csv", ["k.csv:1", "UTF-16 byte-order mark", "re-save the file as UTF-8"]


CASES = [
    csv_class,
    csv_nul,
    kinetics_label,
    kinetics_youtube_id,
    ucf101_class,
    ucf101_path,
    hmdb51_class,
    hmdb51_newline,
    hmdb51_video,
    folder_class,
    folder_control,
    csv_absolute,
    csv_climbs,
    csv_percent_encoded,
    csv_other_bucket,
    csv_latin1,
    kinetics_utf16,
]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.__name__)
def test_a_hostile_annotation_is_one_error_line_naming_file_and_line(tmp_path, case):
    work = tmp_path / "work"
    work.mkdir()
    dataset, annotations, fragments = case(work)
    before = tree(tmp_path)
    args = [dataset, "--videos", str(work / "videos"), "--out", str(work / "out" / "m.parquet"), "--allow-missing"]
    if annotations is not None:
        args += ["--annotations", str(annotations)]
    (work / "videos").mkdir(exist_ok=True)
    result = run_inline("jobs.manifest", *args)
    one_error_line(result, *fragments)
    assert tree(tmp_path) == before | {"work/videos"}  # nothing written


def test_a_uri_with_dots_is_not_resolved_into_videos(tmp_path):
    """`file://T/x/../videos/a.mp4` is not taken as inside `--videos file://T/videos`: on an object store a '..'
    would cross from one bucket (or prefix) into another, so a URI is compared as written."""
    touch(tmp_path / "videos" / "a.mp4")
    (tmp_path / "list.csv").write_text(f"file://{tmp_path}/x/../videos/a.mp4,a\nfile://{tmp_path}/videos/a.mp4,a\n")
    with pytest.raises(AnnotationError, match=r"list\.csv:1: .* is not under --videos"):
        load_dataset("csv", tmp_path / "list.csv", f"file://{tmp_path}/videos")
    (tmp_path / "list.csv").write_text(f"file://{tmp_path}/videos/a.mp4,a\n")
    (record,) = load_dataset("csv", tmp_path / "list.csv", f"file://{tmp_path}/videos").records
    assert record.exists and record.path == f"file://{tmp_path}/videos/a.mp4"


def test_utf8_with_a_byte_order_mark_and_crlf_is_read(tmp_path):
    touch(tmp_path / "v" / "café.mp4")
    (tmp_path / "list.csv").write_bytes("\ufeffpath,label\r\ncafé.mp4,crème brûlée\r\n".encode())
    m = load_dataset("csv", tmp_path / "list.csv", tmp_path / "v")
    assert m.classes == ["crème brûlée"] and m.records[0].exists and m.records[0].video_id == "café"


def test_absolute_paths_inside_videos_are_taken_and_slash_takes_any(tmp_path):
    video = touch(tmp_path / "disk" / "a" / "clip.mp4")
    (tmp_path / "list.csv").write_text(f"{video},walk\n")
    assert load_dataset("csv", tmp_path / "list.csv", tmp_path / "disk").records[0].path == str(video)
    assert load_dataset("csv", tmp_path / "list.csv", "/").records[0].exists  # --videos /: any absolute path


@pytest.mark.parametrize(
    "name, folder",
    [
        ("riding a 'bike'", "riding_a_bike"),
        ("a\u00a0b", "a_b"),
        ("", "unlabelled"),
        (".'.", "___"),
        ("'.'", "___"),
        ('"', "_"),
        ("''", "__"),
    ],
)
def test_class_folders_are_one_word_and_never_an_alias(name, folder):
    assert class_folder(name) == folder


def test_an_export_of_altered_names_writes_nothing_outside_its_folder(tmp_path):
    """The shards say a class is '../../esc' (changed after preprocessing, which refuses such names): the export
    refuses it in one line, and nothing appears beside or above --out."""
    good = synthetic_sample("v0", 0)
    bad = synthetic_sample("v1", 1)
    bad = dataclasses.replace(bad, meta=dataclasses.replace(bad.meta, label_name="../../esc"))
    data, out = tmp_path / "data", tmp_path / "a" / "b" / "exp"
    write_dataset(data, {"train-000000.tar": [good, bad]})
    before = tree(tmp_path)
    result = run_inline("jobs.export", "rawframes", "--data", str(data), "--out", str(out))
    one_error_line(result, "sample 'v1'", "class name '../../esc'", "changed after preprocessing")
    assert {p for p in tree(tmp_path) - before if not p.startswith("a/b/exp")} <= {"a", "a/b"}  # only --out and its parents


def _manifest_with(path: Path, **changes) -> None:
    row = {"video_id": "v", "path": "/v.mp4", "label": 0, "label_name": "walk", "split": "train", "dataset": "csv"}
    row |= {"start_sec": None, "end_sec": None, "exists": True}
    classes = changes.pop("classes", ["walk"])
    table = pa.Table.from_pylist([row | changes], schema=MANIFEST_SCHEMA)
    pq.write_table(table.replace_schema_metadata({CLASSES_METADATA_KEY: str(classes).replace("'", '"').encode()}), path)


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"label_name": "../x", "classes": ["../x"]}, "class 0 ('../x') holds '/'"),
        ({"label_name": "run"}, "label name 'run' of 'v' is not class 0's name 'walk'"),
        ({"video_id": "a\x00b"}, "video id 'a\\x00b' holds the control character U+0000"),
        ({"classes": ["walk", "walk"]}, "class name 'walk' is listed twice"),
    ],
)
def test_a_manifest_altered_after_it_was_written_is_refused_before_anything_runs(tmp_path, changes, fragment):
    _manifest_with(tmp_path / "m.parquet", **changes)
    before = tree(tmp_path)
    result = run_inline("jobs.preprocess", "--manifest", str(tmp_path / "m.parquet"), "--out", str(tmp_path / "o"))
    one_error_line(result, "m.parquet", fragment, "rebuild it with `python -m jobs.manifest`")
    assert tree(tmp_path) == before
    assert os.listdir(tmp_path) == ["m.parquet"]
