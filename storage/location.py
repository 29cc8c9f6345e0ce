"""`Location`: a file or folder on a local disk or under an object-store URI, through `pyarrow.fs`.

Writes are atomic everywhere: content goes to a temporary name beside the final one and is moved into
place only once complete. On object storage that matters twice over: an upload becomes visible only when
its stream is closed, and closing a stream after a failure *completes* the upload with whatever was
written. So a failed write is closed under its temporary name and deleted, never moved; a writer killed
outright leaves an incomplete multipart upload, invisible and aborted by `remove_temporaries` on resume.
The move is a server-side copy on object stores (at most 5 GB per object on S3).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import uuid
from collections.abc import Callable, Iterator
from typing import TypeVar
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.fs as pafs

TMP_MARK = ".tmp-"  # in the name of every temporary file: `<final name>.tmp-<random>`
READ_BUFFER = 8 << 20  # bytes per read from object storage: few, large ranged GETs
_OBJECT_STORES = ("s3", "gcs")

T = TypeVar("T")


class StorageError(RuntimeError):
    """A location cannot be used; str(error) is one sentence naming it and the fix."""


class OutputFault(StorageError):
    """A write failed for a reason of the output itself (no space left, over quota, read-only, permission denied,
    the bucket gone), not of what was being written: a run stops at the first one rather than blame its videos."""


# Credentials in a URI: the user-info part (`s3://KEY:SECRET@bucket/...`, as pyarrow's FileSystem.from_uri takes
# them) and query options that hold secrets; other options (endpoint_override, scheme, region) are not secret.
_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/@\s?#'\"]*@", re.IGNORECASE)
_SECRET_OPTION = re.compile(r"([?&][a-z_]*(?:key|secret|token|password|credential)[a-z_]*=)[^&\s'\"]*", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` (a URI, or any line naming URIs) with the credentials in its URIs replaced by ***:
    `s3://***@bucket/out?endpoint_override=host:9000`. What flowshard prints or stores passes through here."""
    return _SECRET_OPTION.sub(r"\1***", _USERINFO.sub(r"\1***@", text))


