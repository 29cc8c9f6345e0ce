"""The whole tool on object storage, as a user runs it: videos and annotation files in a bucket -> manifest
-> preprocess to S3 (bad files recorded, resume cleans leftovers) -> train and evaluate from S3, against a
real S3 server (moto) on 127.0.0.1."""

from __future__ import annotations

import io
import json
import math
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.synthetic import SyntheticConfig, generate_dataset
from schemas.manifest import read_manifest
from schemas.sample import decode_sample
from storage import TMP_MARK, Location, join
from tests.conftest import REPO, incomplete_uploads, one_ran_one_refused, run_inline, run_job, run_together
from tests.helpers import BAD_REASONS, QUICK_FLOW, shard_samples, whole_shards, write_bad_inputs
from trainers.metrics import video_metrics

pytestmark = [pytest.mark.slow, pytest.mark.ray]

SMALL = SyntheticConfig(classes=4, videos_per_class=4, width=64, height=48, frames=8, seed=7)
PREPROCESS = ["--videos-per-shard", "5", "--modalities", "rgb,tvl1", "--size", "64x48", "--progress-seconds", "2", *QUICK_FLOW]


def upload_tree(local: Path, uri: str) -> None:
    target = Location(uri)
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        target.write_bytes(path.read_bytes(), *path.relative_to(local).parts)


def shard_keys(out: str) -> list[str]:
    shards = whole_shards(Location(out).list("shards"))  # only whole shards (and their indexes) are visible
    return [m["__key__"] for m in shard_samples([join(out, "shards", n) for n in shards])]


@pytest.fixture(scope="module")
def s3_dataset(s3_server, tmp_path_factory, ray_cluster):
    """Synthetic UCF101-layout videos, their annotation files and five kinds of bad file, all in a bucket;
    the manifest built from there by `jobs.manifest`, and one preprocessing run to S3: its command started twice at
    once (a job submitted twice), one run doing the work, the other refused in one line (`one_ran_one_refused`)."""
    import boto3

    local = tmp_path_factory.mktemp("s3data")
    entries = generate_dataset(SMALL, local / "ucf")
    bad = write_bad_inputs(local / "bad")
    for name, path in bad.items():
        if name != "missing":
            (local / "ucf" / "Move000" / path.name).write_bytes(path.read_bytes())
    with open(local / "ucf" / "trainlist01.txt", "a") as f:  # bad files listed like good ones (label 1 = Move000)
        f.writelines(f"Move000/{p.name} 1\r\n" for p in bad.values())
    bucket = "s3://flowshard-e2e"
    boto3.client("s3").create_bucket(Bucket=bucket.removeprefix("s3://"))
    upload_tree(local / "ucf", join(bucket, "ucf"))

    manifest = join(bucket, "ucf101_s1.parquet")
    made = run_job(
        "jobs.manifest",
        "ucf101",
        "--annotations",
        join(bucket, "ucf"),
        "--videos",
        join(bucket, "ucf"),
        "--out",
        manifest,
        "--allow-missing",
    )
    assert made.returncode == 0, made.stderr
    out = join(bucket, "out")
    run, _ = one_ran_one_refused(run_together("jobs.preprocess", "--manifest", manifest, "--out", out, *PREPROCESS, env=ray_cluster.env))
    assert not Location(out).exists("_lease.json")  # let go of at the end
    return bucket, manifest, out, entries, made, run


def test_manifest_reads_annotations_and_videos_from_s3(s3_dataset):
    bucket, manifest, _, entries, made, _ = s3_dataset
    assert "missing files: 1" in made.stdout
    records, classes = read_manifest(manifest)
    assert len(records) == len(entries) + len(BAD_REASONS) and len(classes) == SMALL.classes
    assert all(r.path.startswith(join(bucket, "ucf") + "/") for r in records)
    assert Location(join(bucket, "ucf101_s1.config.json")).is_file()
    assert not (REPO / "s3:").exists(), "no local folder named after the URI"


