"""Streaming examples from the shards with webdataset's stages: nothing is unpacked to disk.

The pipeline is one visible list of stages (`example_pipeline`): the epoch's samples for this rank and loader
worker (`EpochSamples`: for training a seeded shuffle of the whole split, every sample once, ranks equal; for
evaluation each sample once, in order; see `trainers.epochs`) -> each sample read by one ranged read of its
byte range (index.parquet's `offset` and `bytes`; a positioned read on a local disk, a ranged GET on object
storage), no shuffle buffer -> `schemas.sample.decode_sample` -> `make_example`, which chooses the frames and
crops (`select`) and decodes only the frames the example uses; or, with `decode_on`, the workers stop at the
choice and the frames are decoded on the training device. Members of other modalities are dropped as the tar
bytes are parsed (`member_filter`). A corrupt sample is skipped with a warning and counted.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import webdataset as wds
from torchvision.io import ImageReadMode, decode_jpeg
from webdataset.tariterators import group_by_keys

from schemas.dataset import DALI_INDEX_SUFFIX, INDEX_FILE, SHARDS_DIR, DatasetInfo, read_dataset_info
from schemas.sample import (
    FLOW_MODALITIES,
    RGB,
    Sample,
    dali_index_of,
    decode_flow,
    decode_flow_u8,
    decode_image,
    decode_sample,
    member_filter,
    sample_ranges,
)
from storage import Location, StorageError, basename, join, redact

from .epochs import epoch_share
from .sampling import clip_indices, snippet_indices, tsn_offsets
from .tar_stream import TarError, read_members
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


def _member(sample: Sample, cfg: ExampleConfig, index: int):
    """Frame or flow `index` as stored (JPEG bytes); lossless flow decoded to the 0..255 scale of the 8-bit
    images, clipped at the bound as they are."""
    if not cfg.is_flow:
        return sample.rgb[index]
    parts = sample.flow[cfg.modality][index]
    if sample.meta.flow_encoding == "jpeg":
        return parts
    bound = sample.meta.flow_bound
    flow = decode_flow(parts, sample.meta.flow_encoding, bound)
    return np.clip(255.0 * (flow + bound) / (2 * bound), 0.0, 255.0).astype(np.float32)


def select(sample: Sample, cfg: ExampleConfig, train: bool, rng: np.random.Generator) -> Selection:
    """A video's example, chosen but not decoded."""
    if cfg.modality != RGB and cfg.modality not in sample.flow:
        raise ValueError(f"sample {sample.key} has no {cfg.modality} flow (it has {', '.join(sample.meta.modalities)})")
    length = sample.meta.num_flows if cfg.is_flow else sample.meta.num_frames
    idx, boxes = choose(length, sample.meta.height, sample.meta.width, cfg, train, rng)
    distinct, order = np.unique(idx, return_inverse=True)
    members = [_member(sample, cfg, int(i)) for i in distinct]
    return Selection(sample.key, sample.meta.label, members, order.reshape(idx.shape), boxes, train)


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
    sel = select(sample, cfg, train, rng)
    return assemble(sel, decode_members(sel.members, cfg.is_flow), cfg), sel.label, sel.key


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


def open_shards(src: Iterator[dict], handler: Callable[[Exception], bool] = wds.reraise_exception) -> Iterator[dict]:
    """Stage: {"url"} -> {"url", "stream"}, each shard opened through `storage` (webdataset has no opener for
    object stores); a shard that cannot be opened goes to `handler`. Each stream is closed once the next
    shard is asked for, which is when the tar reader has finished it."""
    for sample in src:
        try:
            stream = Location(sample["url"]).open_input_stream()
        except StorageError as exc:
            if handler(exc):
                continue
            break
        try:
            yield {**sample, "stream": stream}
        finally:
            stream.close()


def tar_files(shards: Iterator[dict], handler: Callable[[Exception], bool], select_files: Callable[[str], bool] | None) -> Iterator[dict]:
    """Stage: opened shards -> their members ({"fname", "data", "__url__"}) read by `tar_stream.read_members`,
    then {} at the end of each shard so that samples of two shards never merge; a corrupt shard goes to
    `handler` (its samples so far kept; a partial last sample fails in `decode_sample`)."""
    for shard in shards:
        try:
            for name, data in read_members(shard["stream"], select_files):
                yield {"fname": name, "data": data, "__url__": shard["url"]}
        except (TarError, OSError) as exc:
            if not handler(ValueError(f"{shard['url']}: {exc}")):
                break
        yield {}


