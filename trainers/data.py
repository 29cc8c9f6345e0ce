"""Examples streamed from the shards: nothing is unpacked to disk, and only what an example uses is read.

The pipeline is one visible list of stages (`example_pipeline`): the epoch's samples for this rank and loader
worker (`EpochSamples`: for training a seeded shuffle of the whole split, every sample once, ranks equal; for
evaluation each sample once, in order; see `trainers.epochs`) -> `_examples`: each sample's head read (its
metadata and member table), its frames and crops chosen from the metadata (`choose_example`), only the chosen
members read by byte range (`trainers.shard_reader`), then decoded and assembled (`make`); or, with `decode`
False, the workers stop at the `Selection` and the frames are decoded on the training device. A corrupt sample is
skipped with a warning and counted.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import webdataset as wds
from torchvision.io import ImageReadMode, decode_jpeg

from schemas.sample import FLOW_MODALITIES, RGB, Sample, SampleMeta, decode_flow, decode_flow_u8, decode_image, flow_members, rgb_member
from storage import Location, StorageError

from .epochs import epoch_share
from .sampling import clip_indices, snippet_indices, tsn_offsets
from .shard_reader import OPEN_REMOTE_SHARDS, OpenedSample, ReadStats, SampleTable, ShardReader, read_chosen, sample_table
from .transforms import (
    center_box,
    crop_resize,
    hflip_flow,
    hflip_rgb,
    multi_scale_crop_box,
    normalize_flow,
    normalize_rgb,
    stack_flow_channels,
    ten_crop_boxes,
    three_crop_boxes,
)

log = logging.getLogger(__name__)
CROPS = (1, 3, 10)


@dataclass(frozen=True)
class ExampleConfig:
    """How a video becomes a network input."""

    arch: str = "tsn"  # "tsn" (K snippets) or "i3d" (clips)
    modality: str = RGB  # "rgb", "tvl1" or "warp_tvl1"
    segments: int = 3  # TSN: K
    new_length: int = 5  # TSN flow: consecutive flows per snippet (2L channels)
    clip_len: int = 16  # I3D: frames (or flows) per clip
    interval: int = 2  # I3D: step between them
    clips: int = 1  # I3D: clips per video at test time
    input_size: int = 224
    crops: int = 1  # test: 1 (centre), 3 (along the long side) or 10 (corners + centre, and their mirror images)
    flip: bool = True  # training: random horizontal flips (flow x negated on every flow); test: 10 crops mirror too

    def __post_init__(self):
        if self.arch not in ("tsn", "i3d"):
            raise ValueError(f"arch must be tsn or i3d, got {self.arch!r}")
        if self.modality not in (RGB, *FLOW_MODALITIES):
            raise ValueError(f"modality must be one of {RGB}, {', '.join(FLOW_MODALITIES)}, got {self.modality!r}")
        if self.crops not in CROPS:
            raise ValueError(f"crops must be one of {CROPS}, got {self.crops}")
        if min(self.segments, self.new_length, self.clip_len, self.interval, self.clips, self.input_size) < 1:
            raise ValueError("segments, new-length, clip-len, interval, clips and input size must be positive")

    @property
    def is_flow(self) -> bool:
        """Whether the examples are stacked flow (else RGB frames)."""
        return self.modality != RGB


class SkipCounter:
    """A webdataset handler: warn about and count what is skipped, then continue."""

    def __init__(self):
        self.count = 0

    def __call__(self, exc: Exception) -> bool:
        self.count += 1
        log.warning("skipped corrupt shard data (%d so far): %s", self.count, str(exc).splitlines()[0][:300])
        return True


@dataclass(frozen=True)
class Selection:
    """One example's random choices, made in a loader worker, with the encoded members it needs (each once).

    `assemble` turns it into the network input. Kept apart from decoding so that the decoding can move to the
    training device (`decode_on_device`) while the workers only read shards and choose.
    """

    key: str
    label: int
    members: list  # per distinct frame: RGB JPEG bytes, (x, y) flow JPEG bytes, or lossless flow decoded to 0..255
    order: np.ndarray  # (n, T) positions in `members`: TSN (K, L) snippets, I3D (clips, T) clips
    boxes: list[tuple[int, int, int, int, bool]]  # one view per box: (top, left, height, width, mirrored)
    train: bool  # a training example (an I3D training input has no clips axis)


def choose(length: int, height: int, width: int, cfg: ExampleConfig, train: bool, rng: np.random.Generator):
    """The random choices of one example of a `length`-frame (or flow) video: (indices (n, T), view boxes)."""
    if cfg.arch == "tsn":
        snippet = cfg.new_length if cfg.is_flow else 1
        idx = snippet_indices(tsn_offsets(length, cfg.segments, snippet, train, rng), snippet, length)  # (K, L)
    else:
        idx = clip_indices(length, cfg.clip_len, cfg.interval, 1 if train else cfg.clips, train, rng)  # (clips, T)
    if train:
        box = multi_scale_crop_box(height, width, rng)
        return idx, [(*box, bool(cfg.flip and rng.random() < 0.5))]
    if cfg.crops == 1:
        return idx, [(*center_box(height, width, cfg.input_size), False)]
    if cfg.crops == 3:
        return idx, [(*box, False) for box in three_crop_boxes(height, width, cfg.input_size)]
    boxes = ten_crop_boxes(height, width, cfg.input_size)
    return idx, boxes if cfg.flip else [box for box in boxes if not box[4]]  # no mirror images for a run without flips


@dataclass(frozen=True)
class Choice:
    """The random choices of one example, made from a sample's metadata alone (before any frame is read)."""

    indices: np.ndarray  # (U,) the distinct frames (or flows) used, sorted
    order: np.ndarray  # (n, T) positions in `indices`: TSN (K, L) snippets, I3D (clips, T) clips
    boxes: list[tuple[int, int, int, int, bool]]


