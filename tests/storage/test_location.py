"""The storage layer against a local disk and a real S3 server (moto on 127.0.0.1): reads, listings, atomic
writes that leave nothing under the final name when interrupted, leftovers cleaned, one-sentence errors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from pipeline.decode import DecodeConfig, VideoError, decode_video
from storage import TMP_MARK, Location, StorageError, basename, join, parent
from tests.conftest import REPO, free_port, incomplete_uploads, run_inline, run_job, s3_env, start_moto, stop_process
from tests.helpers import noise_frames, write_mp4


def test_join_parent_basename_keep_uris_intact(s3_server):
    assert join("s3://b/x", "shards", "a.tar") == "s3://b/x/shards/a.tar"
    assert join("s3://b/x/", "/shards/") == "s3://b/x/shards"
    assert parent("s3://b/x/m.parquet") == "s3://b/x" and basename("s3://b/x/m.parquet") == "m.parquet"
    assert join("/data/x", "a") == "/data/x/a" and parent("/data/x/a") == "/data/x"
    assert Location("s3://b/x").uri_of("y", "z.tar") == "s3://b/x/y/z.tar"
    assert Location("rel/dir").uri_of("a") == os.path.abspath("rel/dir/a")


def test_credentials_and_options_in_a_uri_are_kept_for_use_and_redacted_for_show():
    from storage import redact, redacted
    from storage.multipart import client_options

    uri = "s3://AKIAEXAMPLE:SUPERSECRET@bucket/out?endpoint_override=127.0.0.1:9000&scheme=http&region=eu-west-1"
    assert join(uri, "shards", "a.tar") == uri.replace("/out?", "/out/shards/a.tar?")  # options stay last
    assert parent(join(uri, "m.parquet")) == uri and basename(join(uri, "m.parquet")) == "m.parquet"
    shown = "s3://***@bucket/out?endpoint_override=127.0.0.1:9000&scheme=http&region=eu-west-1"
    assert redact(uri) == shown and redact(f"error: cannot access {uri} (x)") == f"error: cannot access {shown} (x)"
    assert redact("s3://b/k?secret_key=abc&region=r&session_token=t") == "s3://b/k?secret_key=***&region=r&session_token=***"
    assert redact("gs://bucket/a@b.mp4 and /local/a@b") == "gs://bucket/a@b.mp4 and /local/a@b"  # an @ in a key is not a login
    assert redacted({"out": uri, "n": [1, uri], "t": (uri,)}) == {"out": shown, "n": [1, shown], "t": (shown,)}
    assert "SUPERSECRET" not in repr(Location(uri)) and Location(uri).root == "bucket/out"
    assert client_options(uri) == {
        "aws_access_key_id": "AKIAEXAMPLE",
        "aws_secret_access_key": "SUPERSECRET",
        "endpoint_url": "http://127.0.0.1:9000",
        "region_name": "eu-west-1",
    }
    assert client_options("s3://bucket/out") == {}


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path) -> Location:
    if request.param == "local":
        return Location(str(tmp_path / "root"))
    return Location(join(request.getfixturevalue("bucket"), "root"))


def test_write_read_list_walk_delete(root):
    root.write_bytes(b"one", "a.txt")
    root.write_text("two", "sub", "b.txt")
    root.write_text("three", "sub", "deeper", "c.txt")
    assert root.read_bytes("a.txt") == b"one" and root.read_text("sub", "b.txt") == "two"
    assert root.exists("a.txt") and root.is_file("a.txt") and root.is_dir("sub") and not root.exists("nothing")
    assert root.list() == ["a.txt"] and root.list("sub") == ["b.txt"] and root.list("absent") == []
    assert root.list_dirs() == ["sub"]
    assert list(root.walk()) == ["a.txt", "sub/b.txt", "sub/deeper/c.txt"]
    with root.open_input_file("sub", "deeper", "c.txt") as f:  # seekable, ranged
        f.seek(2)
        assert f.read(3) == b"ree"
    root.write_bytes(b"replaced", "a.txt")
    assert root.read_bytes("a.txt") == b"replaced"
    root.delete_file("a.txt")
    root.delete_dir("sub")
    assert list(root.walk()) == []


def test_a_failed_write_leaves_nothing_under_the_final_name(root):
    root.write_bytes(b"old", "kept.bin")
    for name in ("new.bin", "kept.bin"):
        with pytest.raises(RuntimeError, match="boom"):
            with root.atomic_write(name) as stream:
                stream.write(os.urandom(1 << 20))
                raise RuntimeError("boom")
    assert root.list() == ["kept.bin"], "no partial file, no temporary left"
    assert root.read_bytes("kept.bin") == b"old"


def test_a_killed_writer_leaves_an_invisible_upload_that_resume_aborts(bucket):
    out = Location(join(bucket, "out"))
    out.write_bytes(b"x", "shards", "done.tar")
    writer = textwrap.dedent(f"""
        import os, signal
        from storage import Location
        with Location({out.uri!r}).atomic_write("shards", "big.tar") as stream:
            stream.write(os.urandom(12 << 20))  # parts already uploaded
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    killed = subprocess.run([sys.executable, "-c", writer], cwd=REPO, capture_output=True)
    assert killed.returncode == -9
    assert out.list("shards") == ["done.tar"], "nothing visible under any name"
    assert any(TMP_MARK in key for key in incomplete_uploads(bucket)), "the killed upload is pending"
    out.write_bytes(b"stale", "shards", f"x.tar{TMP_MARK}abc")  # a temporary whose move never happened
    assert out.remove_temporaries("shards") == 2
    assert incomplete_uploads(bucket) == [] and out.list("shards") == ["done.tar"]