def tar_samples(
    src: Iterator[dict], handler: Callable[[Exception], bool] = wds.reraise_exception, select_files: Callable[[str], bool] | None = None
) -> Iterator[dict]:
    """Stage: shard URLs ({"url"}) -> samples ({member suffix: bytes}), as `wds.tarfile_to_samples` but opened
    through `storage` and read by `tar_stream` (~20x faster per member than tarfile)."""
    return group_by_keys(tar_files(open_shards(src, handler), handler, select_files), handler=handler)


def read_samples(urls: list[str]) -> wds.DataPipeline:
    """Every sample of these shards in order, undecoded (for inspection, not training)."""
    return wds.DataPipeline(wds.SimpleShardList(urls), tar_samples)


@dataclass(frozen=True)
class SampleTable:
    """The samples of a split and where each lies: its shard's number in `urls`, its offset and size in the tar."""

    urls: list[str]  # the split's shards (local paths or URIs)
    shard: np.ndarray  # (n,) int32
    offset: np.ndarray  # (n,) int64
    size: np.ndarray  # (n,) int64

    def __len__(self) -> int:
        return len(self.offset)


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
    shards = np.array([number[name] for name in index["shard"].to_pylist()], np.int32)
    if "offset" in index.column_names:
        offsets, sizes = index["offset"].to_numpy(), index["bytes"].to_numpy()
    else:
        log.warning(
            "%s: index.parquet has no sample byte ranges (written by an older flowshard); reading them from the shards' "
            "indexes at each epoch. Run its jobs.preprocess command again to store them (nothing else is redone).",
            redact(str(root)),
        )
        ranges = {name: _shard_ranges(root, name) for name in set(index["shard"].to_pylist())}
        found = [ranges[shard][key] for shard, key in zip(index["shard"].to_pylist(), index["key"].to_pylist())]
        offsets, sizes = np.array([o for o, _ in found], np.int64), np.array([n for _, n in found], np.int64)
    return SampleTable(urls=urls, shard=shards, offset=offsets.astype(np.int64), size=sizes.astype(np.int64))


def _shard_ranges(root: str, shard: str) -> dict[str, tuple[int, int]]:
    """{key: (offset, bytes)} of a shard's samples, from its DALI index, else from its tar's headers."""
    shards = Location(root).child(SHARDS_DIR)
    index = shard.removesuffix(".tar") + DALI_INDEX_SUFFIX
    if shards.is_file(index):
        return sample_ranges(shards.read_text(index))
    with shards.open_input_stream(shard) as stream:
        return sample_ranges(dali_index_of(stream))


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _worker_rng(seed: int, rank: int) -> np.random.Generator:
    info = torch.utils.data.get_worker_info()
    return np.random.default_rng([seed, rank, info.id if info else 0])


class EpochSamples(torch.utils.data.IterableDataset):
    """Source stage: the byte ranges ({"url", "offset", "size"}) this rank's loader worker reads in one epoch, as
    `trainers.epochs.epoch_share` deals them (run in the worker, which knows its number)."""

    def __init__(self, table: SampleTable, seed: int, train: bool, rank: int = 0, world: int = 1):
        self.table, self.seed, self.train, self.rank, self.world = table, seed, train, rank, world

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        t = self.table
        for i in epoch_share(len(t), self.seed, self.train, self.rank, self.world, worker, workers):
            yield {"url": t.urls[t.shard[i]], "offset": int(t.offset[i]), "size": int(t.size[i])}


# Shard files a loader worker keeps open: a local one holds a file descriptor (cheap to open again); opening one on
# an object store costs a request (pyarrow asks for its size), holding it costs nothing, so all are kept.
OPEN_LOCAL_SHARDS, OPEN_REMOTE_SHARDS = 16, 100_000


