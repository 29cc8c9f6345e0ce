"""`python -m jobs.manifest` as a user runs it: exit codes, one-sentence errors, the written file."""

from __future__ import annotations

from schemas.manifest import read_manifest
from tests.conftest import run_job


def test_help_documents_every_flag():
    result = run_job("jobs.manifest", "--help")
    assert result.returncode == 0
    for flag in ("--annotations", "--videos", "--split", "--out", "--allow-missing", "--label-map"):
        assert flag in result.stdout
    for dataset in ("ucf101", "hmdb51", "kinetics", "folder", "csv"):
        assert dataset in result.stdout


def test_missing_videos_fail_with_one_sentence_unless_allowed(ucf, tmp_path):  # noqa: F811
    ann, videos = ucf
    out = tmp_path / "m.parquet"
    args = ["ucf101", "--annotations", str(ann), "--videos", str(videos), "--out", str(out)]
    result = run_job("jobs.manifest", *args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "1 of 5 videos are missing" in error_lines[0] and "--allow-missing" in error_lines[0]
    assert not out.exists()

    result = run_job("jobs.manifest", *args, "--allow-missing")
    assert result.returncode == 0, result.stderr
    assert "train 3" in result.stdout and "test  2" in result.stdout and "missing files: 1" in result.stdout
    records, classes = read_manifest(out)
    assert len(records) == 5 and [r.exists for r in records].count(False) == 1
    assert classes == ["ApplyEyeMakeup", "HandstandPushups", "YoYo"]


def test_malformed_line_is_one_sentence_naming_file_and_line(ucf, tmp_path):  # noqa: F811
    ann, videos = ucf
    (ann / "trainlist01.txt").write_text("YoYo/v_YoYo_g09_c01.avi three\n")
    result = run_job("jobs.manifest", "ucf101", "--annotations", str(ann), "--videos", str(videos), "--out", str(tmp_path / "m.parquet"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()  # one line, naming the file and the line
    assert line.startswith("error: ") and "trainlist01.txt:1" in line


def test_wrong_flag_value_is_a_usage_error(tmp_path):
    result = run_job("jobs.manifest", "ucf101", "--videos", str(tmp_path), "--out", str(tmp_path / "m.parquet"), "--split", "4")
    assert result.returncode == 2 and "invalid choice" in result.stderr and "Traceback" not in result.stderr
    result = run_job("jobs.manifest", "ucf101", "--videos", str(tmp_path), "--out", str(tmp_path / "m.parquet"))
    assert result.returncode == 2 and "needs --annotations" in result.stderr