def choose_example(meta: SampleMeta, cfg: ExampleConfig, train: bool, rng: np.random.Generator) -> Choice:
    """An example's choices for a video with this metadata.

    Raises:
        ValueError: the video lacks the modality the example needs.
    """
    if cfg.modality != RGB and cfg.modality not in meta.modalities:
        raise ValueError(f"sample {meta.video_id} has no {cfg.modality} flow (it has {', '.join(meta.modalities)})")
    length = meta.num_flows if cfg.is_flow else meta.num_frames
    idx, boxes = choose(length, meta.height, meta.width, cfg, train, rng)
    distinct, order = np.unique(idx, return_inverse=True)
    return Choice(distinct, order.reshape(idx.shape), boxes)


def parts_of(meta: SampleMeta, cfg: ExampleConfig, index: int) -> tuple[str, ...]:
    """The member suffixes that hold frame (or flow) `index` of the example's modality."""
    return flow_members(cfg.modality, index, meta.flow_encoding) if cfg.is_flow else (rgb_member(index),)


def stored_member(meta: SampleMeta, cfg: ExampleConfig, parts: tuple[bytes, ...]):
    """A frame's or flow's member bytes as a `Selection` holds them: RGB JPEG bytes, the (x, y) flow JPEGs, or
    lossless flow decoded to the 0..255 scale of the 8-bit images, clipped at the bound as they are."""
    if not cfg.is_flow:
        return parts[0]
    if meta.flow_encoding == "jpeg":
        return parts
    bound = meta.flow_bound
    flow = decode_flow(parts, meta.flow_encoding, bound)
    return np.clip(255.0 * (flow + bound) / (2 * bound), 0.0, 255.0).astype(np.float32)


def selection(meta: SampleMeta, choice: Choice, members: dict[str, bytes], cfg: ExampleConfig, train: bool) -> Selection:
    """An example chosen, with the members its choice needs (by suffix), not decoded."""
    stored = [stored_member(meta, cfg, tuple(members[p] for p in parts_of(meta, cfg, int(i)))) for i in choice.indices]
    return Selection(meta.video_id, meta.label, stored, choice.order, choice.boxes, train)


