"""Helpers shared by the dataset adapters: annotation errors, line reading, finding video files."""

from __future__ import annotations

import codecs
import csv
import io
import os
import posixpath
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import unquote

from schemas.manifest import VideoRecord, name_problem, safe_key
from storage import Location, basename, is_uri, relative_to

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ogv")


class AnnotationError(ValueError):
    """An annotation file is missing or malformed; the message names the file (and line) and the fix."""


@dataclass
class DatasetManifest:
    """What an adapter returns: the rows, the ordered class names, the dataset name."""

    records: list[VideoRecord]
    classes: list[str]
    dataset: str
    sources: list[str] = field(default_factory=list)  # annotation files read, for the summary

    @property
    def missing(self) -> list[VideoRecord]:
        """The listed videos whose file was not found."""
        return [r for r in self.records if not r.exists]


def read_lines(path: str) -> list[tuple[int, str]]:
    """Non-blank lines of a text annotation file (a local path or URI) as (1-based line number, stripped text).

    Handles CRLF endings, a UTF-8 byte-order mark and trailing whitespace (all present in the official files).
    Lines end at '\\n' only, as an editor numbers them: other line breaks Python knows (U+2028, U+0085, ...) stay
    inside a line, where the name check refuses them with the right line number (at a line's ends they are
    stripped with the other whitespace).
    """
    return [(n, line.strip()) for n, line in enumerate(read_annotation(path).split("\n"), start=1) if line.strip()]


def read_annotation(path: str, what: str = "annotation file", flag: str = "--annotations") -> str:
    """The text of an annotation file (a local path or URI), UTF-8 with or without a byte-order mark (the official
    UCF101, HMDB51 and Kinetics files are ASCII); a missing file or another encoding is an AnnotationError."""
    source = Location(path)
    if not source.is_file():
        raise AnnotationError(f"{what} {path} does not exist; check {flag}")
    return decode_text(source.read_bytes(), path)


def decode_text(data: bytes, path: str) -> str:
    """`data` decoded as UTF-8 (a leading byte-order mark dropped); else an AnnotationError naming the line and the
    byte offset of the first byte that is not UTF-8, with the fix."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        offset = exc.start + (len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0)
        line = data.count(b"\n", 0, offset) + 1
        utf16 = data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
        what, source = (" (it starts with a UTF-16 byte-order mark)", "utf-16") if utf16 else ("", "latin1")
        raise AnnotationError(
            f"{path}:{line}: byte 0x{data[offset]:02x} at offset {offset} is not UTF-8{what}; "
            f"re-save the file as UTF-8 (e.g. iconv -f {source} -t utf-8 old > new)"
        ) from None


def csv_rows(text: str, path: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each CSV row of `text` (the file `path`), the line being where the row ends.

    Raises:
        AnnotationError: a row the csv module cannot read (a field over its size limit), naming the line.
    """
    reader = csv.reader(io.StringIO(text, newline=""))
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise AnnotationError(f"{path}:{reader.line_num}: {exc}; fix the line") from None
        yield reader.line_num, row


def checked_name(name: str, what: str, where: str, fix: str = "fix the line") -> str:
    """`name`, checked to be a class name or video id (`schemas.manifest.name_problem`).

    Raises:
        AnnotationError: it is not one; naming `where` (file:line), the name, its character and `fix`.
    """
    problem = name_problem(name)
    if problem:
        raise AnnotationError(f"{where}: {what} {name!r} {problem}; names are data, never paths: {fix}")
    return name


