"""Fuzzing (hypothesis) of every annotation parser and of the manifest reader: arbitrary bytes, hostile names,
mutated and truncated files. Whatever the input, `jobs.manifest` either writes a manifest whose every class name
and video id passes the name check and whose every video lies under --videos, or prints one `error:` line (exit 2)
and writes nothing; nothing appears outside its outputs; the manifest reader returns checked rows or raises a user
error (one line through `jobs.common.fail`), never another exception (a traceback).

`make test` runs the derandomized default profile (a few seconds per parser); `make fuzz` runs the `long` profile
(thousands of new random examples per parser). Failing inputs fuzzing found are kept in REGRESSIONS.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobs.common import USER_ERRORS
from schemas.manifest import CLASSES_METADATA_KEY, MANIFEST_SCHEMA, SPLITS, name_problem, read_manifest
from tests.conftest import run_inline

# Pieces that break naive parsers and paths, mixed with arbitrary characters.
PIECES = [
    "..",
    ".",
    "/",
    "\\",
    "\x00",
    "\x1b",
    "\x85",
    "\u2028",
    "\r",
    "\n",
    "\r\n",
    ",",
    '"',
    " ",
    "\t",
    "\ufeff",
    "é",
    "1",
    "train",
    "../",
]
TEXT = st.lists(st.one_of(st.sampled_from(PIECES), st.characters(codec="utf-8")), max_size=8).map("".join)
ENDINGS = st.sampled_from(["\n", "\r\n"])


NOISE = st.one_of(
    st.sampled_from([p.encode() for p in PIECES]),
    TEXT.map(str.encode),
    st.binary(min_size=1, max_size=6),
    st.sampled_from([b"\xe9", b"\xff\xfe"]),
)


def mutated(valid: bytes) -> st.SearchStrategy[bytes]:
    """`valid` as is, or with up to 3 edits (cut at a point, text or bytes inserted or written over); one time in
    ten, arbitrary bytes."""

    @st.composite
    def mutate(draw) -> bytes:
        if draw(st.integers(0, 9)) == 0:
            return draw(st.binary(max_size=200))
        data = valid
        for _ in range(draw(st.integers(0, 3))):
            at = draw(st.integers(0, len(data)))
            kind = draw(st.sampled_from(["cut", "insert", "insert", "overwrite", "overwrite"]))
            noise = draw(NOISE)
            if kind == "cut":
                data = data[:at]
            elif kind == "insert":
                data = data[:at] + noise + data[at:]
            else:
                data = data[:at] + noise + data[at + len(noise) :]
        return data

    return mutate()


def lines(rows: st.SearchStrategy[str]) -> st.SearchStrategy[bytes]:
    """A file of up to 5 such rows, each ended by \\n or \\r\\n."""
    return st.lists(st.tuples(rows, ENDINGS), max_size=5).map(lambda rs: "".join(r + e for r, e in rs).encode())


@st.composite
def row(draw, columns: list[list[str]]) -> str:
    """A CSV row with a field per column (one time in ten one more or fewer), each one of its column's valid values
    nine times in ten, else hostile text."""
    n = len(columns) + (0 if draw(st.integers(0, 9)) else draw(st.sampled_from([-1, 1])))
    valid = [*columns, columns[-1]][:n]
    return ",".join(draw(st.sampled_from(v)) if draw(st.integers(0, 9)) else draw(TEXT) for v in valid)


def file_name(text: str) -> str | None:
    """`text` as one name a local folder can hold (no '/', NUL, '.', '..', at most 200 bytes), or None."""
    ok = text not in ("", ".", "..") and "/" not in text and "\x00" not in text and len(text.encode()) <= 200
    return text if ok else None


# --- the check every input must pass -------------------------------------------------------------------------


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def check_manifest_job(work: Path, dataset: str, *flags: str) -> None:
    """Run `jobs.manifest dataset flags` on what is in `work` and check its one of two outcomes (see the module's
    docstring)."""
    videos, out = work / "videos", work / "out" / "m.parquet"
    videos.mkdir(exist_ok=True)
    before = tree(work)
    result = run_inline("jobs.manifest", dataset, *flags, "--videos", str(videos), "--out", str(out), "--allow-missing")
    if result.returncode == 0:
        records, classes = read_manifest(out)
        assert all(name_problem(name) is None for name in classes), classes
        for r in records:
            assert name_problem(r.video_id) is None and (not r.label_name or name_problem(r.label_name) is None), r
            assert r.path.startswith(str(videos) + "/") and "/../" not in r.path, r.path
        assert tree(work) - before == {"out", "out/m.parquet", "out/m.config.json"}
    else:
        err = result.stderr.splitlines()
        assert result.returncode == 2 and len(err) == 1 and err[0].startswith("error: "), result.stderr
        assert tree(work) == before


def run_case(files: dict[str, bytes], dataset: str, *flags: str) -> None:
    """Write `files` (relative name -> bytes) into a new folder and check `jobs.manifest dataset flags` there;
    '{work}' in a flag is that folder."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, data in files.items():
            _write(work / name, data)
        check_manifest_job(work, dataset, *(flag.replace("{work}", tmp) for flag in flags))


