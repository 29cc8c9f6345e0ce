"""One shard's work without Ray: planning, decoding + flow + tar writing, bad videos, atomicity."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import webdataset as wds

from pipeline.decode import DecodeConfig
from pipeline.plan import plan_shards
from pipeline.report import build_report, format_report
from pipeline.shards import (
    DONE_SUFFIX,
    PROGRESS_DIR,
    ProcessConfig,
    completed_shards,
    process_shard,
    process_video,
)
from pipeline.synthetic import SyntheticConfig, class_direction, generate_dataset
from schemas.dataset import SHARDS_DIR
from schemas.manifest import VideoRecord
from schemas.sample import decode_sample
from storage import Location
from tests.helpers import write_zoo
from trainers.tar_stream import read_members

SMALL = SyntheticConfig(classes=4, videos_per_class=2, width=64, height=48, frames=6, seed=1)
FAST = ProcessConfig(modalities=("rgb", "tvl1"), flow_params=(("compile", False),))


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    entries = generate_dataset(SMALL, root)
    records = [
        VideoRecord(
            video_id=e.relpath.split("/")[1][:-4],
            path=str(root / e.relpath),
            label=e.label,
            label_name=f"Move{e.label}",
            split=e.split,
            dataset="test",
        )
        for e in entries
    ]
    (root / "broken.mp4").write_text("not a video")
    broken = VideoRecord("broken", str(root / "broken.mp4"), 0, "Move0", "train", "test")
    train = [r for r in records if r.split == "train"]  # one split, so one shard holds them all
    return train + [r for r in records if r.split != "train"], broken


def test_plan_is_deterministic_and_per_split(videos):
    records, _ = videos
    plan = plan_shards(records, 3)
    assert plan == plan_shards(list(records), 3)
    assert [s.name for s in plan] == ["train-000000", "train-000001", "test-000000", "test-000001"]
    assert sorted(r.video_id for s in plan for r in s.records) == sorted(r.video_id for r in records)
    assert all(r.split == s.split for s in plan for r in s.records)
    assert len({r.label for r in plan[0].records}) > 1  # classes are mixed, not in annotation order
    with pytest.raises(ValueError, match="at least 1"):
        plan_shards(records, 0)


def test_size_estimate_grows_with_modalities_and_size():
    rgb = ProcessConfig(modalities=("rgb",))
    both = ProcessConfig(modalities=("rgb", "tvl1", "warp_tvl1"))
    big = ProcessConfig(modalities=("rgb",), decode=DecodeConfig(size=(680, 512)))
    assert rgb.estimated_video_mb() < both.estimated_video_mb()
    assert rgb.estimated_video_mb() < big.estimated_video_mb()


def test_process_video_frames_and_flows_align_with_the_motion(videos):
    records, _ = videos
    record = records[1]
    sample = process_video(record, FAST)
    assert sample.meta.num_frames == SMALL.frames and len(sample.flow["tvl1"]) == SMALL.frames - 1
    assert sample.rgb_frame(0).shape == (48, 64, 3)
    # Flow i moves frame i onto frame i+1: its dominant direction is the class direction.
    ux, uy = class_direction(record.label, SMALL.classes)
    flow = sample.flow_frame("tvl1", 2)
    moving = np.linalg.norm(flow, axis=-1) > 1.0
    direction = flow[moving].mean(0)
    assert np.dot(direction / np.linalg.norm(direction), [ux, uy]) > 0.9


def test_process_shard_writes_good_videos_once_and_records_the_bad(videos, tmp_path):
    records, broken = videos
    spec = plan_shards([records[0], broken, records[2]], 10)[0]
    out = Location(str(tmp_path))
    seen = []
    result = process_shard(spec, FAST, out, on_video=seen.append)
    status = {v.video_id: v for v in result.videos}
    assert {k: v.status for k, v in status.items()} == {records[0].video_id: "ok", "broken": "failed", records[2].video_id: "ok"}
    assert status["broken"].reason.startswith("not a readable video file")
    assert seen == result.videos and result.samples == 2  # every video reported once, in order
    read = list(wds.WebDataset(str(tmp_path / SHARDS_DIR / result.tar), shardshuffle=False))
    assert [m["__key__"] for m in read] == [r.video_id for r in spec.records if r.video_id != "broken"]
    label = {r.video_id: r.label for r in records}
    assert all(decode_sample(m).meta.label == label[m["__key__"]] for m in read)
    assert result.bytes == (tmp_path / SHARDS_DIR / result.tar).stat().st_size
    # each sample's byte range: one read of it gives all its members and nothing else; the ranges tile the tar
    tar_bytes = (tmp_path / SHARDS_DIR / result.tar).read_bytes()
    ok = [v for v in result.videos if v.status == "ok"]
    for v in ok:
        names = [name for name, _ in read_members(io.BytesIO(tar_bytes[v.offset : v.offset + v.bytes]))]
        assert names and {n.split(".", 1)[0] for n in names} == {v.video_id}
        members = next(m for m in read if m["__key__"] == v.video_id)
        assert len(names) == len([k for k in members if not k.startswith("__")])
    assert ok[0].offset == 0 and ok[1].offset == ok[0].offset + ok[0].bytes
    assert tar_bytes[ok[1].offset + ok[1].bytes :] == bytes(len(tar_bytes) - ok[1].offset - ok[1].bytes)  # the end blocks
    assert completed_shards(out)[spec.name].samples == 2
    assert not [p for p in (tmp_path / SHARDS_DIR).iterdir() if ".tmp-" in p.name]
    # without a flow service the task computed the flow itself, and says so for the run report
    assert result.flow_pairs == sum(v.frames - 1 for v in result.videos if v.status == "ok")
    assert result.stages["flow"] > 0 and result.stages["decode"] > 0 and result.stages["encode"] > 0


def test_shard_tars_are_reproducible_plain_ustar(videos, tmp_path):
    """Byte-identical for the same input, and one 512-byte header per member: no PAX record (a float mtime
    wrote one per member, 6% of a shard and half of the training loader's time spent parsing them)."""
    records, _ = videos
    spec = plan_shards(records[:2], 10)[0]
    a = process_shard(spec, FAST, Location(str(tmp_path / "a")))
    b = process_shard(spec, FAST, Location(str(tmp_path / "b")))
    assert a.sha256 == b.sha256
    with tarfile.open(tmp_path / "a" / SHARDS_DIR / a.tar) as tar:
        members = tar.getmembers()
    assert len(members) > 10 and all(m.pax_headers == {} and m.mtime == 0 for m in members)
    assert tar.offset == sum(512 + -(-m.size // 512) * 512 for m in members)  # headers and data blocks only


def test_a_shard_of_only_bad_videos_writes_no_tar(videos, tmp_path):
    _, broken = videos
    spec = plan_shards([broken], 1)[0]
    result = process_shard(spec, FAST, Location(str(tmp_path)))
    assert result.tar is None and result.samples == 0
    assert not list((tmp_path / SHARDS_DIR).glob("*.tar"))
    assert (tmp_path / PROGRESS_DIR / f"{spec.name}{DONE_SUFFIX}").is_file()


def test_an_interrupted_shard_leaves_nothing_behind(videos, tmp_path, monkeypatch):
    records, _ = videos
    spec = plan_shards(records[:3], 10)[0]
    calls = []

    def crash_on_second(result):
        calls.append(result)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt, match="simulated kill"):
        process_shard(spec, FAST, Location(str(tmp_path)), on_video=crash_on_second)
    assert not list((tmp_path / SHARDS_DIR).iterdir())  # no tar, no temporary
    assert not completed_shards(Location(str(tmp_path)))


def test_sample_metadata_records_parameters(videos):
    records, _ = videos
    cfg = ProcessConfig(modalities=("tvl1", "warp_tvl1"), flow_params=(("compile", False), ("warps", 3)))
    sample = process_video(records[0], cfg)
    assert sample.rgb == [] and set(sample.flow) == {"tvl1", "warp_tvl1"}
    assert sample.meta.flow_params["tvl1"]["tvl1"]["warps"] == 3
    assert "homography" in sample.meta.flow_params["warp_tvl1"]
    assert len(sample.meta.homographies) == SMALL.frames - 1
    assert json.loads(json.dumps(sample.meta.flow_params)) == sample.meta.flow_params  # survives the JSON member


def test_process_config_rejects_bad_values():
    with pytest.raises(ValueError, match="modalities"):
        ProcessConfig(modalities=("rgb", "farneback"))
    with pytest.raises(ValueError, match="unknown flow parameter"):
        ProcessConfig(flow_params=(("lamda", 0.1),))


def test_files_from_real_use_keep_their_frames_and_the_damage_is_on_record(tmp_path):
    """The zoo through a shard: the trims and the variable frame rate are kept whole, the damaged middle is kept
    without its 8 lost frames and says so (results row, sample json, run report), the file cut at 60% fails; with
    --strict-decode the damaged file fails too, and nothing else changes."""
    zoo = write_zoo(tmp_path / "zoo")
    records = [VideoRecord(name, str(v.path), 0, "c", "train", "test") for name, v in zoo.items()]
    spec = plan_shards(records, len(records))[0]
    for strict in (False, True):
        cfg = ProcessConfig(modalities=("rgb",), decode=DecodeConfig(short_side=32, strict=strict))
        result = process_shard(spec, cfg, Location(str(tmp_path / f"strict_{strict}")))
        rows = {v.video_id: v for v in result.videos}
        for name, video in zoo.items():
            row = rows[name]
            failed = bool(video.reason) or (strict and video.lost > 0)
            assert row.status == ("failed" if failed else "ok"), (name, row.reason)
            if failed:
                assert row.reason.startswith(video.reason or "damaged: 8 of its 300 frames could not be decoded (at 1.44-1.72 s)")
                continue
            assert (row.frames, row.frames_lost, row.lost_at) == (video.frames, video.lost, video.lost_at), name
        report = build_report([result], [], 1.0)
        assert report["damaged"] == ({"videos": 0, "frames_lost": 0} if strict else {"videos": 1, "frames_lost": 8})
        assert report["failures"] == ({"cut off": 1, "damaged": 1} if strict else {"cut off": 1})
        if not strict:
            samples = {m["__key__"]: decode_sample(m) for m in wds.WebDataset(str(tmp_path / "strict_False" / SHARDS_DIR / result.tar))}
            assert (samples["damaged_middle"].meta.frames_lost, samples["damaged_middle"].meta.lost_at) == (8, "1.44-1.72 s")
            assert samples["long_gop_trim"].meta.frames_lost == 0
            assert any("kept without 8 frames" in line for line in format_report(report))