def read_ranges(
    src: Iterator[dict], handler: Callable[[Exception], bool] = wds.reraise_exception, select_files: Callable[[str], bool] | None = None
) -> Iterator[dict]:
    """Stage: byte ranges ({"url", "offset", "size"}) -> samples ({"__key__", "__url__", member suffix: bytes}), each
    one ranged read of its shard (positioned on a local disk, a ranged GET on object storage, after one request per
    shard to open it), its tar members parsed by `tar_stream` and those `select_files` refuses dropped.

    Args:
        handler: gets a read that fails (a cut or corrupt shard, an unreachable store) and says whether to go on.
    """
    files: OrderedDict = OrderedDict()  # url -> open file, least recently used first
    try:
        for ref in src:
            url = ref["url"]
            try:
                if url not in files:
                    shard = Location(url)
                    files[url] = shard.open_input_file()
                    if len(files) > (OPEN_LOCAL_SHARDS if shard.is_local else OPEN_REMOTE_SHARDS):
                        files.popitem(last=False)[1].close()
                files.move_to_end(url)
                data = files[url].read_at(ref["size"], ref["offset"])
                if len(data) != ref["size"]:
                    raise TarError(f"the shard ends at byte {ref['offset'] + len(data)}, inside a sample")
                sample: dict = {"__url__": url}
                for name, member in read_members(io.BytesIO(data), select_files):
                    sample["__key__"], _, suffix = name.partition(".")
                    sample[suffix] = member
            except (TarError, OSError, StorageError) as exc:
                if handler(ValueError(redact(f"{url} at byte {ref['offset']}: {exc}"))):
                    continue
                break
            yield sample
    finally:
        for f in files.values():
            f.close()


def _examples(src, cfg: ExampleConfig, train: bool, seed: int, rank: int, handler: SkipCounter, decode: bool = True):
    """Stage: Sample -> example (or, with `decode` False, its `Selection`); a sample that cannot be made into one
    is skipped through `handler`. In training each sample skipped here or upstream is made up for by another
    example of the worker's last good sample, so every rank still takes the same number of steps (DDP never waits),
    as long as the worker read one good sample (a worker whose every sample is corrupt makes none)."""
    rng = _worker_rng(seed, rank)
    make = make_example if decode else select
    last, repaid = None, 0

    def made_up():
        nonlocal repaid
        while train and last is not None and repaid < handler.count:
            repaid += 1
            yield make(last, cfg, train, rng)

    for sample in src:
        try:
            example = make(sample, cfg, train, rng)
        except ValueError as exc:
            handler(ValueError(f"{sample.key}: {exc}"))
        else:
            last = sample
            yield example
        yield from made_up()
    yield from made_up()  # for samples lost after the last one made


def example_pipeline(
    table: SampleTable, cfg: ExampleConfig, train: bool, seed: int = 0, rank: int = 0, world_size: int = 1, decode: bool = True
) -> wds.DataPipeline:
    """The dataset of one epoch's examples (of `Selection`s when `decode` is False) for rank `rank` of
    `world_size`: for training every sample of the split once in a seeded order, ranks equal (padded with repeats);
    for evaluation every sample once over all ranks."""
    handler = SkipCounter()
    return wds.DataPipeline(
        EpochSamples(table, seed, train, rank, world_size),
        partial(read_ranges, handler=handler, select_files=member_filter((cfg.modality,))),  # other modalities dropped
        wds.map(partial(decode_sample, modalities=(cfg.modality,)), handler=handler),
        partial(_examples, cfg=cfg, train=train, seed=seed, rank=rank, handler=handler, decode=decode),
    )


def as_list(batch: list) -> list:
    """collate_fn for batches of `Selection`s: kept as they are, decoded later on the device."""
    return batch


class DecodedOnDevice:
    """Batches of `Selection`s from the loader workers -> (inputs, labels, keys) as the plain loader gives,
    decoded and assembled on `device` (one batched nvJPEG call per batch on a GPU), so that the workers only
    read the shards and choose. On the CPU the inputs equal the workers' own."""

    def __init__(self, loader: torch.utils.data.DataLoader, cfg: ExampleConfig, device: torch.device):
        self.loader, self.cfg, self.device = loader, cfg, device

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
        for batch in self.loader:
            frames = decode_members_on(batch, self.cfg.is_flow, self.device)
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
):
    """A DataLoader over one epoch of `split` of a preprocessed dataset (see `example_pipeline`; the rank and the
    number of ranks are torch.distributed's), yielding (inputs, labels, keys) batches; with `decode_on` the workers
    stop at the `Selection` and the frames are decoded on that device (`DecodedOnDevice`)."""
    rank, world = _rank_and_world()
    dataset = example_pipeline(sample_table(root, split), cfg, train, seed, rank, world, decode=decode_on is None)
    if decode_on is None:
        return torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=as_list)
    return DecodedOnDevice(loader, cfg, decode_on)
