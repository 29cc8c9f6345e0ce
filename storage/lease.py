"""One writer per output: a run holds a lease on its output location (`OUT/_lease.json`) while it writes there.

Two runs on one output plan the same shards and each takes the other's files for its own; the lease makes the
second one stop before it writes anything, naming the first (host, pid, since when).

- **A local disk** (a shared file system included): an exclusive `flock` on the file, which the kernel (on NFS,
  the server) lets go of when the process holding it ends, however it ends: a killed run's rerun is never
  blocked. The file says who holds it, for the refusal's words. A lease that made the output folder and leaves
  nothing else in it (its run was refused after it, say by a node that cannot see the folder) removes both.
- **S3**: an object created only where none is (`If-None-Match: *`) and renewed every fifth of its lifetime by
  replacing only the version this run wrote (`If-Match: ETag`). One not renewed for its lifetime (`ttl`,
  `DEFAULT_TTL` seconds; the server's clock, its Last-Modified against the Date of a HEAD, so machines' clocks
  do not matter) is stale and taken over by one conditional replace; so is one whose holder ran on this machine
  and is gone. A killed run's rerun is blocked for at most `ttl`. A holder that could not renew in time and
  finds its lease taken over has lost it (`Lease.lost`): its run stops.
- Other stores (gs://, hdfs://) have no conditional write flowshard can use: one writer is not enforced there.

Dry runs and readers take no lease and are never blocked.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass, field

from .location import Location, OutputFault, StorageError, redact

LEASE_FILE = "_lease.json"
DEFAULT_TTL = 60.0  # seconds an S3 lease outlives its last renewal (a killed run's rerun waits at most this long)
RENEWALS_PER_TTL = 5


class OutputBusy(StorageError):
    """Another run holds the output; str(error) names it and what to do."""


@dataclass(frozen=True)
class Holder:
    """Who holds a lease: the run's machine and process, and since when."""

    host: str
    pid: int
    since: str  # UTC, as a user reads it
    boot: str = ""  # the machine's boot id: the same host name on another machine (or boot) is another process
    ttl: float = DEFAULT_TTL  # how long the holder's lease outlives its last renewal
    started: float = field(default_factory=time.time)

    @classmethod
    def this_process(cls, ttl: float = DEFAULT_TTL) -> Holder:
        return cls(socket.gethostname(), os.getpid(), time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), _boot_id(), ttl)

    @classmethod
    def from_json(cls, text: str) -> Holder | None:
        """A holder read back; None for an empty or unreadable file (a holder that had not written it yet)."""
        try:
            raw = json.loads(text)
            return cls(**{k: raw[k] for k in ("host", "pid", "since", "boot", "ttl", "started") if k in raw})
        except (ValueError, TypeError, KeyError):
            return None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    def gone(self) -> bool:
        """Whether this holder ran on this machine (since its last boot) and its process has ended."""
        if not self.boot or self.boot != _boot_id() or self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        return False

    def words(self) -> str:
        return f"host {self.host}, pid {self.pid}, since {self.since}"


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


class Lease:
    """A held lease; `release()` (or leaving `take_output`'s block) lets it go. `check()` raises where it was lost."""

    def __init__(self, where: str):
        self.where = where
        self.lost = threading.Event()

    def check(self) -> None:
        """Raise OutputBusy where another run took the lease over (this one could not renew it in time)."""
        if self.lost.is_set():
            raise OutputBusy(
                f"this run lost its hold on {redact(self.where)}: it could not renew its lease in time and another run took "
                "the output over; this run stops (its finished shards are kept), the other goes on"
            )

    def release(self) -> None:
        pass


class _LocalLease(Lease):
    def __init__(self, where: str, fd: int, path: str, made: list[str]):
        super().__init__(where)
        self.fd, self.path, self.made = fd, path, made

    def release(self) -> None:
        if self.fd < 0:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)  # no holder named
            if self.made and os.listdir(os.path.dirname(self.path)) == [LEASE_FILE]:  # still holding it: see _take_local
                os.unlink(self.path)
                for folder in reversed(self.made):
                    os.rmdir(folder)
        os.close(self.fd)  # lets go of the lock
        self.fd = -1