def video_relpath(path: str, videos: str, where: str) -> str:
    """The '/'-separated path below `videos` of the video an annotation line (`where`, file:line) names: relative to
    `videos` ('\\' read as '/', as lists edited on Windows write it), or absolute (a local path or URI) inside it.

    Raises:
        AnnotationError: the path leaves `videos` (an absolute path elsewhere, or a '..' that climbs out, written
            plainly or percent-encoded as URIs decode it), or a part of it is no file name.
    """
    rel = path.replace("\\", "/")
    if is_uri(path) or os.path.isabs(rel):
        inside = relative_to(path, videos)
        if inside is None:
            raise AnnotationError(
                f"{where}: {path!r} is not under --videos {videos}; list paths relative to --videos, or pass as --videos "
                "a folder that holds every video"
            )
        rel = inside
    for form in (rel, unquote(rel)):  # pyarrow decodes %2e%2e in file:// and hdfs:// URIs
        normal = posixpath.normpath(form)
        if normal == ".." or normal.startswith("../"):
            raise AnnotationError(f"{where}: {path!r} climbs out of --videos {videos} with '..'; list paths below --videos")
    rel = posixpath.normpath(rel)
    if rel == ".":
        raise AnnotationError(f"{where}: {path!r} names the --videos folder itself, not a video file; fix the line")
    for part in rel.split("/"):
        checked_name(part, "path part", where)
    return rel


def require_dir(path: str, what: str, flag: str) -> Location:
    """The folder `path` (a local path or URI); raises AnnotationError naming `flag` when it is not one."""
    folder = Location(path)
    if not folder.is_dir():
        raise AnnotationError(f"{what} {path} is not a directory; pass the right folder with {flag}")
    return folder


def stem(path: str) -> str:
    """The file name without its last extension."""
    name = basename(path)
    return name.rsplit(".", 1)[0] if "." in name[1:] else name


def is_video(name: str) -> bool:
    """Whether a file name has one of the video extensions the adapters list."""
    return name.lower().endswith(VIDEO_EXTENSIONS)


class VideoIndex:
    """Every video file under a root (a local path or URI), found by one listing and looked up by file name.

    Annotation files give paths relative to a layout that differs between downloads (class folders or flat,
    split folders or not); looking files up by name copes with all of them.
    """

    def __init__(self, root: str):
        self.root = Location(root)
        self._files: set[str] = set()
        self._by_name: dict[str, list[str]] = defaultdict(list)
        for rel in self.root.walk():
            self._files.add(rel)  # an exact path is taken whatever its extension, as the annotation names it
            if is_video(rel):
                self._by_name[rel.rsplit("/", 1)[-1]].append(rel)

    def find(self, relpath: str, prefer_dir: str | None = None) -> str | None:
        """The file at root/relpath, else the file with the same name anywhere (preferring `prefer_dir`);
        as an absolute path or URI."""
        rel = relpath.replace("\\", "/").removeprefix("./")
        if rel in self._files:
            return self.root.uri_of(rel)
        candidates = self._by_name.get(rel.rsplit("/", 1)[-1], [])
        if prefer_dir is not None:
            preferred = [c for c in candidates if c.rsplit("/", 2)[-2:-1] == [prefer_dir]]
            candidates = preferred or candidates
        return self.root.uri_of(candidates[0]) if candidates else None

    def expected(self, relpath: str) -> str:
        """Where a missing file was expected (an absolute path or URI)."""
        return self.root.uri_of(relpath.replace("\\", "/"))


def resolve(index: VideoIndex, relpath: str, prefer_dir: str | None = None) -> tuple[str, bool]:
    """(absolute path or URI, exists): the found file, or where it was expected when it is missing."""
    found = index.find(relpath, prefer_dir)
    return (found, True) if found is not None else (index.expected(relpath), False)


def unique_ids(paths: list[str], root: str) -> list[str]:
    """Video ids from file stems; where two files share a stem, both use their path relative to `root` instead."""
    stems = [safe_key(stem(p)) for p in paths]
    counts: dict[str, int] = defaultdict(int)
    for s in stems:
        counts[s] += 1
    prefix = Location(root).uri_of().rstrip("/") + "/"

    def qualified(p: str) -> str:
        rel = p[len(prefix) :] if p.startswith(prefix) else p
        return safe_key(rel[: len(rel) - len(basename(rel))] + stem(rel))

    return [s if counts[s] == 1 else qualified(p) for s, p in zip(stems, paths)]