def test_preprocess_to_s3_stores_every_good_video_once_and_records_bad_ones(s3_dataset):
    _, manifest, out, entries, _, run = s3_dataset
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"{len(entries)} ok, {len(BAD_REASONS)} failed" in run.stdout
    records, _ = read_manifest(manifest)
    good = {r.video_id for r in records if r.video_id not in BAD_REASONS}
    assert Counter(shard_keys(out)) == Counter(good)
    results = {r["video_id"]: r for r in pq.read_table(Location(out).open_input_file("results.parquet")).to_pylist()}
    for name, reason in BAD_REASONS.items():
        assert results[name]["status"] == "failed" and results[name]["reason"].startswith(reason), results[name]
    sample = decode_sample(shard_samples([join(out, "shards", whole_shards(Location(out).list("shards"))[0])])[0])
    assert len(sample.flow["tvl1"]) == SMALL.frames - 1 and sample.rgb_frame(0).shape == (48, 64, 3)
    assert Location(out).is_file("preprocess.config.json") and not (REPO / "s3:").exists()


def kill_mid_upload(uri: str, *parts: str) -> None:
    """A process that dies (SIGKILL) while uploading to `uri/parts`, leaving an incomplete multipart upload."""
    writer = (
        f"import os, signal\nfrom storage import Location\nwith Location({uri!r}).atomic_write(*{parts!r}) as s:\n"
        "    s.write(os.urandom(12 << 20))\n    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    assert subprocess.run([sys.executable, "-c", writer], cwd=REPO).returncode == -9


def test_resume_on_s3_redoes_only_the_missing_shard_and_cleans_leftovers(s3_dataset, ray_cluster):
    bucket, manifest, out, _, _, _ = s3_dataset
    target = Location(out)
    records = target.list("_progress", suffix=".done.json")
    lost = records[-1].removesuffix(".done.json")
    target.delete_file("_progress", records[-1])  # as if the run had died before this shard's record
    target.write_bytes(b"partial", "shards", f"{lost}.tar{TMP_MARK}killed")  # a temporary never moved into place
    kill_mid_upload(out, "shards", f"{lost}.tar")  # the killed attempt's upload, invisible but stored
    assert incomplete_uploads(bucket)
    more = ["--flow-batch", "4", "--video-timeout", "600"]
    result = run_job("jobs.preprocess", "--manifest", manifest, "--out", out, *PREPROCESS, *more, env=ray_cluster.env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(records) - 1} shards already done, 1 to run" in result.stdout  # runtime settings may change
    assert incomplete_uploads(bucket) == [] and not [n for n in target.list("shards") if TMP_MARK in n]
    records_after, _ = read_manifest(manifest)
    assert Counter(shard_keys(out)) == Counter(r.video_id for r in records_after if r.video_id not in BAD_REASONS)
    changed = run_job("jobs.preprocess", "--manifest", manifest, "--out", out, *PREPROCESS, "--jpeg-quality", "80")
    assert changed.returncode == 2 and "jpeg_quality: 95 -> 80" in changed.stderr


def test_train_evaluate_visualize_from_s3(s3_dataset):
    bucket, _, out, entries, _, _ = s3_dataset
    run = join(bucket, "runs", "flow")
    trained = run_inline(  # in this process, whose environment reaches the S3 server: no second interpreter's imports
        "jobs.train",
        "--data",
        out,
        "--model",
        "tsn_flow",
        "--out",
        run,
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--no-flip",
        "--print-freq",
        "0",
        "--input-size",
        "32",
        "--loader-workers",
        "1",
    )
    assert trained.returncode == 0, trained.stdout + trained.stderr
    runs = Location(run)
    assert runs.is_file("checkpoint.pt") and runs.is_file("config.json")
    state = torch.load(io.BytesIO(runs.read_bytes("checkpoint.pt")), weights_only=True)  # as flowshard loads it
    steps = math.ceil(sum(e.split == "train" for e in entries) / 4)  # one epoch in batches of 4
    assert state["epoch"] == 0 and state["step"] == steps and state["num_classes"] == SMALL.classes
    rows = runs.read_text("metrics.csv").splitlines()
    assert rows[0] == "epoch,step,loss,lr,samples_per_s,train_top1,val_top1,val_top5,val_mean_class"
    assert len(rows) == 1 + steps + 1  # a row per step, then the epoch's
    assert runs.is_file("curves.png")

    metrics_uri = join(bucket, "eval", "metrics.json")
    evaluated = run_inline(
        "jobs.evaluate", "--data", out, "--run", f"flow={run}", "--segments", "3", "--json", metrics_uri, "--loader-workers", "1"
    )
    assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
    reads = float(re.search(r"MB in ([\d.]+) reads per video", evaluated.stdout).group(1))
    assert 2 <= reads <= 2 * 3 + 2  # a head and the 3 segments' snippets (an open per shard spread over the videos)
    metrics = json.loads(Location(metrics_uri).read_text())
    tests = sum(e.split == "test" for e in entries)
    saved = np.load(io.BytesIO(Location(join(bucket, "eval", "scores.npz")).read_bytes()))
    assert metrics["videos"] == tests and metrics["flow"] == video_metrics(saved["scores_flow"], saved["labels"])
    assert Location(join(bucket, "eval")).list() == ["confusion.png", "evaluate.config.json", "metrics.json", "scores.npz"]

    picture, gif = join(bucket, "sheet.png"), join(bucket, "one.gif")
    shown = run_inline("jobs.visualize", "--data", out, "--out", picture, "--samples", "2", "--gif", gif)
    assert shown.returncode == 0, shown.stderr
    image = cv2.imdecode(np.frombuffer(Location(picture).read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    assert image.shape[0] >= 2 * 180 and image.shape[1] >= 6 * 180 * 64 // 48  # two rows: 3 RGB frames, 3 tvl1 tiles
    assert Location(gif).read_bytes().startswith(b"GIF89a")
    assert not (REPO / "s3:").exists()


def test_credentials_in_a_uri_work_and_no_printed_or_stored_byte_holds_the_secret(s3_server, tmp_path, monkeypatch):
    """Only the URIs carry the credentials and the endpoint (pyarrow's `s3://KEY:SECRET@bucket/...?endpoint_override=`
    form): preprocess, train and evaluate through them, re-run, and fail once; then every line printed and every
    file written, in the bucket and on disk, is searched for the secret."""
    import boto3

    secret = "FlowshardSecret0123"
    name = f"creds-{tmp_path.name[-8:].lower().replace('_', '-')}"
    boto3.client("s3").create_bucket(Bucket=name)
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(variable)  # this process, the jobs it starts and their Ray workers
    options = f"?endpoint_override={s3_server.endpoint.removeprefix('http://')}&scheme=http&region=us-east-1"
    base = f"s3://AKIAFLOWSHARD:{secret}@{name}"
    data, run, metrics = f"{base}/data{options}", f"{base}/runs/flow{options}", f"{base}/eval/metrics.json{options}"
    entries = generate_dataset(SyntheticConfig(classes=2, videos_per_class=3, width=64, height=48, frames=6, seed=3), tmp_path / "v")
    (tmp_path / "list.csv").write_text("".join(f"{tmp_path / 'v' / e.relpath},c{e.label},{e.split}\n" for e in entries))
    manifest = tmp_path / "m.parquet"
    listing = ["--annotations", str(tmp_path / "list.csv"), "--videos", str(tmp_path), "--out", str(manifest)]
    outputs = [run_inline("jobs.manifest", "csv", *listing)]
    outputs.append(run_job("jobs.preprocess", "--manifest", str(manifest), "--out", data, *PREPROCESS))
    outputs.append(run_job("jobs.preprocess", "--manifest", str(manifest), "--out", data, *PREPROCESS))  # nothing to run
    train = ["--data", data, "--model", "tsn_flow", "--out", run, "--epochs", "1", "--batch-size", "2", "--input-size", "32"]
    outputs.append(run_inline("jobs.train", *train, "--loader-workers", "0", "--print-freq", "1", "--no-flip"))
    outputs.append(run_inline("jobs.evaluate", "--data", data, "--run", f"flow={run}", "--segments", "2", "--json", metrics))
    refused = run_inline("jobs.inspect", f"s3://AKIAFLOWSHARD:{secret}@no-such-bucket/data{options}")
    assert [r.returncode for r in outputs] == [0, 0, 0, 0, 0] and refused.returncode == 2, [r.stderr[-500:] for r in outputs]
    printed = "".join(r.stdout + r.stderr for r in [*outputs, refused])
    assert f"shards in s3://***@{name}/data/shards?endpoint_override=" in printed  # shown, redacted, options kept
    assert "no-such-bucket" in refused.stderr and secret not in printed
    assert json.loads(Location(metrics).read_text())["videos"] == sum(e.split == "test" for e in entries)
    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint, aws_access_key_id="x", aws_secret_access_key="y")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=name)["Contents"]]
    assert {"data/preprocess.config.json", "data/report.json", "runs/flow/config.json", "runs/flow/checkpoint.pt"} <= set(keys)
    assert "eval/evaluate.config.json" in keys and "data/index.parquet" in keys and "data/results.parquet" in keys
    for key in keys:  # checkpoint.pt is an uncompressed zip: its pickled config's strings are plain bytes
        assert secret.encode() not in s3.get_object(Bucket=name, Key=key)["Body"].read(), key
    for path in tmp_path.rglob("*"):
        assert not path.is_file() or secret.encode() not in path.read_bytes(), path


