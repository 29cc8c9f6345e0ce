"""Reading samples out of shard tars by byte range: a whole sample, or its head and then only the members chosen.

Where things lie comes from the dataset, never from a scan: index.parquet gives each sample's range in its tar and
the length of its head (its cls, json and member table, `schemas.sample.MEMBERS`), and the member table gives
each frame's and flow's place inside the sample. So an example costs one read of the head and one read per run
of nearby chosen members (`coalesce`), each a positioned read on a local disk or a ranged GET on object storage;
on object storage several are kept in flight per loader worker (`ShardReader(in_flight=...)`) so that their
latencies overlap. Samples written before the member table existed (head 0) are read whole, one read each.

Every read is counted (`ReadStats`: bytes, requests) for the figures training prints.
"""

from __future__ import annotations

import io
import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas.dataset import DALI_INDEX_SUFFIX, INDEX_FILE, SHARDS_DIR, DatasetInfo, read_dataset_info
from schemas.sample import MEMBERS, SampleMeta, dali_index_of, decode_meta, member_suffixes, read_member_table, sample_ranges
from storage import Location, StorageError, basename, join, redact

from .tar_stream import BLOCK, TarError, header_fields, read_members

log = logging.getLogger(__name__)


def shard_urls(root: str, split: str, info: DatasetInfo | None = None) -> list[str]:
    """The shard files of `split` listed in the dataset's dataset.json (`info`, read here when not given; local paths
    or URIs, as `root`).

    Raises:
        ValueError: the dataset has no shards for this split (names the splits it has).
    """
    info = info or read_dataset_info(root)
    names = info.shards.get(split, [])
    if not names:
        raise ValueError(f"{root} has no {split!r} shards (it has: {', '.join(sorted(info.shards)) or 'none'})")
    return [join(root, SHARDS_DIR, n) for n in names]


@dataclass(frozen=True)
class SampleTable:
    """The samples of a split and where each lies: its shard's number in `urls`, its offset and size in the tar, and
    its head's length (0: no member table, read whole)."""

    urls: list[str]  # the split's shards (local paths or URIs)
    shard: np.ndarray  # (n,) int32
    offset: np.ndarray  # (n,) int64
    size: np.ndarray  # (n,) int64
    head: np.ndarray  # (n,) int64
    keys: list[str]

    def __len__(self) -> int:
        return len(self.offset)

    def ref(self, i: int) -> dict:
        """Sample `i`'s place: {"url", "offset", "size", "head"}, as the reading stages take it."""
        return {"url": self.urls[self.shard[i]], "offset": int(self.offset[i]), "size": int(self.size[i]), "head": int(self.head[i])}


def sample_table(root: str, split: str) -> SampleTable:
    """The samples of `split` of a preprocessed dataset, in index.parquet's order, with their byte ranges.

    A dataset built before flowshard kept the ranges has them read from its shards' DALI indexes (or, older still,
    their tar headers: a read of every shard), with a warning: re-running its `jobs.preprocess` command stores them.

    Raises:
        ValueError: the dataset has no shards for this split (names the splits it has), or its index.parquet does
            not list the samples dataset.json counts in them (an incomplete or changed dataset).
    """
    info = read_dataset_info(root)
    urls = shard_urls(root, split, info)
    number = {basename(url): i for i, url in enumerate(urls)}
    with Location(root).open_input_file(INDEX_FILE) as f:
        index = pq.read_table(f)
    index = index.filter(pc.and_(pc.equal(index["split"], split), pc.is_in(index["shard"], pa.array(list(number)))))
    expected = info.counts.get("samples", {}).get(split, len(index))
    if len(index) != expected:
        raise ValueError(
            f"{root}: index.parquet lists {len(index)} {split} samples in the shards dataset.json names, which counts "
            f"{expected}; the dataset is incomplete or was changed: run its jobs.preprocess command again"
        )
    names, keys = index["shard"].to_pylist(), index["key"].to_pylist()
    shards = np.array([number[name] for name in names], np.int32)
    if "offset" in index.column_names:
        offsets, sizes = index["offset"].to_numpy(), index["bytes"].to_numpy()
        heads = index["head"].to_numpy() if "head" in index.column_names else np.zeros(len(index), np.int64)
    else:
        log.warning(
            "%s: index.parquet has no sample byte ranges (written by an older flowshard); reading them from the shards' "
            "indexes at each epoch. Run its jobs.preprocess command again to store them (nothing else is redone).",
            redact(str(root)),
        )
        ranges = {name: _shard_ranges(root, name) for name in set(names)}
        offsets, sizes, heads = (np.array(column, np.int64).reshape(-1) for column in zip(*(ranges[s][k] for s, k in zip(names, keys))))
    as_int = lambda a: np.asarray(a, np.int64)  # noqa: E731
    return SampleTable(urls=urls, shard=shards, offset=as_int(offsets), size=as_int(sizes), head=as_int(heads), keys=keys)


