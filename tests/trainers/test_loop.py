"""The learning-rate schedule, the metrics, and training that resumes from its last checkpoint."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import torch

from tests.conftest import REPO, run_job
from tests.helpers import flags, synthetic_sample, write_dataset
from trainers.config import TrainConfig
from trainers.loop import get_lr, run_training
from trainers.metrics import confusion_matrix, confusion_png, fuse, mean_class_accuracy, most_confused, topk_accuracy, video_metrics
from trainers.run_folder import BEST, CHECKPOINT, load_checkpoint
from trainers.shard_reader import sample_table


def test_lr_warmup_then_cosine_or_steps():
    lrs = [get_lr(s, 100, 10, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.01) and lrs[9] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # non-increasing after warm-up
    assert lrs[-1] < 0.001
    steps = [get_lr(s, 100, 0, 0.1, "step", (30, 60)) for s in (0, 29, 30, 59, 60, 99)]
    assert steps == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_metrics():
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.3, 0.5], [0.1, 0.6, 0.3], [0.5, 0.4, 0.1]])
    labels = np.array([0, 1, 1, 1])
    assert topk_accuracy(scores, labels, 1) == 0.5
    assert topk_accuracy(scores, labels, 2) == 1.0
    assert topk_accuracy(scores, labels, 5) == 1.0  # k capped at the number of classes
    assert mean_class_accuracy(scores, labels) == pytest.approx((1.0 + 1 / 3) / 2)  # per-class recall, averaged
    m = video_metrics(scores, labels)
    assert set(m) == {"top1", "top5", "mean_class", "videos"} and m["videos"] == 4
    fused = fuse({"a": scores, "b": np.eye(3)[[0, 1, 1, 1]]}, {"a": 1.0, "b": 1.5})
    assert topk_accuracy(fused, labels, 1) == 1.0
    with pytest.raises(ValueError, match="not evaluated"):
        fuse({"a": scores}, {"a": 1, "c": 1})


def test_confusion_matrix_png_grows_with_the_classes_and_lists_the_most_confused():
    cm = confusion_matrix(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), 3)
    assert cm.tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    small = cv2.imdecode(np.frombuffer(confusion_png(cm, ["walk", "run", "jump"]), np.uint8), cv2.IMREAD_COLOR)
    assert small is not None and min(small.shape[:2]) >= 500
    rng = np.random.default_rng(0)
    big = np.diag(rng.integers(5, 30, 101)) + rng.poisson(0.2, (101, 101))
    big[7, 3] = 40  # the most confused pair: 40 of class 7's videos predicted as class 3
    classes = [f"class{i}" for i in range(101)]
    pairs = most_confused(big, classes)
    assert pairs[0] == ("class7", "class3", 40, 40 / big[7].sum()) and len(pairs) == 20
    assert [p[2] for p in pairs] == sorted((p[2] for p in pairs), reverse=True)
    image = cv2.imdecode(np.frombuffer(confusion_png(big, classes), np.uint8), cv2.IMREAD_COLOR)
    assert image.shape[0] > 2 * small.shape[0] and image.shape[1] > image.shape[0]  # larger, the pairs listed beside


@pytest.fixture
def tiny_dataset(tmp_path):
    write_dataset(tmp_path / "data", {"train-000000.tar": [synthetic_sample(f"v{i}", i % 3) for i in range(6)]})
    return tmp_path / "data"


def tiny_config(data, out, epochs) -> TrainConfig:
    return TrainConfig(
        data=str(data),
        model="tsn_flow",
        out=str(out),
        epochs=epochs,
        batch_size=3,
        input_size=32,
        new_length=2,
        segments=2,
        loader_workers=0,
        print_freq=0,
        lr=0.01,
    )


@pytest.mark.slow  # a training run
def test_training_writes_checkpoints_metrics_and_resumes(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    run_training(tiny_config(tiny_dataset, out, epochs=1))
    state = load_checkpoint(out)
    assert state["epoch"] == 0 and state["step"] == 2 and state["num_classes"] == 3
    first = {k: v.clone() for k, v in state["model"].items()}
    printed = capsys.readouterr().out
    # what the epoch read, per video: each sample's head and its 2 snippets of 2 flows, a part of the sample
    mb, reads = map(float, re.search(r"epoch 0: .*\(([\d.]+) MB in ([\d.]+) reads per video\)", printed).groups())
    table = sample_table(tiny_dataset, "train")
    assert 0 < mb * 2**20 < table.size.mean() / 2 and 2 <= reads <= 2 * 2 + 2
    run_training(tiny_config(tiny_dataset, out, epochs=2))
    assert "resuming" in capsys.readouterr().out
    state = load_checkpoint(out)
    assert state["epoch"] == 1 and state["step"] == 4  # continued, not restarted
    assert any(not torch.equal(first[k], v) for k, v in state["model"].items())
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [(int(r["step"]), bool(r["loss"]), bool(r["train_top1"])) for r in rows] == [
        (0, True, False),
        (1, True, False),
        (2, False, True),  # the epoch's row, after its steps
        (2, True, False),
        (3, True, False),
        (4, False, True),
    ]
    assert not any(r["val_top1"] for r in rows) and not (out / "best.pt").exists()  # no validation asked


@pytest.mark.slow  # a training run
def test_validation_keeps_the_best_checkpoint_and_draws_the_curves(tmp_path, capsys):
    write_dataset(
        tmp_path / "data",
        {
            "train-000000.tar": [synthetic_sample(f"v{i}", i % 3) for i in range(6)],
            "test-000000.tar": [synthetic_sample(f"t{i}", i % 3) for i in range(3)],
        },
    )
    out = tmp_path / "run"
    cfg = dataclasses.replace(tiny_config(tmp_path / "data", out, epochs=3), eval_every=2, eval_segments=2)
    run_training(cfg)
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    validated = [r for r in rows if r["val_top1"]]
    assert [int(r["epoch"]) for r in validated] == [1, 2]  # every 2nd epoch, and the last
    scores = [float(r["val_top1"]) for r in validated]
    assert all(0 <= float(r[k]) <= 1 for r in validated for k in ("val_top1", "val_top5", "val_mean_class"))
    assert all(float(r["val_top5"]) == 1.0 for r in validated)  # 3 classes: every label is in the top 5
    best = load_checkpoint(str(out / "best.pt"))
    assert best["best"] == {"epoch": [1, 2][scores.index(max(scores))], "val_top1": max(scores)}  # the first best
    assert best["epoch"] == best["best"]["epoch"] and load_checkpoint(out)["best"] == best["best"]
    printed = capsys.readouterr().out
    assert "test top-1" in printed and "(best " in printed
    image = cv2.imread(str(out / "curves.png"))
    assert image is not None and image.shape[0] >= 400 and image.shape[1] >= 1200  # three readable panels
    # a resume keeps the best checkpoint and its validation rows
    run_training(dataclasses.replace(cfg, epochs=4))
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows if r["val_top1"]] == [1, 2, 3]
    assert load_checkpoint(out)["best"]["val_top1"] >= max(scores)


RECIPE_CHANGES = [
    {"model": "tsn_rgb"},
    {"backbone": "resnet50"},
    {"new_length": 3},
    {"flow_modality": "warp_tvl1"},
    {"optimizer": "adamw"},
    {"lr": 0.1},
    {"schedule": "step", "step_epochs": (1,)},
    {"input_size": 48},
    {"flip": False},
]


@pytest.mark.slow  # a training run
def test_resume_refuses_a_changed_recipe_and_keeps_the_runs_record(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    run_training(tiny_config(tiny_dataset, out, epochs=1))
    record = {name: (out / name).read_bytes() for name in ("config.json", "checkpoint.pt", "metrics.csv")}
    for change in RECIPE_CHANGES:  # refused before any work: one run serves them all
        name = next(iter(change))
        with pytest.raises(ValueError, match=rf"holds a run trained with other settings \(.*{name} .* -> .*\); to resume it"):
            run_training(dataclasses.replace(tiny_config(tiny_dataset, out, epochs=2), **change))
        assert {name: (out / name).read_bytes() for name in record} == record, f"a refused resume ({change}) changed the run folder"


@pytest.mark.slow  # a training run
def test_resume_takes_new_runtime_settings_and_more_epochs(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    run_training(tiny_config(tiny_dataset, out, epochs=1))
    runtime = dict(epochs=2, print_freq=5, eval_segments=3, pretrained=str(tmp_path / "gone.pth"))  # weights: the checkpoint's
    run_training(dataclasses.replace(tiny_config(tiny_dataset, out, epochs=1), **runtime))
    config = json.loads((out / "config.json").read_text())
    assert (config["epochs"], config["print_freq"], config["eval_segments"]) == (2, 5, 3)
    assert config["pretrained"] is None and config["lr"] == 0.01  # what the run was trained with
    assert load_checkpoint(out)["epoch"] == 1


@pytest.mark.slow
def test_a_killed_training_run_resumes_from_its_last_checkpoint(tmp_path):
    """Killed while validating every epoch; the resumed run (decoding in the training process this time) keeps
    the best checkpoint and has every epoch's validation row once."""
    data = tmp_path / "data"
    write_dataset(
        data,
        {
            "train-000000.tar": [synthetic_sample(f"v{i}", i % 3) for i in range(6)],
            "test-000000.tar": [synthetic_sample(f"t{i}", i % 3) for i in range(3)],
        },
    )
    out = tmp_path / "run"
    common = ["--data", str(data), "--model", "tsn_flow", "--out", str(out), "--batch-size", "3", "--input-size", "32"]
    common += ["--new-length", "2", "--segments", "2", "--loader-workers", "0", "--print-freq", "0", "--eval-every", "1"]
    job = subprocess.Popen(
        [sys.executable, "-m", "jobs.train", *common, "--epochs", "40"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 180
    while not (out / CHECKPOINT).is_file() and time.monotonic() < deadline and job.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)
    os.kill(job.pid, signal.SIGKILL)
    job.wait()
    killed_at = load_checkpoint(out)["epoch"]
    assert killed_at < 39, "the run finished before it was killed"
    assert (out / BEST).is_file()
    result = run_job("jobs.train", *common, "--epochs", str(killed_at + 3), "--decode-on-device")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"resuming {out} after epoch {killed_at}" in result.stdout
    state = load_checkpoint(out)
    assert state["epoch"] == killed_at + 2
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows if r["val_top1"]] == list(range(killed_at + 3))  # each epoch once
    assert [int(r["step"]) for r in rows if r["loss"]] == list(range(2 * (killed_at + 3)))  # each step once
    best = load_checkpoint(str(out / BEST))
    assert best["best"] == state["best"] and best["best"]["val_top1"] == max(float(r["val_top1"]) for r in rows if r["val_top1"])


@pytest.mark.slow
@pytest.mark.ray
def test_a_cluster_without_room_for_the_ranks_stops_in_one_sentence(tiny_dataset, tmp_path, ray_cluster):
    ranks = 3  # one CPU each: the session's 2-CPU cluster can never place them all
    out = tmp_path / "run"
    result = run_job(
        "jobs.train",
        *flags(data=tiny_dataset, model="tsn_flow", out=out, epochs=1, input_size=32, loader_workers=0, print_freq=0),
        *flags(workers=ranks, rank_wait=5, max_failures=1),
        timeout=300,
        env=ray_cluster.env,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    # the one error line (Ray's controller may relay a log line of its own after it)
    (last,) = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert last.startswith("error: training stopped: the cluster could not place") and f"{ranks} ranks within 5 s (--rank-wait)" in last
    assert "it wrote no checkpoint" in last and not (out / CHECKPOINT).exists()