def readme_block(containing: str) -> str:
    """The README's ```python block that contains `containing`, as written there."""
    blocks = (REPO / "README.md").read_text().split("```python\n")[1:]
    found = [b.split("```", 1)[0] for b in blocks if containing in b]
    assert len(found) == 1, f"one README block holds {containing!r}"
    return found[0]


def test_the_readme_ray_data_recipe_reads_every_sample_once_locally_and_from_s3(s3_dataset, tmp_path):
    from tests.helpers import synthetic_sample, write_dataset

    _, _, out, *_ = s3_dataset
    local = tmp_path / "data"
    write_dataset(local, {"train-000000.tar": [synthetic_sample(f"v{i}", i % 3) for i in range(3)]})
    recipe = readme_block("ray.data.read_webdataset")
    # a Ray of its own ("local": with a cluster on this machine, as the session's shared one, a plain init joins it)
    script = "import json, sys\nimport ray\nray.init(address='local', num_cpus=1, include_dashboard=False, log_to_driver=False)\n"
    for data in (str(local), out):
        script += recipe.replace('"s3://bucket/data/ucf101"', repr(data)) + "print('RESULT', json.dumps(videos.take_all()))\n"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    found = [json.loads(line.removeprefix("RESULT ")) for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    for data, rows in zip((str(local), out), found, strict=True):
        index = pq.read_table(Location(data).open_input_file("index.parquet")).to_pydict()
        assert Counter((r["key"], r["label"]) for r in rows) == Counter(zip(index["key"], index["label"], strict=True))


def test_a_dry_run_on_s3_flags_what_the_run_failed_and_writes_nothing_to_the_bucket(s3_dataset, tmp_path, ray_cluster):
    """Issue 29 on object storage: the census reads every video from the bucket (ranged reads), predicts the
    failures the module's run recorded, in its words; a dry run on a new prefix and on the built dataset writes
    nothing to either."""
    from pipeline.report import failure_reason

    bucket, manifest, out, entries, _, _ = s3_dataset

    def objects() -> dict[str, tuple]:
        import boto3

        pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket.removeprefix("s3://"))
        return {o["Key"]: (o["Size"], o["ETag"], o["LastModified"]) for page in pages for o in page.get("Contents", [])}

    before = objects()
    fresh = join(bucket, "planned")
    plan = ["--calibration-videos", "0"]  # the census alone (calibration and forecast: tests/pipeline/test_grow.py)
    result = run_job(
        "jobs.preprocess", "--manifest", manifest, "--out", fresh, *PREPROCESS, "--dry-run", str(tmp_path / "p"), *plan, env=ray_cluster.env
    )
    assert result.returncode == 0, result.stdout + result.stderr
    census = {r["video_id"]: r for r in pq.read_table(tmp_path / "p" / "census.parquet").to_pylist()}
    results = {r["video_id"]: r for r in pq.read_table(Location(out).open_input_file("results.parquet")).to_pylist()}
    assert {v: r["status"] for v, r in census.items()} == {v: r["status"] for v, r in results.items()}
    assert all(failure_reason(census[v]["reason"]) == failure_reason(r["reason"]) for v, r in results.items())
    planned = json.loads((tmp_path / "p" / "plan.json").read_text())
    assert planned["videos"]["expected_ok"] == len(entries) and planned["calibration"] is None
    assert planned["bytes"] is None and any(u.startswith("shard bytes") for u in planned["unmeasured"])  # nothing measured it
    assert "[" in result.stdout and "videos/s" in result.stdout  # the census's progress
    again = run_job(
        "jobs.preprocess", "--manifest", manifest, "--out", out, *PREPROCESS, "--dry-run", str(tmp_path / "q"), *plan, env=ray_cluster.env
    )
    assert again.returncode == 0 and "dry run: 0 videos to run" in again.stdout, again.stdout + again.stderr
    assert objects() == before, "a dry run wrote to the bucket"
