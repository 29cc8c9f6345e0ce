"""One writer per output (issue 36): a lease on the output location, on a local disk and on S3 (moto)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from storage import Location
from storage.lease import LEASE_FILE, Holder, OutputBusy, take_lease
from tests.conftest import REPO

HOLD_AND_WAIT = """
import sys, time
from storage import Location
from storage.lease import take_lease
lease = take_lease(Location(sys.argv[1]), ttl=float(sys.argv[2]))
print("held", flush=True)
time.sleep(600)
"""


def holder_process(where: str, ttl: float = 60.0) -> subprocess.Popen:
    """Another process that takes the lease on `where` and keeps it until killed."""
    process = subprocess.Popen([sys.executable, "-c", HOLD_AND_WAIT, where, str(ttl)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_local_output_has_one_writer_until_its_process_ends(tmp_path):
    out = Location(str(tmp_path / "out"))
    other = holder_process(out.uri)
    try:
        with pytest.raises(OutputBusy) as refused:
            take_lease(out)
        message = str(refused.value)
        assert f"pid {other.pid}" in message and "since 20" in message and "\n" not in message
    finally:
        other.kill()  # SIGKILL: the kernel lets go of its lock
        other.wait()
    lease = take_lease(out)  # at once: nothing to wait for
    assert Holder.from_json((tmp_path / "out" / LEASE_FILE).read_text()).pid != other.pid
    with pytest.raises(OutputBusy):
        take_lease(out)  # one holder in this process too
    lease.release()
    take_lease(out).release()


def test_an_s3_output_has_one_writer_and_a_killed_holders_lease_expires(bucket):
    out = Location(f"{bucket}/data")
    lease = take_lease(out, ttl=60)
    with pytest.raises(OutputBusy, match=r"is being written by another run \(host .*, pid \d+, since .*expires 60 s after"):
        take_lease(out)
    lease.release()  # deletes the object
    assert not out.exists(LEASE_FILE)

    # a holder on another machine that stopped renewing (killed): refused until its lifetime has passed
    stale = Holder("elsewhere", 12345, "2026-12-07 10:00:00 UTC", boot="another-machine", ttl=2.0)
    out.write_text(stale.to_json(), LEASE_FILE)
    with pytest.raises(OutputBusy, match="host elsewhere, pid 12345"):
        take_lease(out)
    time.sleep(3.5)  # the server's clock counts whole seconds
    taken = take_lease(out)
    assert json.loads(out.read_text(LEASE_FILE))["host"] != "elsewhere"
    taken.release()


def test_an_s3_lease_of_a_process_gone_from_this_machine_is_taken_at_once(bucket):
    out = Location(f"{bucket}/data")
    other = holder_process(out.uri, ttl=600)
    other.kill()
    other.wait()
    lease = take_lease(out)  # its 600 s are not waited for: it ran here and is gone
    lease.release()


def test_an_s3_holder_that_cannot_renew_in_time_loses_its_lease(bucket):
    out = Location(f"{bucket}/data")
    first = take_lease(out, ttl=2.0)
    first._stop.set()  # as a driver stalled past its lease's lifetime would be
    first._thread.join()
    time.sleep(3.5)
    second = take_lease(out)
    first._stop.clear()
    first._renew_once()
    with pytest.raises(OutputBusy, match="lost its hold"):
        first.check()
    second.release()
    assert not out.exists(LEASE_FILE)


def test_a_local_lease_leaves_no_folder_it_made_for_nothing(tmp_path):
    """A run refused after taking its lease (a node that cannot see the folder) must leave nothing behind; a run
    that wrote something keeps the folder, and the lease file, empty, beside it."""
    out = Location(str(tmp_path / "new" / "out"))
    take_lease(out).release()
    assert list(tmp_path.iterdir()) == []
    lease = take_lease(out)
    (tmp_path / "new" / "out" / "dataset.json").write_text("{}")
    lease.release()
    assert sorted(p.name for p in (tmp_path / "new" / "out").iterdir()) == [LEASE_FILE, "dataset.json"]
    assert (tmp_path / "new" / "out" / LEASE_FILE).read_text() == ""  # no holder named once let go