# --- one fuzz test per parser ---------------------------------------------------------------------------------

CSV_VALID = b"path,label,split\nclip 1.mp4,walk,train\nsub/b.mp4,run,test\nc.mp4,,val\n"


@given(
    st.one_of(mutated(CSV_VALID), lines(row([["a.mp4", "sub/b c.mp4", "/abs.mp4"], ["walk", "air drumming", ""], ["train", "test", ""]])))
)
def test_csv_list(data):
    run_case({"list.csv": data}, "csv", "--annotations", "{work}/list.csv")


KINETICS_VALID = (
    b'label,youtube_id,time_start,time_end,split,is_cc\n"air drumming",--nQbRBEz2s,104,114,val,0\nabseiling,x_y-z,7,17,train,0\n'
)
KINETICS_ROW = row(
    [["abseiling", '"air drumming"', ""], ["abc", "-x_Y9"], ["0", "1.5", "104"], ["10", "114", "2.5"], ["train", "val"], ["0", "1"]]
)


@given(
    st.one_of(mutated(KINETICS_VALID), lines(KINETICS_ROW).map(lambda b: b"label,youtube_id,time_start,time_end,split,is_cc\n" + b)),
    st.one_of(st.none(), mutated(b"air drumming\nabseiling\n")),
)
def test_kinetics(data, label_map):
    if label_map is None:
        run_case({"k.csv": data}, "kinetics", "--annotations", "{work}/k.csv")
    else:
        run_case({"k.csv": data, "map.txt": label_map}, "kinetics", "--annotations", "{work}/k.csv", "--label-map", "{work}/map.txt")


UCF_CLASSES = b"1 ApplyEyeMakeup\r\n2 YoYo\r\n"
UCF_TRAIN = b"ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\nYoYo/v_YoYo_g09_c01.avi 2\r\n"
UCF_TEST = b"YoYo/v_YoYo_g01_c01.avi\r\n"


@given(mutated(UCF_CLASSES), mutated(UCF_TRAIN), mutated(UCF_TEST))
def test_ucf101(class_ind, train, test):
    files = {"ann/classInd.txt": class_ind, "ann/trainlist01.txt": train, "ann/testlist01.txt": test}
    run_case(files, "ucf101", "--annotations", "{work}/ann")


HMDB_LIST = mutated(b"a.avi 1 \nb.avi 2 \nc.avi 0 \n")


@given(st.dictionaries(TEXT.map(file_name).filter(lambda n: n is not None and len(n.encode()) <= 200), HMDB_LIST, max_size=3))
def test_hmdb51(lists):
    files = {"ann/walk_test_split1.txt": b"walk_a.avi 1 \n"} | {f"ann/{name}_test_split1.txt": data for name, data in lists.items()}
    run_case(files, "hmdb51", "--annotations", "{work}/ann")


