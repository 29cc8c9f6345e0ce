"""The output location of a preprocessing run, written through `pyarrow.fs`.

A local path today; because every write goes through a pyarrow FileSystem (temporary name, then move),
an object-store URI such as `s3://bucket/prefix` uses the same code: the final name appears only once its
content is complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid

import pyarrow.fs as pafs

TMP_MARK = ".tmp-"


class HashingWriter:
    """A write-only stream that passes data through and keeps its sha256 and byte count."""

    def __init__(self, stream):
        self._stream, self._hash, self.bytes = stream, hashlib.sha256(), 0

    def write(self, data) -> int:
        self._hash.update(data)
        self.bytes += len(data)
        self._stream.write(data)
        return len(data)

    def flush(self) -> None:
        pass

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


class OutputDir:
    """Files under one root; every write is atomic (a temporary name, then a move into place)."""

    def __init__(self, uri: str):
        if "://" in uri:
            self.fs, self.root = pafs.FileSystem.from_uri(uri)
        else:
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(uri)
        self.uri = uri

    def path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def makedirs(self, *parts: str) -> None:
        self.fs.create_dir(self.path(*parts), recursive=True)

    @contextlib.contextmanager
    def atomic_write(self, *parts: str):
        """Yield a stream; on success its content appears under the name, on failure nothing does."""
        final = self.path(*parts)
        self.fs.create_dir(final.rsplit("/", 1)[0], recursive=True)
        tmp = f"{final}{TMP_MARK}{uuid.uuid4().hex[:12]}"
        stream = self.fs.open_output_stream(tmp)
        try:
            yield stream
            stream.close()
            self.fs.move(tmp, final)
        except BaseException:
            if not stream.closed:
                stream.close()
            with contextlib.suppress(OSError):
                self.fs.delete_file(tmp)
            raise

    def write_bytes(self, data: bytes, *parts: str) -> None:
        with self.atomic_write(*parts) as stream:
            stream.write(data)

    def read_bytes(self, *parts: str) -> bytes:
        with self.fs.open_input_stream(self.path(*parts)) as stream:
            return stream.read()

    def list(self, *parts: str, suffix: str = "") -> list[str]:
        """Names (not paths) of the files directly in a folder, sorted; [] when it does not exist."""
        selector = pafs.FileSelector(self.path(*parts), allow_not_found=True)
        names = [info.base_name for info in self.fs.get_file_info(selector) if info.type == pafs.FileType.File]
        return sorted(n for n in names if n.endswith(suffix))

    def delete_dir(self, *parts: str) -> None:
        if self.exists(*parts):
            self.fs.delete_dir(self.path(*parts))

    def delete_file(self, *parts: str) -> None:
        if self.exists(*parts):
            self.fs.delete_file(self.path(*parts))

    def remove_temporaries(self, *parts: str) -> int:
        """Delete leftovers of interrupted writes in a folder; returns how many."""
        stale = [n for n in self.list(*parts) if TMP_MARK in n]
        for name in stale:
            self.delete_file(*parts, name)
        return len(stale)