def select(sample: Sample, cfg: ExampleConfig, train: bool, rng: np.random.Generator) -> Selection:
    """A video's example from its whole sample in memory, chosen but not decoded (what the loader makes from the
    members it reads by range, for the same generator state)."""
    choice = choose_example(sample.meta, cfg, train, rng)
    stored = sample.flow[cfg.modality] if cfg.is_flow else [(frame,) for frame in sample.rgb]
    members = {p: data for i in choice.indices for p, data in zip(parts_of(sample.meta, cfg, int(i)), stored[i], strict=True)}
    return selection(sample.meta, choice, members, cfg, train)


def decode_members(members: list, is_flow: bool) -> torch.Tensor:
    """A selection's members -> (U, H, W, C) 0..255 on the CPU (OpenCV), as the loader workers decode."""
    frames = [m if isinstance(m, np.ndarray) else decode_flow_u8(m) if is_flow else decode_image(m) for m in members]
    return torch.from_numpy(np.stack(frames))


def decode_members_on(selections: list[Selection], is_flow: bool, device: torch.device) -> list[torch.Tensor]:
    """Every member of a batch of selections decoded in one batched `torchvision.io.decode_jpeg` call on
    `device` (nvJPEG on a GPU) -> per selection (U, H, W, C) 0..255; lossless flow is only moved there."""
    jpegs = [
        torch.frombuffer(bytearray(part), dtype=torch.uint8)
        for sel in selections
        for m in sel.members
        if not isinstance(m, np.ndarray)
        for part in (m if is_flow else (m,))
    ]
    mode = ImageReadMode.GRAY if is_flow else ImageReadMode.RGB
    with warnings.catch_warnings():  # torchvision 0.29 marks its image codecs deprecated (for TorchCodec); the pin has them
        warnings.simplefilter("ignore", DeprecationWarning)
        images = iter(decode_jpeg(jpegs, mode=mode, device=device) if jpegs else [])  # each (1 or 3, H, W)
    out = []
    for sel in selections:
        frames = []
        for m in sel.members:
            if isinstance(m, np.ndarray):
                frames.append(torch.from_numpy(m).to(device))
            else:
                frames.append(torch.cat([next(images), next(images)]).permute(1, 2, 0) if is_flow else next(images).permute(1, 2, 0))
        out.append(torch.stack(frames).contiguous())
    return out


def assemble(sel: Selection, frames: torch.Tensor, cfg: ExampleConfig) -> torch.Tensor:
    """A selection and its decoded members ((U, H, W, C), on any device) -> the network input.

    Input shapes: TSN (K * crops, C, S, S) with C = 3 or 2L (channels x0, y0, x1, y1, ...);
    I3D training (C, T, S, S), testing (clips * crops, C, T, S, S); C = 3 or 2.
    """
    stack = frames[torch.as_tensor(sel.order.ravel(), device=frames.device)]  # (K*L or clips*T, H, W, C)
    flip = hflip_flow if cfg.is_flow else hflip_rgb
    norm = normalize_flow if cfg.is_flow else normalize_rgb
    out = []
    for box in sel.boxes:
        v = crop_resize(stack, box, cfg.input_size)
        v = norm(flip(v) if box[4] else v)
        if cfg.arch == "tsn":
            out.append(stack_flow_channels(v, cfg.new_length) if cfg.is_flow else v)  # (K, C, S, S)
        else:
            n, T = sel.order.shape
            out.append(v.view(n, T, *v.shape[1:]).transpose(1, 2))  # (clips, C, T, S, S)
    x = torch.cat(out, 0)
    return x[0] if cfg.arch == "i3d" and sel.train else x


def make_example(sample: Sample, cfg: ExampleConfig, train: bool, rng: np.random.Generator) -> tuple[torch.Tensor, int, str]:
    """One video -> (input, label, key), decoded here (see `assemble` for the shapes)."""
    return decoded(select(sample, cfg, train, rng), cfg)