NAME = st.one_of(st.sampled_from(["walk", "air drumming", "crème", "a..b"]), TEXT.map(file_name).filter(lambda n: n is not None))


@given(st.lists(st.tuples(NAME, NAME), min_size=1, max_size=4), st.booleans())
def test_folder(entries, with_splits):
    files = {}
    for i, (class_name, video) in enumerate(entries):
        split = f"{SPLITS[i % 3]}/" if with_splits else ""
        files[f"videos/{split}{class_name}/{video[:50]}.mp4"] = b"x"
    run_case(files, "folder")


# --- the manifest reader --------------------------------------------------------------------------------------


def check_reader(path: Path) -> None:
    """read_manifest gives checked rows, or a user error (one line through `fail`), never another exception."""
    try:
        records, classes = read_manifest(path)
    except USER_ERRORS as exc:
        assert str(exc), exc
        return
    assert all(name_problem(c) is None for c in classes)
    assert all(name_problem(r.video_id) is None and r.split in SPLITS and -1 <= r.label < len(classes) for r in records)


def _valid_manifest() -> bytes:
    row = {"video_id": "v_a", "path": "/v/a.mp4", "label": 0, "label_name": "walk", "split": "train", "dataset": "csv"}
    table = pa.Table.from_pylist([row | {"start_sec": None, "end_sec": 2.0, "exists": True}], schema=MANIFEST_SCHEMA)
    sink = pa.BufferOutputStream()
    pq.write_table(table.replace_schema_metadata({CLASSES_METADATA_KEY: b'["walk"]'}), sink)
    return sink.getvalue().to_pybytes()


@given(mutated(_valid_manifest()))
def test_manifest_reader_on_mutated_bytes(data):
    with tempfile.TemporaryDirectory() as tmp:
        check_reader(_write(Path(tmp) / "m.parquet", data))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | TEXT, lambda c: st.lists(c, max_size=3) | st.dictionaries(TEXT, c, max_size=3)
)


@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "video_id": st.one_of(TEXT, st.none()),
                "path": TEXT,
                "label": st.integers(-3, 3),
                "label_name": st.one_of(st.sampled_from(["walk", "run", ""]), TEXT),
                "split": st.one_of(st.sampled_from(SPLITS), TEXT),
                "dataset": TEXT,
                "start_sec": st.one_of(st.none(), st.floats()),
                "end_sec": st.one_of(st.none(), st.floats()),
                "exists": st.booleans(),
            }
        ),
        max_size=4,
    ),
    st.one_of(st.just(["walk", "run"]), st.lists(TEXT, max_size=3), JSON),
    st.sampled_from(["string", "int", "drop"]),
)
def test_manifest_reader_on_hostile_tables(rows, classes, label_type):
    check_hostile_table(rows, classes, label_type)


def check_hostile_table(rows: list[dict], classes, label_type: str) -> None:
    """A Parquet file of these rows and class list (its label column of `label_type`, or without `exists`) through
    check_reader."""
    columns = {name: [r[name] for r in rows] for name in MANIFEST_SCHEMA.names}
    if label_type == "string":  # a column of another type, as a manifest made by another tool may have
        columns["label"] = [str(v) for v in columns["label"]]
    elif label_type == "drop":
        del columns["exists"]
    table = pa.Table.from_pydict(columns).replace_schema_metadata({CLASSES_METADATA_KEY: json.dumps(classes).encode()})
    with tempfile.TemporaryDirectory() as tmp:
        pq.write_table(table, Path(tmp) / "m.parquet")
        check_reader(Path(tmp) / "m.parquet")


# --- regression rows: inputs that once failed --------------------------------------------------------------------

