"""Helpers shared by the dataset adapters: annotation errors, line reading, finding video files."""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from schemas.manifest import VideoRecord, safe_key

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
        return [r for r in self.records if not r.exists]


def read_lines(path: Path) -> list[tuple[int, str]]:
    """Non-blank lines of a text annotation file as (1-based line number, stripped text).

    Handles CRLF endings, a UTF-8 byte-order mark and trailing whitespace (all present in the official files).
    """
    if not path.is_file():
        raise AnnotationError(f"annotation file {path} does not exist; check --annotations")
    text = path.read_text(encoding="utf-8-sig", errors="strict")
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


def require_dir(path: Path, what: str, flag: str) -> Path:
    if not path.is_dir():
        raise AnnotationError(f"{what} {path} is not a directory; pass the right folder with {flag}")
    return path


class VideoIndex:
    """Every video file under a root, found by one directory walk and looked up by file name.

    Annotation files give paths relative to a layout that differs between downloads (class folders or flat,
    split folders or not); looking files up by name copes with all of them.
    """

    def __init__(self, root: Path):
        self.root = root
        self._by_name: dict[str, list[str]] = defaultdict(list)
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames.sort()
            for name in sorted(filenames):
                if name.lower().endswith(VIDEO_EXTENSIONS):
                    self._by_name[name].append(os.path.join(dirpath, name))

    def find(self, relpath: str, prefer_dir: str | None = None) -> str | None:
        """The file at root/relpath, else the file with the same name anywhere (preferring `prefer_dir`)."""
        exact = os.path.join(self.root, relpath)
        if os.path.isfile(exact):
            return os.path.abspath(exact)
        candidates = self._by_name.get(os.path.basename(relpath), [])
        if prefer_dir is not None:
            preferred = [c for c in candidates if os.path.basename(os.path.dirname(c)) == prefer_dir]
            candidates = preferred or candidates
        return os.path.abspath(candidates[0]) if candidates else None


def resolve(index: VideoIndex, relpath: str, prefer_dir: str | None = None) -> tuple[str, bool]:
    """(absolute path, exists): the found file, or where it was expected when it is missing."""
    found = index.find(relpath, prefer_dir)
    if found is not None:
        return found, True
    return os.path.abspath(os.path.join(index.root, relpath)), False


def unique_ids(paths: list[Path], root: Path) -> list[str]:
    """Video ids from file stems; where two files share a stem, both use their path relative to `root` instead."""
    stems = [safe_key(p.stem) for p in paths]
    counts: dict[str, int] = defaultdict(int)
    for s in stems:
        counts[s] += 1

    def qualified(p: Path) -> str:
        try:
            rel = p.relative_to(root)
        except ValueError:
            rel = p
        return safe_key(str(rel.with_suffix("")))

    return [s if counts[s] == 1 else qualified(p) for s, p in zip(stems, paths)]
