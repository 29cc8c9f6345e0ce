"""Helpers shared by the dataset adapters: annotation errors, line reading, finding video files."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from schemas.manifest import VideoRecord, safe_key
from storage import Location, basename

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
    """
    return [(n, line.strip()) for n, line in enumerate(read_annotation(path).splitlines(), start=1) if line.strip()]


def read_annotation(path: str, what: str = "annotation file", flag: str = "--annotations") -> str:
    """The text of an annotation file (a local path or URI); a missing file is an AnnotationError."""
    source = Location(path)
    if not source.is_file():
        raise AnnotationError(f"{what} {path} does not exist; check {flag}")
    return source.read_bytes().decode("utf-8-sig")


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