CSV_FLAGS, K_FLAGS, DIR_FLAGS = ["--annotations", "{work}/list.csv"], ["--annotations", "{work}/k.csv"], ["--annotations", "{work}/ann"]
UCF_EMPTY_LISTS = {"ann/trainlist01.txt": b"", "ann/testlist01.txt": b""}
# (dataset, files, flags): each must pass check_manifest_job. "Fuzzed" rows are what this file's tests found on
# 88d264e (before the name check); the others were found reading the parsers, and each failed there too.
REGRESSIONS = [
    # fuzzed: U+0085 in a path printed raw split the error in two lines (fail() now escapes it; the name check refuses it)
    ("csv", {"list.csv": b"0..00..,\n0\xc2\x8500..,\n"}, CSV_FLAGS),
    ("hmdb51", {"ann/walk_test_split1.txt": b"walk_a.avi 1 \n", "ann/\x85_test_split1.txt": b"a"}, DIR_FLAGS),
    ("folder", {"videos/walk/.....mp4": b"x", "videos/walk/\x85.mp4": b"x"}, []),
    # fuzzed: float('inf') time passed to int(): OverflowError, a traceback
    ("kinetics", {"k.csv": b"label,youtube_id,time_start,time_end,split\nabseiling,abc,inf,10,train\n"}, K_FLAGS),
    # float('nan') time: int() raised a ValueError that named neither file nor line
    ("kinetics", {"k.csv": b"label,youtube_id,time_start,time_end,split\nabseiling,abc,0,nan,train\n"}, K_FLAGS),
    # csv.Error escaped as a traceback: a field over the csv module's size limit
    ("csv", {"list.csv": b"a.mp4," + b"x" * 140_000 + b"\n"}, CSV_FLAGS),
    # '²' passes str.isdigit() but int() refuses it: a ValueError with no file or line
    ("csv", {"list.csv": "a.mp4,\u00b2\n".encode()}, CSV_FLAGS),
    ("ucf101", {"ann/classInd.txt": "\u00b2 Walk\n".encode(), **UCF_EMPTY_LISTS}, DIR_FLAGS),
    # found in review: int() refuses over 4300 digits, a ValueError with no file or line
    ("ucf101", {"ann/classInd.txt": b"1" * 5000 + b" Walk\n", **UCF_EMPTY_LISTS}, DIR_FLAGS),
    (
        "ucf101",
        {"ann/classInd.txt": b"1 Walk\n", "ann/trainlist01.txt": b"Walk/v.avi " + b"1" * 5000 + b"\n", "ann/testlist01.txt": b""},
        DIR_FLAGS,
    ),
    ("csv", {"list.csv": b"a.mp4," + b"7" * 5000 + b"\n"}, CSV_FLAGS),
    # U+0085 ended a line for str.splitlines(): a name was cut in two and the line numbers were off
    ("ucf101", {"ann/classInd.txt": "1 Wa\x85lk\n".encode(), **UCF_EMPTY_LISTS}, DIR_FLAGS),
]


@pytest.mark.parametrize("dataset, files, flags", REGRESSIONS, ids=[f"{d}-{i}" for i, (d, _, _) in enumerate(REGRESSIONS)])
def test_regressions(dataset, files, flags):
    run_case(files, dataset, *flags)


ROW = {"video_id": "v", "path": "/v.mp4", "label": 0, "label_name": "walk", "split": "train", "dataset": "csv", "start_sec": None}
# (rows, classes, label column type) for the manifest reader, fuzzed on 88d264e: it returned them as stored (a label
# '0' as text, the class list None), and the first use of them raised a TypeError.
READER_REGRESSIONS = [
    ([ROW | {"end_sec": None, "exists": True}], ["walk"], "string"),  # labels stored as strings: '<=' between int and str
    ([ROW | {"end_sec": None, "exists": True}], None, "int"),  # the class list is JSON null: not iterable
]


@pytest.mark.parametrize("rows, classes, label_type", READER_REGRESSIONS)
def test_reader_regressions(rows, classes, label_type):
    check_hostile_table(rows, classes, label_type)


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