def redacted(value: T) -> T:
    """A JSON-like value (dicts, lists, tuples, strings) with every string redacted, for stored configurations."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redacted(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redacted(v) for v in value)
    return value


def is_uri(path: str | os.PathLike) -> bool:
    """Whether `path` is a URI (`scheme://...`) rather than a local path."""
    return "://" in os.fspath(path)


def _below(base: str, parts: tuple[str, ...]) -> tuple[str, ...]:
    """`parts` without empty ones and outer slashes, checked to stay below `base`: path parts may come from data
    (class names, video ids, shard names from an index), which must never climb out of their folder.

    Raises:
        StorageError: a part has a '..' (also percent-encoded, as file:// and hdfs:// URIs are decoded) or a NUL.
    """
    parts = tuple(p.strip("/") for p in parts if p)
    for part in parts:
        if ".." in part.split("/") or ".." in unquote(part).split("/") or "\x00" in part:
            raise StorageError(f"{part!r} would leave {redact(base)} or is no path; a name inside a location cannot hold '..' or NUL")
    return parts


def join(base: str | os.PathLike, *parts: str) -> str:
    """`base/part/...` for a local path or a URI; the parts stay below `base` (see `_below`)."""
    base = os.fspath(base)
    parts = _below(base, parts)
    if not parts:
        return base
    if is_uri(base):
        base, mark, options = base.partition("?")  # query options (endpoint_override=...) stay at the end
        return "/".join([base.rstrip("/"), *parts]) + mark + options
    return os.path.join(base, *parts)


def parent(path: str) -> str:
    """The folder holding `path` (a local path or a URI)."""
    if is_uri(path):
        path, mark, options = path.partition("?")
        scheme, rest = path.split("://", 1)
        head = rest.rstrip("/").rsplit("/", 1)[0] if "/" in rest.rstrip("/") else rest
        return f"{scheme}://{head}{mark}{options}"
    return os.path.dirname(os.path.abspath(path))


def basename(path: str) -> str:
    """The last part of `path` (a local path or a URI)."""
    return path.partition("?")[0].rstrip("/").rsplit("/", 1)[-1] if is_uri(path) else os.path.basename(path.rstrip(os.sep))


def _uri_parts(uri: str) -> tuple[str, str]:
    """(scheme, path) of a URI without its credentials and query options: s3://KEY:S@b/x?o=1 -> ('s3', 'b/x')."""
    scheme, rest = uri.split("://", 1)
    rest = rest.partition("?")[0]
    head, slash, tail = rest.partition("/")
    scheme = scheme.lower()
    return "gs" if scheme == "gcs" else scheme, head.rpartition("@")[2] + slash + tail


def relative_to(path: str, folder: str) -> str | None:
    """`path` relative to `folder` ('/'-separated), or None when it is elsewhere (or the folder itself). A URI is
    compared as written, without its credentials and options: a '..' in it is refused rather than resolved (it
    could cross from one bucket into another)."""
    if is_uri(path) != is_uri(folder):
        return None
    if is_uri(path):
        (scheme, target), (root_scheme, root) = _uri_parts(path), _uri_parts(folder)
        if scheme != root_scheme or ".." in unquote(target).split("/"):
            return None
        root = root.rstrip("/")
    else:
        target, root = os.path.abspath(path), os.path.abspath(folder).rstrip("/")
    if not target.startswith(root + "/"):
        return None
    return target[len(root) + 1 :]


def explain(exc: OSError, uri: str) -> str:
    """One sentence for a failed storage call: unreachable store, missing bucket, refused credentials, or the
    store's own first line."""
    text, uri = redact(str(exc)), redact(uri)
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if "NETWORK_CONNECTION" in text or "curlCode" in text:
        where = f"at {endpoint} (AWS_ENDPOINT_URL)" if endpoint else "(no AWS_ENDPOINT_URL set: the AWS default)"
        return f"cannot reach the object store {where} for {uri}; check the endpoint address and that the store is running"
    if "NO_SUCH_BUCKET" in text or "bucket does not exist" in text.lower():
        return f"the bucket of {uri} does not exist; create it or fix the URI"
    if any(code in text for code in ("ACCESS_DENIED", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH", "EXPIRED_TOKEN")):
        return (
            f"access to {uri} was refused; check the credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "or AWS_PROFILE) and the bucket's permissions"
        )
    if isinstance(exc, FileNotFoundError):
        return f"{uri} does not exist"
    if isinstance(exc, PermissionError):
        return f"permission denied for {uri}; check the folder's owner and mode"
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return f"cannot access {uri} ({first[:300]})"


# Why a write failed, by errno, in words a user can act on (errno.ENOSPC, EDQUOT, EROFS, EACCES, EPERM, EFBIG).
_WRITE_FAULTS = {
    28: "no space is left on the device of {uri}",
    122: "the disk quota of {uri} is exceeded",
    30: "{uri} is on a read-only file system",
    13: "permission denied writing {uri}; check the folder's owner and mode",
    1: "permission denied writing {uri}; check the folder's owner and mode",
    27: "{uri} is larger than its file system allows",
}
# An object store that is full says so in its own words (MinIO, Ceph, a provider's quota).
_STORE_FULL = re.compile(r"StorageFull|minimum free drive threshold|QuotaExceeded|InsufficientStorage|quota", re.IGNORECASE)


def write_fault(exc: OSError, uri: str) -> OutputFault:
    """The OutputFault of a failed write to `uri`: its cause in words (no space, quota, read-only, permission, a
    full store, the bucket gone, the store unreachable, or the store's own first line)."""
    uri = redact(uri)
    errno = getattr(exc, "errno", None)
    if errno in _WRITE_FAULTS:
        return OutputFault(_WRITE_FAULTS[errno].format(uri=uri))
    if _STORE_FULL.search(str(exc)):
        return OutputFault(f"the object store of {uri} is full or over its quota ({redact(str(exc)).strip().splitlines()[0][:200]})")
    return OutputFault(explain(exc, uri).replace("cannot access", "cannot write", 1))


def _resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it); one filesystem per bucket, credentials, options and endpoint in a process, as
    creating an S3 one costs a request (it looks up the bucket's region)."""
    scheme, rest = uri.split("://", 1)
    rest, _, query = rest.partition("?")
    if scheme not in ("s3", "gs", "gcs"):
        fs, path = pafs.FileSystem.from_uri(uri)
        return fs, path.rstrip("/") or path
    userinfo = ""
    if "@" in rest.split("/", 1)[0]:  # s3://KEY:SECRET@bucket/...: the credentials are the filesystem's, not the path's
        userinfo, _, rest = rest.partition("@")
        userinfo += "@"
    bucket = rest.split("/", 1)[0]
    fs = _object_store(f"{scheme}://{userinfo}{bucket}" + (f"?{query}" if query else ""), os.environ.get("AWS_ENDPOINT_URL"))
    return fs, rest.rstrip("/")


@functools.lru_cache(maxsize=64)
def _object_store(bucket_uri: str, endpoint: str | None) -> pafs.FileSystem:  # endpoint: part of the cache key
    return pafs.FileSystem.from_uri(bucket_uri)[0]


class HashingWriter:
    """A write-only stream that passes data through and keeps its sha256 and byte count."""

    def __init__(self, stream):
        self._stream, self._hash, self.bytes = stream, hashlib.sha256(), 0

    def write(self, data) -> int:
        """Pass the bytes on, hashing and counting them."""
        self._hash.update(data)
        self.bytes += len(data)
        self._stream.write(data)
        return len(data)

    def flush(self) -> None:
        """Nothing to flush: the stream underneath flushes on close."""
        pass

    @property
    def sha256(self) -> str:
        """Hex digest of everything written so far."""
        return self._hash.hexdigest()


class Location:
    """A file or folder given by a local path or a URI. Methods take path parts below it (none: itself).

    Raises (every method):
        StorageError: the store cannot be reached, refuses the credentials, or the bucket does not exist.
    """

    def __init__(self, uri: str | os.PathLike):
        self.uri = uri = os.fspath(uri)
        if is_uri(uri):
            try:
                self.fs, self.root = _resolve(uri)
            except OSError as exc:
                raise StorageError(explain(exc, uri)) from None
            except (pa.ArrowInvalid, ValueError) as exc:
                raise StorageError(
                    redact(f"{uri} is not a usable location ({str(exc).splitlines()[0]}); use a local path or s3://, gs://, hdfs://")
                ) from None
        else:
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(uri)
        self.is_local = isinstance(self.fs, pafs.LocalFileSystem)

    def __repr__(self) -> str:
        return f"Location({redact(self.uri)!r})"

    def __reduce__(self):  # pickled (to Ray tasks, loader workers) as its URI; the filesystem is rebuilt there
        return (Location, (self.uri,))

    # --- names ------------------------------------------------------------------------------------------

    def path(self, *parts: str) -> str:
        """The path inside the filesystem (for a local location, the OS path); `parts` stay below this location."""
        parts = _below(self.uri, parts)
        return "/".join([self.root, *parts]) if parts else self.root

    def uri_of(self, *parts: str) -> str:
        """The full name of a path below this location, credentials included (to open it; `redact` it to show it)."""
        return join(self.uri, *parts) if is_uri(self.uri) else self.path(*parts)

    def child(self, *parts: str) -> Location:
        """A Location for a path below this one."""
        return Location(self.uri_of(*parts))

    def _call(self, fn: Callable[[], T], *parts: str, writing: bool = False) -> T:
        """`fn()`, its OSError as one sentence: a StorageError, an OutputFault where it was `writing`."""
        try:
            return fn()
        except OSError as exc:
            if writing:
                raise write_fault(exc, self.uri_of(*parts)) from None
            raise StorageError(explain(exc, self.uri_of(*parts))) from None

    # --- reading ----------------------------------------------------------------------------------------

    def info(self, *parts: str) -> pafs.FileInfo:
        """pyarrow's FileInfo (type, size) of the path; FileType.NotFound when it does not exist."""
        return self._call(lambda: self.fs.get_file_info(self.path(*parts)), *parts)

    def exists(self, *parts: str) -> bool:
        """Whether the path exists (file or folder)."""
        return self.info(*parts).type != pafs.FileType.NotFound

    def is_file(self, *parts: str) -> bool:
        """Whether the path is a file (an object)."""
        return self.info(*parts).type == pafs.FileType.File

    def is_dir(self, *parts: str) -> bool:
        """Whether the path is a folder (a prefix with objects below it, on object stores)."""
        return self.info(*parts).type == pafs.FileType.Directory

    def check(self) -> None:
        """Fail now, in one sentence, if the store is unreachable, refuses the credentials or lacks the bucket.

        (A missing bucket otherwise looks like a missing file to readers.)
        """
        if self.fs.type_name not in _OBJECT_STORES:
            return
        bucket = self.root.split("/", 1)[0]
        if self._call(lambda: self.fs.get_file_info(bucket)).type == pafs.FileType.NotFound:
            raise StorageError(f"bucket {bucket!r} of {redact(self.uri)} does not exist; create it or fix the URI")

    def read_bytes(self, *parts: str) -> bytes:
        """The whole file."""
        with self.open_input_stream(*parts) as stream:
            return self._call(stream.read, *parts)

    def read_text(self, *parts: str, encoding: str = "utf-8") -> str:
        """The whole file, decoded."""
        return self.read_bytes(*parts).decode(encoding)

    def open_input_file(self, *parts: str) -> pa.NativeFile:
        """A seekable file (ranged reads on object storage), e.g. for PyAV or Parquet."""
        return self._call(lambda: self.fs.open_input_file(self.path(*parts)), *parts)

    def open_input_stream(self, *parts: str, buffer_size: int = READ_BUFFER) -> pa.NativeFile:
        """A sequential stream read in `buffer_size` blocks, e.g. for a tar shard."""
        return self._call(lambda: self.fs.open_input_stream(self.path(*parts), buffer_size=buffer_size), *parts)

    def list(self, *parts: str, suffix: str = "") -> list[str]:
        """Names (not paths) of the files directly in a folder, sorted; [] when it does not exist."""
        selector = pafs.FileSelector(self.path(*parts), allow_not_found=True)
        infos = self._call(lambda: self.fs.get_file_info(selector), *parts)
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(suffix))

    def list_dirs(self, *parts: str) -> list[str]:
        """Names of the folders directly in a folder, sorted."""
        selector = pafs.FileSelector(self.path(*parts), allow_not_found=True)
        infos = self._call(lambda: self.fs.get_file_info(selector), *parts)
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)

    def walk(self, *parts: str) -> Iterator[str]:
        """Paths (relative, '/'-separated, sorted by folder) of every file below a folder, in one listing.

        Local folders follow symbolic links, as datasets are often linked into place.
        """
        top = self.path(*parts)
        if self.is_local:
            for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
                dirnames.sort()
                rel = os.path.relpath(dirpath, top)
                for name in sorted(filenames):
                    yield name if rel == "." else f"{rel.replace(os.sep, '/')}/{name}"
            return
        selector = pafs.FileSelector(top, recursive=True, allow_not_found=True)
        infos = self._call(lambda: self.fs.get_file_info(selector), *parts)
        yield from sorted(i.path[len(top) + 1 :] for i in infos if i.type == pafs.FileType.File)

    # --- writing ----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def atomic_write(self, *parts: str):
        """Yield a stream; on success its content appears under the name, on failure nothing does.

        Raises:
            OutputFault: a write to the stream, or creating, closing or moving it, failed (no space, ...).
        """
        final = self.path(*parts)
        if self.is_local:  # object stores have no folders to create (pyarrow would write marker objects)
            self._call(lambda: self.fs.create_dir(final.rsplit("/", 1)[0], recursive=True), *parts, writing=True)
        tmp = f"{final}{TMP_MARK}{uuid.uuid4().hex[:12]}"
        stream = self._call(lambda: self.fs.open_output_stream(tmp), *parts, writing=True)
        try:
            try:
                yield stream
            except OSError as exc:  # the stream's own writes (pyarrow's streams raise OSError)
                if isinstance(exc, StorageError):
                    raise
                raise write_fault(exc, self.uri_of(*parts)) from None
            self._call(stream.close, *parts, writing=True)
            self._call(lambda: self.fs.move(tmp, final), *parts, writing=True)
        except BaseException:
            with contextlib.suppress(OSError):
                if not stream.closed:
                    stream.close()  # completes the upload under the temporary name, deleted next
                self.fs.delete_file(tmp)
            raise

    def write_bytes(self, data: bytes, *parts: str) -> None:
        """Write a whole file atomically (see `atomic_write`)."""
        with self.atomic_write(*parts) as stream:
            stream.write(data)

    def write_text(self, text: str, *parts: str) -> None:
        """Write a whole text file atomically, UTF-8."""
        self.write_bytes(text.encode(), *parts)

    def delete_file(self, *parts: str) -> None:
        """Delete the file if it exists."""
        if self.exists(*parts):
            self._call(lambda: self.fs.delete_file(self.path(*parts)), *parts, writing=True)

    def delete_dir(self, *parts: str) -> None:
        """Delete the folder and everything below it, if it exists."""
        if self.exists(*parts):
            self._call(lambda: self.fs.delete_dir(self.path(*parts)), *parts, writing=True)

    def remove_temporaries(self, *parts: str) -> int:
        """Delete what interrupted writes left in a folder: temporary files and, on S3, incomplete multipart
        uploads of temporary names. Call it only while nothing writes there. Returns how many."""
        stale = [n for n in self.list(*parts) if TMP_MARK in n]
        for name in stale:
            self.delete_file(*parts, name)
        if self.fs.type_name == "s3":
            from .multipart import abort_incomplete_uploads, client_options

            bucket, _, key = self.path(*parts).partition("/")
            options = client_options(self.uri)
            stale += self._call(lambda: abort_incomplete_uploads(bucket, f"{key}/" if key else "", TMP_MARK, options), *parts)
        return len(stale)