def test_videos_decode_the_same_from_object_storage(bucket, tmp_path):
    write_mp4(tmp_path / "v.mp4", noise_frames(12))
    videos = Location(join(bucket, "videos"))
    videos.write_bytes((tmp_path / "v.mp4").read_bytes(), "v.mp4")
    videos.write_bytes(b"", "empty.mp4")
    videos.write_bytes(b"not a video", "text.mp4")
    cfg = DecodeConfig(short_side=None)
    remote, local = decode_video(videos.uri_of("v.mp4"), cfg), decode_video(str(tmp_path / "v.mp4"), cfg)
    assert remote.frames.shape == local.frames.shape == (12, 48, 64, 3)
    assert np.array_equal(remote.frames, local.frames)
    for name, reason in [("missing.mp4", "file not found"), ("empty.mp4", "empty file"), ("text.mp4", "not a readable video")]:
        with pytest.raises(VideoError, match=reason):
            decode_video(videos.uri_of(name), cfg)


def test_store_errors_are_one_sentence(s3_server, tmp_path):
    # a missing bucket, in the library and from a job
    with pytest.raises(StorageError, match="does not exist; create it or fix the URI"):
        Location("s3://no-such-bucket/data").check()
    result = run_inline("jobs.train", "--data", "s3://no-such-bucket/data", "--model", "tsn_flow", "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and "bucket 'no-such-bucket'" in result.stderr and "Traceback" not in result.stderr

    # an endpoint nobody listens on
    closed = {**s3_env(free_port())}
    result = run_job("jobs.preprocess", "--manifest", "s3://b/m.parquet", "--out", "s3://b/out", env=closed)
    assert result.returncode == 2 and "cannot reach the object store at http://127.0.0.1:" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1

    # credentials the store refuses (a second server that checks them)
    server, port = start_moto({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    try:
        result = run_job("jobs.manifest", "folder", "--videos", "s3://b/videos", "--out", str(tmp_path / "m.parquet"), env=s3_env(port))
    finally:
        stop_process(server)
    assert result.returncode == 2 and "was refused; check the credentials" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "m.parquet").exists()


def test_a_location_never_resolves_a_part_outside_itself(tmp_path):
    inside = Location(tmp_path / "out")
    for part in ("../esc", "a/../../esc", "..", "a\x00b", "%2e%2e/esc"):
        with pytest.raises(StorageError, match="cannot hold '..' or NUL"):
            inside.write_bytes(b"x", part)
    assert not (tmp_path / "esc").exists() and not (tmp_path / "out").exists()
    with pytest.raises(StorageError, match="cannot hold '..' or NUL"):
        Location(f"file://{tmp_path}/out").child("%2e%2e", "%2E%2E")  # pyarrow would decode these to ../..
    with pytest.raises(StorageError, match="cannot hold '..' or NUL"):
        join("s3://bucket/x", "shards", "../../other/key")
    assert Location("s3://bucket/x?endpoint_override=127.0.0.1:1").uri_of("a", "b.tar").startswith("s3://bucket/x/a/b.tar?")


def test_a_failed_write_names_the_outputs_fault_in_words():
    from storage import OutputFault, write_fault

    cases = {
        OSError(28, "Error writing bytes to file. Detail: [errno 28] No space left on device"): "no space is left on the device of /d/x",
        OSError(122, "Disk quota exceeded"): "the disk quota of /d/x is exceeded",
        OSError(30, "Read-only file system"): "/d/x is on a read-only file system",
        PermissionError(13, "Permission denied"): "permission denied writing /d/x",
        OSError("When uploading part: AWS Error NO_SUCH_BUCKET during UploadPart"): "the bucket of /d/x does not exist",
        OSError("XMinioStorageFull: Storage backend has reached its minimum free drive threshold"): "the object store of /d/x is full",
        OSError("something else entirely"): "cannot write /d/x (something else entirely)",
    }
    for exc, words in cases.items():
        fault = write_fault(exc, "/d/x")
        assert isinstance(fault, OutputFault) and str(fault).startswith(words), (exc, str(fault))


def test_writes_that_fail_are_output_faults_and_leave_nothing(tmp_path):
    from storage import OutputFault

    out = Location(str(tmp_path))
    with pytest.raises(OutputFault, match="no space is left on the device of .*/big.bin"):
        with out.atomic_write("big.bin") as stream:
            stream.write(b"x")
            raise OSError(28, "No space left on device")  # as the stream raises it when the disk fills
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "ro").mkdir(mode=0o500)
    if os.geteuid() != 0:  # root writes anywhere
        with pytest.raises(OutputFault, match="permission denied writing"):
            Location(str(tmp_path / "ro")).write_bytes(b"x", "f")