def decoded(sel: Selection, cfg: ExampleConfig) -> tuple[torch.Tensor, int, str]:
    """A selection decoded here (OpenCV) and assembled: (input, label, key)."""
    return assemble(sel, decode_members(sel.members, cfg.is_flow), cfg), sel.label, sel.key


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _worker_rng(seed: int, rank: int, stream: int = 0) -> np.random.Generator:
    """This loader worker's generator for the examples' choices (`stream` 1: for the made-up ones)."""
    info = torch.utils.data.get_worker_info()
    return np.random.default_rng([seed, rank, info.id if info else 0, *([stream] if stream else [])])


class EpochSamples(torch.utils.data.IterableDataset):
    """Source stage: the samples ({"url", "offset", "size", "head"}) this rank's loader worker reads in one epoch, as
    `trainers.epochs.epoch_share` deals them (run in the worker, which knows its number)."""

    def __init__(self, table: SampleTable, seed: int, train: bool, rank: int = 0, world: int = 1):
        self.table, self.seed, self.train, self.rank, self.world = table, seed, train, rank, world

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for i in epoch_share(len(self.table), self.seed, self.train, self.rank, self.world, worker, workers):
            yield self.table.ref(i)


# Reads a loader worker keeps waiting on object storage at once (heads, and chosen members, of this many samples
# each), so that their latencies overlap; a local disk answers at once and is read inline.
REMOTE_IN_FLIGHT = 8


def _examples(
    src, cfg: ExampleConfig, train: bool, seed: int, rank: int, handler: SkipCounter, remote: bool, decode: bool = True, reads=None
):
    """Stage: sample places -> examples (or, with `decode` False, their `Selection`s). Each sample's head is read,
    its example chosen from the metadata, and only the chosen members are read (`shard_reader.read_chosen`).
    A sample that cannot be read or made into an example is skipped through `handler`. In training each skipped
    sample is made up for by another example of the worker's last good sample, so every rank still takes the same
    number of steps (DDP never waits), as long as the worker read one good sample (a worker whose every sample is
    corrupt makes none). What was read so far goes to `reads` (a `ReadTotals`) after each example."""
    rng = _worker_rng(seed, rank)
    reader = ShardReader(REMOTE_IN_FLIGHT, OPEN_REMOTE_SHARDS) if remote else ShardReader()

    makeup_rng = _worker_rng(seed, rank, 1)  # made-up examples draw apart: the same choices however far reads run ahead

    def chosen(meta: SampleMeta, generator: np.random.Generator = rng) -> tuple[Choice, list[str]]:
        choice = choose_example(meta, cfg, train, generator)
        return choice, [p for i in choice.indices for p in parts_of(meta, cfg, int(i))]

    def make(sample: OpenedSample, choice: Choice, members: dict):
        sel = selection(sample.meta, choice, members, cfg, train)
        return decoded(sel, cfg) if decode else sel

    last, repaid, recorded = None, 0, ReadStats()

    def record() -> None:  # what the reader read since the last call, to `reads`
        nonlocal recorded
        if reads is not None:
            now = reader.read_so_far()
            reads.add(now.bytes - recorded.bytes, now.requests - recorded.requests)
            recorded = now

    def made_up():
        nonlocal last, repaid
        while train and last is not None and repaid < handler.count:
            repaid += 1
            choice, suffixes = chosen(last.meta, makeup_rng)
            try:
                yield make(last, choice, reader.members(last, suffixes)())
            except (ValueError, OSError, KeyError, StorageError) as exc:  # the last good sample is bad after all: none to repeat
                handler(ValueError(f"{last.key}: {exc}"))
                last = None

    try:
        for sample, choice, members in read_chosen(src, chosen, reader, handler, REMOTE_IN_FLIGHT if remote else 1):
            try:
                example = make(sample, choice, members)
            except ValueError as exc:
                handler(ValueError(f"{sample.key}: {exc}"))
            else:
                last = sample
                record()
                yield example
            yield from made_up()
        yield from made_up()  # for samples lost after the last one made
    finally:
        reader.close()
        record()


