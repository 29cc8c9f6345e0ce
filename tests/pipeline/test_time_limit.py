"""The per-video time limit: a video that hangs fails as timed out, and its shard goes on."""

from __future__ import annotations

import threading
import time

import pytest
import webdataset as wds

from pipeline.plan import ShardSpec
from pipeline.shards import ProcessConfig, process_shard
from pipeline.synthetic import SyntheticConfig, generate_dataset
from pipeline.time_limit import TimeLimitExceeded, call_with_time_limit
from schemas.dataset import SHARDS_DIR
from schemas.manifest import VideoRecord
from storage import Location
from tests.conftest import wait_for


def test_results_and_errors_pass_through():
    assert call_with_time_limit(lambda stop: 42, 5) == 42
    assert call_with_time_limit(lambda stop: "inline", None) == "inline"
    with pytest.raises(KeyError, match="missing"):
        call_with_time_limit(lambda stop: {}["missing"], 5)


def test_a_call_that_never_returns_is_abandoned_and_told_to_stop():
    seen = {}

    def hang(stop: threading.Event):
        seen["stop"] = stop
        threading.Event().wait()  # ignores `stop`: a read that blocks forever

    start = time.monotonic()
    with pytest.raises(TimeLimitExceeded, match="timed out after 0.5 s"):
        call_with_time_limit(hang, 0.5)
    assert time.monotonic() - start < 3 and seen["stop"].is_set()


@pytest.mark.slow  # waits out a 5 s limit
def test_a_slow_video_fails_as_timed_out_and_the_shard_goes_on(tmp_path):
    short = SyntheticConfig(classes=2, videos_per_class=2, width=64, height=48, frames=6, seed=4)
    long = SyntheticConfig(classes=2, videos_per_class=2, width=160, height=120, frames=300, seed=5)
    records = []
    for name, cfg in (("short", short), ("long", long)):
        entry = generate_dataset(cfg, tmp_path / name)[0]
        records.append(VideoRecord(name, str(tmp_path / name / entry.relpath), 0, "Move000", "train", "test"))
    # chunks of 2 pairs: the abandoned video finishes its chunk in the background while the short one runs, and
    # the short one must still finish within the limit on a busy 2-core machine (3 s with chunks of 4 was too tight)
    cfg = ProcessConfig(modalities=("rgb", "tvl1"), flow_params=(("compile", False),), flow_batch=2, video_timeout=5)
    before = set(threading.enumerate())
    start = time.monotonic()
    result = process_shard(ShardSpec("train-000000", "train", (records[1], records[0])), cfg, Location(tmp_path / "out"))
    assert time.monotonic() - start < 30, "the shard did not wait for the slow video"
    by_id = {v.video_id: v for v in result.videos}
    assert by_id["long"].status == "failed" and by_id["long"].reason == "timed out after 5 s"
    assert by_id["short"].status == "ok"
    keys = [m["__key__"] for m in wds.WebDataset(str(tmp_path / "out" / SHARDS_DIR / "train-000000.tar"), shardshuffle=False)]
    assert keys == ["short"]
    # the abandoned video saw its stop flag at the next chunk and ended (it does not run on in the background)
    assert wait_for(lambda: not [t for t in set(threading.enumerate()) - before if t.name == "flowshard-time-limited"], 30)