def _shard_ranges(root: str, shard: str) -> dict[str, tuple[int, int, int]]:
    """{key: (offset, bytes, head)} of a shard's samples, from its DALI index, else from its tar's headers."""
    shards = Location(root).child(SHARDS_DIR)
    index = shard.removesuffix(".tar") + DALI_INDEX_SUFFIX
    if shards.is_file(index):
        return sample_ranges(shards.read_text(index))
    with shards.open_input_stream(shard) as stream:
        return sample_ranges(dali_index_of(stream))


def coalesce(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Byte spans [start, end) -> fewer, larger ones: sorted, and each joined to the run before it while the run's
    unused bytes (the gaps read for nothing) stay within its used ones. So a run of consecutive flows is one
    read, an I3D clip at interval 2 is one read (a gap of one flow per flow used), and three TSN frames far apart
    stay three; what is read is at most twice what is used. Pure."""
    runs: list[list[int]] = []  # [start, end, used]
    for start, end in sorted(spans):
        if runs:
            run = runs[-1]
            used = run[2] + max(end - max(start, run[1]), 0)
            if max(run[1], end) - run[0] - used <= used:
                run[1], run[2] = max(run[1], end), used
                continue
        runs.append([start, end, end - start])
    return [(start, end) for start, end, _ in runs]


@dataclass
class ReadStats:
    """What a reader asked its storage for: bytes read, and requests (a read, or an open of a shard: on object
    storage pyarrow asks for the file's size)."""

    bytes: int = 0
    requests: int = 0


@dataclass(frozen=True)
class OpenedSample:
    """A sample whose head has been read: its metadata, and either the place of each of its members (from the member
    table) or, for a sample read whole, the members themselves."""

    url: str
    offset: int
    meta: SampleMeta
    places: dict[str, tuple[int, int]] | None  # member suffix -> (data offset from the sample's start, size)
    members: dict[str, bytes] | None  # a sample read whole: every member read, by suffix

    @property
    def key(self) -> str:
        """The sample's key (its video id)."""
        return self.meta.video_id


class _Done(Future):
    """A future that is already done: what a reader without threads hands out."""

    def __init__(self, fn, *args):
        super().__init__()
        try:
            self.set_result(fn(*args))
        except BaseException as exc:  # delivered by .result(), as a pool's future would
            self.set_exception(exc)


# Shard files a reader keeps open: a local one holds a file descriptor (cheap to open again); opening one on an
# object store costs a request (pyarrow asks for its size), holding it costs nothing, so all are kept.
OPEN_LOCAL_SHARDS, OPEN_REMOTE_SHARDS = 16, 100_000


class ShardReader:
    """Reads samples and members of shards by byte range, counting what it asks for (`stats`).

    With `in_flight` > 1 reads run on that many threads, so that several ranged GETs wait on object storage at once;
    with 1 (what a local disk needs) each read runs when it is asked for. Files are opened in the calling thread;
    one dropped from the open set is closed once no read holds it.
    """

    def __init__(self, in_flight: int = 1, open_files: int = OPEN_LOCAL_SHARDS):
        self.stats = ReadStats()
        self._lock = threading.Lock()
        self._files: OrderedDict = OrderedDict()  # url -> open file, least recently used first
        self._open_files = open_files
        self._pool = ThreadPoolExecutor(in_flight, thread_name_prefix="shard-read") if in_flight > 1 else None

    def _file(self, url: str):
        if url not in self._files:
            self._files[url] = Location(url).open_input_file()
            self._count(0)
            if len(self._files) > self._open_files:
                self._files.popitem(last=False)  # closed by pyarrow when the last read holding it lets go
        self._files.move_to_end(url)
        return self._files[url]

    def read_so_far(self) -> ReadStats:
        """A copy of `stats`, taken while no read thread is counting."""
        with self._lock:
            return ReadStats(self.stats.bytes, self.stats.requests)

    def _count(self, size: int) -> None:
        with self._lock:
            self.stats.bytes += size
            self.stats.requests += 1

    def _read(self, file, offset: int, size: int) -> bytes:
        try:
            data = file.read_at(size, offset)
        except (OSError, StorageError) as exc:
            raise OSError(str(exc)) from None
        self._count(len(data))
        if len(data) != size:
            raise TarError(f"the shard ends at byte {offset + len(data)}, inside a sample")
        return data

    def _submit(self, fn, *args) -> Future:
        return self._pool.submit(fn, *args) if self._pool else _Done(fn, *args)

    def open_sample(self, ref: dict, whole: bool = False) -> Future:
        """Future of the `OpenedSample` at `ref` ({"url", "offset", "size", "head"}): its head read, or the whole
        sample where it has no member table (head 0) or `whole` is asked for."""
        url, offset = ref["url"], ref["offset"]
        file = self._file(url)
        if whole or not ref["head"]:
            return self._submit(_at, url, offset, self._read_whole, file, url, offset, ref["size"])
        return self._submit(_at, url, offset, self._read_head, file, url, offset, ref["head"], ref["size"])

    def _read_whole(self, file, url: str, offset: int, size: int) -> OpenedSample:
        members = _parse(self._read(file, offset, size), url)
        return OpenedSample(url, offset, decode_meta(members), None, members)

    def _read_head(self, file, url: str, offset: int, head: int, size: int) -> OpenedSample:
        members = _parse(self._read(file, offset, head), url)
        meta = decode_meta(members)
        if MEMBERS not in members:
            raise ValueError(f"sample {meta.video_id!r} has no member table where index.parquet places one")
        table, suffixes = read_member_table(members[MEMBERS]), member_suffixes(meta)
        if len(table) != len(suffixes):
            raise ValueError(f"sample {meta.video_id!r}: its member table lists {len(table)} members, its metadata {len(suffixes)}")
        if not _places_fit(table, head, size):
            raise ValueError(f"sample {meta.video_id!r}: its member table places members outside the sample or out of order")
        return OpenedSample(url, offset, meta, dict(zip(suffixes, map(tuple, table.tolist()))), None)

    def members(self, sample: OpenedSample, suffixes: list[str]) -> Callable[[], dict[str, bytes]]:
        """Ask for these members of an opened sample; returns a function that waits for them and gives them by
        suffix. Nearby members are read together (`coalesce`), each member with its tar header, which is checked.

        Raises (from the function): KeyError for a member the sample lacks; TarError, OSError as reads fail."""
        if sample.members is not None:
            found = {s: sample.members[s] for s in suffixes}
            return lambda: found
        spans = {s: (sample.places[s][0] - BLOCK, sample.places[s][0] + sample.places[s][1]) for s in suffixes}
        file = self._file(sample.url)
        runs = [
            (run, self._submit(_at, sample.url, sample.offset + run[0], self._read, file, sample.offset + run[0], run[1] - run[0]))
            for run in coalesce(list(spans.values()))
        ]

        def wait() -> dict[str, bytes]:
            data = {run: future.result() for run, future in runs}
            out = {}
            for suffix, (start, end) in spans.items():
                run = next(r for r in data if r[0] <= start and end <= r[1])
                block = data[run][start - run[0] : end - run[0]]
                _at(sample.url, sample.offset + start, _check_header, block[:BLOCK], f"{sample.key}.{suffix}", end - start - BLOCK)
                out[suffix] = block[BLOCK:]
            return out

        return wait

    def close(self) -> None:
        """Stop the threads and close the files."""
        if self._pool:
            self._pool.shutdown(wait=True, cancel_futures=True)
        for f in self._files.values():
            f.close()
        self._files.clear()


def _places_fit(table: np.ndarray, head: int, size: int) -> bool:
    """Whether a member table's places can be those of a sample of `size` bytes whose head is `head` bytes: each
    member's data after its header, in order, without overlap, inside the sample (a corrupt table would otherwise
    ask for reads of any size, anywhere)."""
    if not len(table):
        return True
    starts, sizes = table[:, 0], table[:, 1]
    ends = starts + sizes
    return bool(starts[0] >= head + BLOCK and (sizes >= 0).all() and ends[-1] <= size and (starts[1:] >= ends[:-1] + BLOCK).all())


def _at(url: str, offset: int, fn, *args):
    """`fn(*args)`, a failure of which is named once, here, by the shard and the byte it concerns (its kind kept:
    TarError, OSError or ValueError)."""
    try:
        return fn(*args)
    except (ValueError, OSError) as exc:
        kind = next(k for k in (TarError, OSError, ValueError) if isinstance(exc, k))
        raise kind(redact(f"{url} at byte {offset}: {exc}")) from None


def _parse(data: bytes, url: str) -> dict[str, bytes]:
    """A sample's bytes (or its head's) -> {"__key__", "__url__", member suffix: bytes}."""
    sample: dict = {"__url__": url}
    for name, member in read_members(io.BytesIO(data)):
        sample["__key__"], _, suffix = name.partition(".")
        sample[suffix] = member
    return sample


def _check_header(header: bytes, name: str, size: int) -> None:
    """A member's tar header as its sample's member table promises: a valid header of this size (and name, where
    the name fits a plain header), so that a table that lies or a shard that was overwritten is caught."""
    stored_name, stored_size = header_fields(header)
    short = name.isascii() and len(name) <= 100
    if stored_size != size or (short and stored_name != name):
        raise TarError(f"the member table places {name} ({size} bytes) where the tar holds {stored_name}")


def read_chosen(
    refs: Iterator[dict],
    choose: Callable[[SampleMeta], tuple[object, list[str]]],
    reader: ShardReader,
    handler: Callable[[Exception], bool],
    depth: int = 1,
) -> Iterator[tuple[OpenedSample, object, dict[str, bytes]]]:
    """Stage: sample places -> (opened sample, its choice, its chosen members by suffix), in order. For each sample
    its head is read, `choose(meta)` makes a choice and names the members it needs (called in the samples' order, so
    a seeded choice stays reproducible), and those are read; up to `depth` samples' heads and `depth` samples' members are asked for
    ahead. A sample that fails (a read, its metadata, a choice: ValueError, OSError, KeyError) goes to `handler`,
    which says whether to go on."""
    heads: deque = deque()  # (ref, future of OpenedSample)
    chosen: deque = deque()  # (OpenedSample, choice, wait for members)
    refs = iter(refs)
    more = True
    while True:
        while more and len(heads) < depth:
            ref = next(refs, None)
            if ref is None:
                more = False
                break
            try:
                heads.append((ref, reader.open_sample(ref)))
            except (OSError, StorageError) as exc:  # the shard cannot be opened
                if not handler(ValueError(redact(f"{ref['url']}: {exc}"))):
                    return
        while heads and (len(chosen) < depth or not chosen):
            ref, future = heads.popleft()
            try:
                sample = future.result()
                choice, suffixes = choose(sample.meta)
                chosen.append((sample, choice, reader.members(sample, suffixes)))
            except (ValueError, OSError, KeyError, StorageError) as exc:  # a read's names its shard and byte (`_at`)
                if not handler(ValueError(f"{exc}")):
                    return
        if not chosen:
            if not heads and not more:
                return
            continue
        sample, choice, wait = chosen.popleft()
        try:
            members = wait()
        except (ValueError, OSError, KeyError, StorageError) as exc:
            if not handler(ValueError(f"{sample.key}: {exc}")):
                return
            continue
        yield sample, choice, members


def whole_samples(table: SampleTable, rows: list[int] | None = None) -> Iterator[dict[str, bytes]]:
    """The samples of `table` (or its `rows`), in order, each read whole by one ranged read: {"__key__", "__url__",
    member suffix: bytes}, as `schemas.sample.decode_sample` takes them. What export, visualize and the benchmarks
    read: every member, through the same reader as training.

    Raises:
        TarError, OSError: a sample cannot be read (named with its shard and byte).
    """
    reader = ShardReader()
    try:
        for i in range(len(table)) if rows is None else rows:
            yield reader.open_sample(table.ref(i), whole=True).result().members
    finally:
        reader.close()