def example_pipeline(
    table: SampleTable,
    cfg: ExampleConfig,
    train: bool,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    decode: bool = True,
    reads: ReadTotals | None = None,
) -> wds.DataPipeline:
    """The dataset of one epoch's examples (of `Selection`s when `decode` is False) for rank `rank` of
    `world_size`: for training every sample of the split once in a seeded order, ranks equal (padded with repeats);
    for evaluation every sample once over all ranks. What each worker reads is recorded in `reads`."""
    handler = SkipCounter()
    remote = bool(table.urls) and not Location(table.urls[0]).is_local
    return wds.DataPipeline(
        EpochSamples(table, seed, train, rank, world_size),
        partial(_examples, cfg=cfg, train=train, seed=seed, rank=rank, handler=handler, remote=remote, decode=decode, reads=reads),
    )


def as_list(batch: list) -> list:
    """collate_fn for batches of `Selection`s: kept as they are, decoded later on the device."""
    return batch


class ReadTotals:
    """What an epoch's loader workers have read (bytes, requests), in shared memory: each worker writes its own row
    of running totals (no two write the same), the training process adds them up."""

    def __init__(self, workers: int = 0):
        self._rows = torch.zeros(max(workers, 1), 2, dtype=torch.int64).share_memory_()

    def add(self, bytes_read: int, requests: int) -> None:
        """Add to this worker's totals (called in the worker)."""
        info = torch.utils.data.get_worker_info()
        self._rows[info.id if info else 0] += torch.tensor([bytes_read, requests])

    def per_example(self, examples: int) -> dict[str, float]:
        """{"read_mb", "read_requests"} per example over `examples` examples."""
        total_bytes, requests = self._rows.sum(0).tolist()
        return {"read_mb": total_bytes / max(examples, 1) / 2**20, "read_requests": requests / max(examples, 1)}


def read_cost(stats: dict) -> str:
    """Bytes and requests read per example, as the summaries print them ("" without the figures)."""
    if "read_mb" not in stats:
        return ""
    return f"{stats['read_mb']:.2f} MB in {stats['read_requests']:.1f} reads per video"


class EpochLoader:
    """One epoch's batches, (inputs, labels, keys), from `make_loader`; `reads` totals what its workers read.

    With `decode_on` the workers give batches of `Selection`s, decoded and assembled here on that device (one
    batched nvJPEG call per batch on a GPU), so that the workers only read the shards and choose. On the CPU the
    inputs equal the workers' own."""

    def __init__(self, loader: torch.utils.data.DataLoader, reads: ReadTotals, cfg: ExampleConfig, decode_on: torch.device | None = None):
        self.loader, self.reads, self.cfg, self.decode_on = loader, reads, cfg, decode_on

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
        if self.decode_on is None:
            yield from self.loader
            return
        for batch in self.loader:
            frames = decode_members_on(batch, self.cfg.is_flow, self.decode_on)
            x = torch.stack([assemble(sel, f, self.cfg) for sel, f in zip(batch, frames)])
            yield x, torch.tensor([sel.label for sel in batch]), [sel.key for sel in batch]


def make_loader(
    root: str,
    split: str,
    cfg: ExampleConfig,
    train: bool,
    batch_size: int,
    workers: int = 0,
    seed: int = 0,
    decode_on: torch.device | None = None,
) -> EpochLoader:
    """A loader over one epoch of `split` of a preprocessed dataset (see `example_pipeline`; the rank and the
    number of ranks are torch.distributed's), yielding (inputs, labels, keys) batches; with `decode_on` the workers
    stop at the `Selection` and the frames are decoded on that device (see `EpochLoader`)."""
    rank, world = _rank_and_world()
    reads = ReadTotals(workers)
    dataset = example_pipeline(sample_table(root, split), cfg, train, seed, rank, world, decode=decode_on is None, reads=reads)
    collate = {} if decode_on is None else {"collate_fn": as_list}
    return EpochLoader(torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers, **collate), reads, cfg, decode_on)
