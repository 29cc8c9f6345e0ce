"""Proof of learning, end to end through the commands a user runs, on CPU:

make_synthetic (classes differ only in motion) -> manifest -> preprocess -> train -> evaluate.
The flow stream must learn the task, the RGB stream must not (a single frame carries no class signal),
late fusion keeps the flow stream's accuracy, an I3D flow network learns too, and DDP on two Ray Train
workers trains and evaluates the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SHARED_DATA, run_job
from trainers.metrics import fuse, video_metrics

pytestmark = [pytest.mark.slow]

TRAIN = [
    "--batch-size",
    "8",
    "--input-size",
    "64",
    "--no-flip",
    "--loader-workers",
    "1",
    "--print-freq",
    "0",
    "--optimizer",
    "adamw",
    "--weight-decay",
    "0.01",
]


def ok(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("learn")
    ok(
        run_job(
            "jobs.make_synthetic",
            "--out",
            str(root / "videos"),
            "--classes",
            "4",
            "--videos-per-class",
            "12",
            "--size",
            "96x72",
            "--frames",
            "12",
        )
    )
    ok(
        run_job(
            "jobs.manifest",
            "ucf101",
            "--annotations",
            str(root / "videos"),
            "--videos",
            str(root / "videos"),
            "--out",
            str(root / "manifest.parquet"),
        )
    )
    ok(
        run_job(
            "jobs.preprocess",
            "--manifest",
            str(root / "manifest.parquet"),
            "--out",
            str(root / "data"),
            "--modalities",
            "rgb,tvl1",
            "--videos-per-shard",
            "8",
            "--progress-seconds",
            "30",
        )
    )
    return root


def evaluate(root: Path, *runs: str, extra: tuple = ()) -> dict:
    args = ["--data", str(root / "data"), "--json", str(root / "metrics.json"), "--loader-workers", "1", *extra]
    for run in runs:
        args += ["--run", run]
    ok(run_job("jobs.evaluate", *args))
    return json.loads((root / "metrics.json").read_text())


def test_flow_learns_rgb_does_not_and_fusion_keeps_flow(synthetic_data):
    root = synthetic_data
    ok(
        run_job(
            "jobs.train",
            "--data",
            str(root / "data"),
            "--model",
            "tsn_flow",
            "--out",
            str(root / "flow"),
            "--epochs",
            "20",
            "--lr",
            "0.001",
            *TRAIN,
        )
    )
    ok(
        run_job(
            "jobs.train",
            "--data",
            str(root / "data"),
            "--model",
            "tsn_rgb",
            "--out",
            str(root / "rgb"),
            "--epochs",
            "4",
            "--lr",
            "0.001",
            *TRAIN,
        )
    )
    metrics = evaluate(root, f"rgb={root / 'rgb'}", f"flow={root / 'flow'}", extra=("--segments", "25", "--fusion", "rgb=1,flow=1.5"))
    assert metrics["videos"] == 16
    assert metrics["flow"]["top1"] >= 0.9, metrics
    assert metrics["rgb"]["top1"] <= 0.5, metrics  # chance is 0.25
    assert metrics["fused"]["top1"] >= 0.9, metrics
    assert set(metrics["flow"]) == {"top1", "top5", "mean_class", "videos"}
    assert (root / "scores.npz").is_file() and (root / "confusion.png").is_file()


def test_i3d_flow_learns(synthetic_data):
    root = synthetic_data
    ok(
        run_job(
            "jobs.train",
            "--data",
            str(root / "data"),
            "--model",
            "i3d_flow",
            "--out",
            str(root / "i3d"),
            "--epochs",
            "20",
            "--lr",
            "0.003",
            "--clip-len",
            "8",
            "--interval",
            "1",
            *TRAIN,
        )
    )
    metrics = evaluate(root, f"i3d={root / 'i3d'}", extra=("--clips", "3"))
    assert metrics["i3d"]["top1"] >= 0.8, metrics


@pytest.mark.ray
def test_ddp_on_two_ray_train_workers(synthetic_data):
    root = synthetic_data
    # Half the per-rank batch keeps the global batch, and so the number of steps, of the single-process run.
    result = ok(
        run_job(
            "jobs.train",
            "--data",
            str(root / "data"),
            "--model",
            "tsn_flow",
            "--out",
            str(root / "ddp"),
            "--epochs",
            "20",
            "--lr",
            "0.001",
            "--workers",
            "2",
            *TRAIN,
            "--batch-size",
            "4",
            "--loader-workers",
            "0",
        )
    )
    assert "world_rank=1" in result.stdout + result.stderr  # two ranks really ran
    metrics = evaluate(root, f"flow={root / 'ddp'}", extra=("--segments", "25"))
    assert metrics["flow"]["top1"] >= 0.9, metrics


def test_real_clips_train_and_evaluate_end_to_end(tmp_path):
    videos = SHARED_DATA / "videos"
    if not videos.is_dir():
        pytest.skip(f"reference clips absent ({videos})")
    rows = [
        "demo.mp4,kinetics,train",
        "Kop0sDqOn-c.mp4,kinetics,train",
        "part_0.mp4,kinetics,test",
        "test.avi,other,train",
        "flipping_a_pancake.mkv,other,test",
        "S001C001P001R001A001_rgb.avi,other,train",
    ]
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    ok(
        run_job(
            "jobs.manifest",
            "csv",
            "--annotations",
            str(tmp_path / "list.csv"),
            "--videos",
            str(videos),
            "--out",
            str(tmp_path / "m.parquet"),
        )
    )
    ok(
        run_job(
            "jobs.preprocess",
            "--manifest",
            str(tmp_path / "m.parquet"),
            "--out",
            str(tmp_path / "data"),
            "--modalities",
            "rgb,tvl1",
            "--short-side",
            "64",
            "--max-frames",
            "12",
            "--videos-per-shard",
            "2",
            "--progress-seconds",
            "30",
        )
    )
    for model in ("tsn_rgb", "tsn_flow"):
        ok(
            run_job(
                "jobs.train",
                "--data",
                str(tmp_path / "data"),
                "--model",
                model,
                "--out",
                str(tmp_path / model),
                "--epochs",
                "1",
                "--batch-size",
                "2",
                "--input-size",
                "48",
                "--loader-workers",
                "0",
                "--print-freq",
                "0",
            )
        )
    metrics = evaluate(tmp_path, f"rgb={tmp_path / 'tsn_rgb'}", f"flow={tmp_path / 'tsn_flow'}", extra=("--segments", "3", "--crops", "10"))
    assert metrics["videos"] == 2 and metrics["fused"]["top5"] == 1.0  # 2 classes: both are in any top 5
    saved = np.load(tmp_path / "scores.npz")  # the per-video scores: fusion and metrics recomputed from them
    assert sorted(saved["keys"]) == ["flipping_a_pancake", "part_0"]
    fused = fuse({n: saved[f"scores_{n}"] for n in ("rgb", "flow")}, {"rgb": 1.0, "flow": 1.0})
    assert metrics["fused"] == video_metrics(fused, saved["labels"])