def _take_local(out: Location, holder: Holder) -> Lease:
    import fcntl

    from .location import write_fault

    path, made = out.path(LEASE_FILE), []
    folder = out.path()
    while not os.path.isdir(folder):  # the folders this lease makes, outermost first
        made.insert(0, folder)
        folder = os.path.dirname(folder)
    while True:
        try:
            os.makedirs(out.path(), exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise write_fault(exc, out.uri_of(LEASE_FILE)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            current = Holder.from_json(os.pread(fd, 1 << 16, 0).decode(errors="replace"))
            os.close(fd)
            raise _busy(out, current, "it lets go when that run's process ends") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # locked a file its last holder removed on letting go: lock the one at the path now
    os.ftruncate(fd, 0)
    os.pwrite(fd, holder.to_json().encode(), 0)
    return _LocalLease(out.uri, fd, path, made)


class _S3Lease(Lease):
    def __init__(self, where: str, client, bucket: str, key: str, etag: str, holder: Holder):
        super().__init__(where)
        self.client, self.bucket, self.key, self.etag, self.holder = client, bucket, key, etag, holder
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="flowshard-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        """Replace the lease object (only the version this run wrote) every fifth of its lifetime."""
        while not self._stop.wait(self.holder.ttl / RENEWALS_PER_TTL) and self._renew_once():
            pass

    def _renew_once(self) -> bool:
        """One renewal; False once the lease is lost (another run replaced it)."""
        try:
            self.etag = _put(self.client, self.bucket, self.key, self.holder, IfMatch=self.etag)
        except _Refused:
            self.lost.set()
            return False
        except Exception:  # a store that did not answer: try again at the next renewal, while time is left
            pass
        return True

    def release(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=30)
        if not self.lost.is_set():
            with contextlib.suppress(Exception):
                self.client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=self.etag)


class _Refused(Exception):
    """A conditional write the store refused: the object is not as the condition said."""


def _put(client, bucket: str, key: str, holder: Holder, **condition) -> str:
    import botocore.exceptions

    try:
        body = holder.to_json().encode()
        return client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json", **condition)["ETag"]
    except botocore.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "404"):
            raise _Refused() from None
        raise


def _take_s3(out: Location, holder: Holder) -> Lease:
    import boto3
    import botocore.exceptions

    from .multipart import client_options

    bucket, _, key = out.path(LEASE_FILE).partition("/")
    client = boto3.client("s3", **{"endpoint_url": os.environ.get("AWS_ENDPOINT_URL") or None, **client_options(out.uri)})
    try:
        try:
            return _S3Lease(out.uri, client, bucket, key, _put(client, bucket, key, holder, IfNoneMatch="*"), holder)
        except _Refused:
            pass
        for _ in range(3):  # the holder may let go or renew between our reads: look again
            try:
                head = client.head_object(Bucket=bucket, Key=key)
                current = Holder.from_json(client.get_object(Bucket=bucket, Key=key, IfMatch=head["ETag"])["Body"].read().decode())
            except botocore.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "PreconditionFailed"):
                    with contextlib.suppress(_Refused):
                        return _S3Lease(out.uri, client, bucket, key, _put(client, bucket, key, holder, IfNoneMatch="*"), holder)
                    continue
                raise
            age = _server_age(head)
            ttl = current.ttl if current else DEFAULT_TTL
            if age <= ttl and not (current and current.gone()):
                raise _busy(out, current, f"a killed run's hold expires {ttl:.0f} s after its last renewal ({age:.0f} s ago)")
            try:  # stale: take it over, unless another run just did
                return _S3Lease(out.uri, client, bucket, key, _put(client, bucket, key, holder, IfMatch=head["ETag"]), holder)
            except _Refused:
                continue
        raise _busy(out, None, "several runs are taking it at once")
    except botocore.exceptions.BotoCoreError as exc:
        raise OutputFault(f"cannot take the lease {redact(out.uri_of(LEASE_FILE))} ({str(exc)[:200]})") from None
    except botocore.exceptions.ClientError as exc:
        from .location import write_fault

        raise write_fault(OSError(str(exc)), out.uri_of(LEASE_FILE)) from None


def _server_age(head: dict) -> float:
    """Seconds since the object was last written, by the server's clock (its Date header against Last-Modified)."""
    from email.utils import parsedate_to_datetime

    date = head.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    now = parsedate_to_datetime(date) if date else None
    modified = head["LastModified"]
    return (now - modified).total_seconds() if now else time.time() - modified.timestamp()


def _busy(out: Location, holder: Holder | None, expiry: str) -> OutputBusy:
    who = f"another run ({holder.words()})" if holder else "another run"
    return OutputBusy(
        f"{redact(out.uri)} is being written by {who}; wait for it to finish, or stop it ({expiry}), then run this command "
        "again: it goes on from the shards that run finished"
    )


def take_lease(out: Location, ttl: float = DEFAULT_TTL) -> Lease:
    """Hold `out` for this process's run (see the module docstring).

    Raises:
        OutputBusy: another run holds it; the message names that run (host, pid, since when).
        OutputFault: the lease could not be written (permission, no space, a bucket gone).
    """
    holder = Holder.this_process(ttl)
    if out.is_local:
        return _take_local(out, holder)
    if out.fs.type_name == "s3":
        return _take_s3(out, holder)
    return Lease(out.uri)  # no conditional writes to build one on (see the module docstring)


@contextlib.contextmanager
def holding(out: Location, ttl: float = DEFAULT_TTL):
    """`take_lease` for the duration of the block, released after it (however it ends)."""
    lease = take_lease(out, ttl)
    try:
        yield lease
    finally:
        lease.release()
