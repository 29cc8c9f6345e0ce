"""A dataset's generations (issue 28): planning a grown manifest, the kept rows, and which result a video has."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.generations import ROWS_FILE, grow, latest_results, read_generations, rows_table, write_generations
from pipeline.plan import plan_generations, plan_shards
from pipeline.preprocess import RUN_FILE, PreprocessConfig, _generations, run_parameters
from pipeline.shards import PROGRESS_DIR, ShardResult, VideoResult
from schemas.manifest import VideoRecord
from storage import Location


def records(prefix: str, n: int, splits=("train", "train", "test")) -> list[VideoRecord]:
    return [VideoRecord(f"{prefix}{i}", f"/v/{prefix}{i}.mp4", i % 3, "c", splits[i % len(splits)], "ucf101") for i in range(n)]


def test_a_grown_plan_keeps_every_earlier_shard_and_numbers_the_new_ones_after_them():
    first, added = records("a", 13), records("b", 7)
    before = plan_shards(first, 4)
    assert plan_generations([first], 4) == before  # a dataset of one generation: the plan it always had
    grown = plan_generations([first, added], 4)
    assert grown[: len(before)] == before  # no earlier shard moves
    new = grown[len(before) :]
    assert {s.generation for s in new} == {1} and {s.generation for s in before} == {0}
    for split in ("train", "test"):
        last = max(int(s.name.split("-")[1]) for s in before if s.split == split)
        numbers = [int(s.name.split("-")[1]) for s in new if s.split == split]
        assert numbers == list(range(last + 1, last + 1 + len(numbers)))  # after the split's last, no gap
    assert sorted(r.video_id for s in new for r in s.records) == sorted(r.video_id for r in added)
    assert len({s.name for s in grown}) == len(grown)
    assert plan_generations([first, added], 4) == grown  # deterministic: a killed append plans the same shards


def test_kept_rows_read_back_by_generation(tmp_path):
    out = Location(str(tmp_path))
    assert read_generations(out) is None  # nothing kept: nothing built yet
    first, added = records("a", 4), records("b", 2)
    first[1] = VideoRecord("a1", "/v/a1.mp4", 1, "c", "train", "kinetics", 12.5, 22.5)  # a trim window
    write_generations(out, [first, added])
    kept = read_generations(out)
    assert [[r.video_id for r in g] for g in kept] == [["a0", "a1", "a2", "a3"], ["b0", "b1"]]
    assert (kept[0][1].start_sec, kept[0][1].end_sec, kept[0][1].split, kept[0][1].label) == (12.5, 22.5, "train", 1)
    # rows kept before generations were numbered are the first build's
    pq.write_table(rows_table([first]).drop_columns(["generation"]), tmp_path / PROGRESS_DIR / ROWS_FILE)
    assert [len(g) for g in read_generations(out)] == [4]
    assert pq.read_schema(tmp_path / PROGRESS_DIR / ROWS_FILE).field("video_id").type == pa.string()


def test_grow_adds_the_new_rows_and_with_retry_the_failed_ones():
    first = records("a", 4)
    manifest = [*first, *records("b", 2)]
    assert [r.video_id for r in grow([first], manifest, failed={"a2"}, retry_failed=False)] == ["b0", "b1"]
    assert [r.video_id for r in grow([first], manifest, failed={"a2"}, retry_failed=True)] == ["a2", "b0", "b1"]
    assert grow([first], first, failed=set(), retry_failed=True) == []  # nothing failed, nothing new
    # a video retried earlier is compared with its latest row
    moved = VideoRecord("a2", "/mirror/a2.mp4", 2, "c", "test", "ucf101")
    assert grow([first, [moved]], [*first[:2], moved, first[3]], failed=set(), retry_failed=False) == []


def _result(spec, status: dict[str, str]) -> ShardResult:
    videos = [VideoResult(r.video_id, spec.split, spec.name, status.get(r.video_id, "ok"), "", 0.1) for r in spec.records]
    return ShardResult(spec.name, spec.split, f"{spec.name}.tar", len(videos), 1, "", 0.1, videos)


def test_a_retried_video_has_one_result_the_latest():
    first = records("a", 6)
    retry = [first[2]]
    specs = plan_generations([first, retry], 4)
    old = [s for s in specs if s.generation == 0]
    finished = {s.name: _result(s, {"a2": "failed"}) for s in old}
    latest = latest_results(specs, finished)
    assert set(latest) == {f"a{i}" for i in range(6)} - {"a2"}  # the retry's shard is not finished: no result yet
    (again,) = [s for s in specs if s.generation == 1]
    finished[again.name] = _result(again, {})
    latest = latest_results(specs, finished)
    assert len(latest) == 6 and latest["a2"].status == "ok" and latest["a2"].shard == again.name


def test_a_dataset_built_before_its_rows_were_kept_is_known_by_its_manifest_fingerprint(tmp_path):
    first = records("a", 4)
    cfg = PreprocessConfig(manifest="m.parquet", out=str(tmp_path))
    params = run_parameters(cfg, first, 2)
    (tmp_path / PROGRESS_DIR).mkdir()
    (tmp_path / PROGRESS_DIR / RUN_FILE).write_text(json.dumps(params))  # no manifest_rows.parquet beside it
    out = Location(str(tmp_path))
    generations, plan, grown, earlier = _generations(cfg, out, params, first, {}, 2)
    assert generations == [first] and grown == [] and earlier == {}  # the very manifest: its rows are kept from now on
    assert plan == plan_shards(first, 2)
    more = [*first, *records("b", 1)]
    with pytest.raises(ValueError, match="before flowshard kept a dataset's rows.*run once with the manifest it was built from"):
        _generations(cfg, out, run_parameters(cfg, more, 2), more, {}, 2)
