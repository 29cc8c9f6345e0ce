"""The Ray layer on its own: configuration checks, the progress tracker, failed shards, and `run_shards` with
and without the flow service on an embedded Ray."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import webdataset as wds

from pipeline.decode import DecodeConfig
from pipeline.plan import plan_shards
from pipeline.ray_tasks import ClusterConfig, ProgressTracker, _last_line, failed_shard, ray_session, run_shards, start_flow_service
from pipeline.shards import ProcessConfig
from pipeline.synthetic import SyntheticConfig, generate_dataset
from schemas.dataset import SHARDS_DIR
from schemas.manifest import VideoRecord
from tests.conftest import REPO


def test_cluster_config_refuses_a_dashboard_url_and_negative_counts():
    with pytest.raises(ValueError, match="dashboard URL"):
        ClusterConfig(address="http://127.0.0.1:8265")
    for bad in ({"cpus_per_task": 0}, {"flow_workers": -1}, {"max_retries": -1}):
        with pytest.raises(ValueError, match="not negative"):
            ClusterConfig(**bad)


def test_progress_tracker_keeps_the_latest_report_of_each_shard():
    tracker = ProgressTracker()
    tracker.report("train-000000", 1, 10, 0)
    tracker.report("train-000001", 2, 20, 1)
    tracker.report("train-000000", 0, 0, 0)  # a retried shard reports from zero again
    assert tracker.snapshot() == {"train-000000": (0, 0, 0), "train-000001": (2, 20, 1)}


def test_a_failed_shard_fails_every_video_with_the_reason():
    records = [VideoRecord(f"v{i}", f"/x/v{i}.mp4", i, "c", "train", "x") for i in range(3)]
    (spec,) = plan_shards(records, 5)
    result = failed_shard(spec, "worker died 4 times: killed")
    assert result.tar is None and result.samples == 0
    assert [(v.video_id, v.status, v.reason, v.label) for v in result.videos] == [
        (r.video_id, "failed", "worker died 4 times: killed", r.label) for r in spec.records
    ]
    assert _last_line(RuntimeError("Traceback ...\n  File x\nValueError: the real reason\n")) == "ValueError: the real reason"


def test_the_driver_and_the_shard_tasks_start_without_torch():
    """The processes that only decode, write and pass frames on (the preprocessing driver, shard tasks and the
    progress actor, which import these modules) never import torch or webdataset (which imports torch): seconds of
    start-up and hundreds of MB per process. Only flow workers, and tasks that compute their own flow, load it."""
    code = "import sys, jobs.preprocess, pipeline.ray_tasks; print(sorted(m for m in ('torch', 'webdataset') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr
    loaded = "import sys, pipeline.shards as s; s.ProcessConfig().flow_worker(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", loaded], cwd=REPO, capture_output=True, text=True, timeout=120).stdout.strip() == "True"


@pytest.mark.slow
@pytest.mark.ray
def test_run_shards_with_and_without_the_flow_service(tmp_path, ray_cluster):
    entries = generate_dataset(SyntheticConfig(classes=2, videos_per_class=2, width=64, height=48, frames=5, seed=3), tmp_path / "v")
    records = [VideoRecord(f"v{i}", str(tmp_path / "v" / e.relpath), e.label, "c", "train", "x") for i, e in enumerate(entries)]
    specs = plan_shards(records, 2)
    cfg = ProcessConfig(modalities=("rgb", "tvl1"), decode=DecodeConfig(short_side=None))
    pairs = len(records) * (5 - 1)
    seen = []
    with ray_session(ray_cluster.address):
        assert start_flow_service(ProcessConfig(modalities=("rgb",)), ClusterConfig()) is None  # no flow, no workers
        results, stats = run_shards(specs, cfg, str(tmp_path / "service"), ClusterConfig(poll_seconds=0.2), lambda *c: seen.append(c))
        in_task, no_stats = run_shards(specs, cfg, str(tmp_path / "in_task"), ClusterConfig(flow_workers=0))
    assert sorted(r.name for r in results) == [s.name for s in specs] and all(r.node for r in results)
    assert len(stats) == os.cpu_count() and sum(s["pairs"] for s in stats) == pairs
    assert {s["node"] for s in stats} == {r.node for r in results} and all(s["device"] == "cpu" for s in stats)
    assert sum(r.flow_pairs for r in results) == 0  # the tasks sent their flow to the service
    assert seen and seen[-1] == (len(records), len(records) * 5, 0)  # progress: videos, frames, failed
    assert no_stats == [] and sum(r.flow_pairs for r in in_task) == pairs
    keys = sorted(
        m["__key__"] for m in wds.WebDataset(sorted(str(p) for p in (tmp_path / "service" / SHARDS_DIR).glob("*.tar")), shardshuffle=False)
    )
    assert keys == sorted(r.video_id for r in records)
    # the same shards byte for byte, whichever process computed the flow
    assert {r.name: r.sha256 for r in results} == {r.name: r.sha256 for r in in_task}
