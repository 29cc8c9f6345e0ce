"""Streaming examples from the shards with webdataset: nothing is unpacked to disk.

The pipeline is one visible list of stages (`example_pipeline`): shard list (for training resampled by every
rank and loader worker, so ranks with uneven shard counts never wait on each other; for evaluation split by
node and worker, each shard read once) -> shards opened
through `storage` (a local disk or object storage, read in large buffered blocks) -> tar members ->
shuffle buffer -> `schemas.sample.decode_sample` -> `make_example`, which decodes only the frames the
example uses. Members of other modalities are skipped while reading the tar (`member_filter`). A corrupt
shard or sample is skipped with a warning and counted.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import webdataset as wds
from webdataset.tariterators import group_by_keys, tar_file_expander

from schemas.dataset import SHARDS_DIR, read_dataset_info
from schemas.sample import FLOW_MODALITIES, RGB, Sample, decode_flow, decode_flow_u8, decode_sample, member_filter
from storage import Location, StorageError, join

from .sampling import clip_indices, snippet_indices, tsn_offsets
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
    crops: int = 1  # test: 1 (centre), 3 (along the long side) or 10 (corners + centre, flipped)
    flip: bool = True  # training: random horizontal flips (flow x negated on every flow)

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


def _frames_u8(sample: Sample, cfg: ExampleConfig, indices: np.ndarray) -> np.ndarray:
    """The frames (RGB, (N, H, W, 3)) or flows (on the 0..255 scale of 8-bit flow images, (N, H, W, 2)) at
    `indices`, each decoded once."""
    decoded: dict[int, np.ndarray] = {}
    for i in np.unique(indices):
        if not cfg.is_flow:
            decoded[int(i)] = sample.rgb_frame(int(i))
        elif sample.meta.flow_encoding == "jpeg":
            decoded[int(i)] = decode_flow_u8(sample.flow[cfg.modality][int(i)])
        else:  # lossless flow: brought to the 0..255 scale of the 8-bit images, clipped at the bound as they are
            bound = sample.meta.flow_bound
            flow = decode_flow(sample.flow[cfg.modality][int(i)], sample.meta.flow_encoding, bound)
            decoded[int(i)] = np.clip(255.0 * (flow + bound) / (2 * bound), 0.0, 255.0)
    return np.stack([decoded[int(i)] for i in indices.ravel()])


def _views(stack: np.ndarray, cfg: ExampleConfig, train: bool, rng: np.random.Generator) -> list[torch.Tensor]:
    """Crops of a (N, H, W, C) stack -> list of (N, C, S, S) float tensors in 0..255, flips applied."""
    h, w = stack.shape[1:3]
    flip = hflip_flow if cfg.is_flow else hflip_rgb
    if train:
        x = crop_resize(stack, multi_scale_crop_box(h, w, rng), cfg.input_size)
        return [flip(x) if cfg.flip and rng.random() < 0.5 else x]
    if cfg.crops == 1:
        return [crop_resize(stack, center_box(h, w, cfg.input_size), cfg.input_size)]
    if cfg.crops == 3:
        return [crop_resize(stack, box, cfg.input_size) for box in three_crop_boxes(h, w, cfg.input_size)]
    return [flip(v) if box[4] else v for box in ten_crop_boxes(h, w, cfg.input_size) for v in [crop_resize(stack, box, cfg.input_size)]]


def make_example(sample: Sample, cfg: ExampleConfig, train: bool, rng: np.random.Generator) -> tuple[torch.Tensor, int, str]:
    """One video -> (input, label, key).

    Input shapes: TSN (K * crops, C, S, S) with C = 3 or 2L (channels x0, y0, x1, y1, ...);
    I3D training (C, T, S, S), testing (clips * crops, C, T, S, S); C = 3 or 2.
    """
    if cfg.modality != RGB and cfg.modality not in sample.flow:
        raise ValueError(f"sample {sample.key} has no {cfg.modality} flow (it has {', '.join(sample.meta.modalities)})")
    length = sample.meta.num_flows if cfg.is_flow else sample.meta.num_frames
    if cfg.arch == "tsn":
        snippet = cfg.new_length if cfg.is_flow else 1
        idx = snippet_indices(tsn_offsets(length, cfg.segments, snippet, train, rng), snippet, length)  # (K, L)
    else:
        idx = clip_indices(length, cfg.clip_len, cfg.interval, 1 if train else cfg.clips, train, rng)  # (clips, T)
    views = _views(_frames_u8(sample, cfg, idx), cfg, train, rng)  # each (K*L or clips*T, C, S, S)
    norm = normalize_flow if cfg.is_flow else normalize_rgb
    out = []
    for v in views:
        v = norm(v)
        if cfg.arch == "tsn":
            out.append(stack_flow_channels(v, cfg.new_length) if cfg.is_flow else v)  # (K, C, S, S)
        else:
            n, T = idx.shape
            out.append(v.view(n, T, *v.shape[1:]).transpose(1, 2))  # (clips, C, T, S, S)
    x = torch.cat(out, 0)
    if cfg.arch == "i3d" and train:
        x = x[0]
    return x, sample.meta.label, sample.key


def shard_urls(root: str, split: str) -> list[str]:
    """The shard files of `split` listed in the dataset's dataset.json (local paths or URIs, as `root`).

    Raises:
        ValueError: the dataset has no shards for this split (names the splits it has).
    """
    info = read_dataset_info(root)
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


def tar_samples(
    src: Iterator[dict], handler: Callable[[Exception], bool] = wds.reraise_exception, select_files: Callable[[str], bool] | None = None
) -> Iterator[dict]:
    """Stage: shard URLs ({"url"}) -> samples ({member suffix: bytes}), as `wds.tarfile_to_samples` but opened
    through `storage`."""
    files = tar_file_expander(open_shards(src, handler), handler=handler, select_files=select_files)
    return group_by_keys(files, handler=handler)


def read_samples(urls: list[str]) -> wds.DataPipeline:
    """Every sample of these shards in order, undecoded (for inspection, not training)."""
    return wds.DataPipeline(wds.SimpleShardList(urls), tar_samples)


def _worker_rng(seed: int) -> np.random.Generator:
    info = torch.utils.data.get_worker_info()
    rank = torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() else 0
    return np.random.default_rng([seed, rank, info.id if info else 0])


def _examples(src, cfg: ExampleConfig, train: bool, seed: int, handler):
    """Stage: Sample -> example; a sample that cannot be made into one is skipped through `handler`."""
    rng = _worker_rng(seed)
    for sample in src:
        try:
            yield make_example(sample, cfg, train, rng)
        except ValueError as exc:
            handler(ValueError(f"{sample.key}: {exc}"))


def example_pipeline(
    urls: list[str],
    cfg: ExampleConfig,
    train: bool,
    seed: int = 0,
    shuffle_buffer: int = 128,
    epoch_samples: int | None = None,
    world_size: int = 1,
    workers: int = 0,
) -> wds.DataPipeline:
    """The streaming dataset of examples; for training an endless resampled stream cut into epochs of
    `epoch_samples` examples over all ranks and loader workers."""
    handler = SkipCounter()
    stages = [
        wds.ResampledShards(urls, seed=seed, deterministic=True) if train else wds.SimpleShardList(urls),
        *([] if train else [wds.split_by_node, wds.split_by_worker]),
        partial(tar_samples, handler=handler, select_files=member_filter((cfg.modality,))),  # skip other modalities
        *([wds.shuffle(shuffle_buffer, initial=shuffle_buffer // 2, seed=seed)] if train else []),
        wds.map(partial(decode_sample, modalities=(cfg.modality,)), handler=handler),
        partial(_examples, cfg=cfg, train=train, seed=seed, handler=handler),
    ]
    pipeline = wds.DataPipeline(*stages)
    if train and epoch_samples:
        pipeline = pipeline.with_epoch(math.ceil(epoch_samples / (world_size * max(workers, 1))))
    return pipeline


def make_loader(
    root: str,
    split: str,
    cfg: ExampleConfig,
    train: bool,
    batch_size: int,
    workers: int = 0,
    seed: int = 0,
    epoch_samples: int | None = None,
    world_size: int = 1,
) -> torch.utils.data.DataLoader:
    """A DataLoader over `split` of a preprocessed dataset (see `example_pipeline`)."""
    urls = shard_urls(root, split)
    dataset = example_pipeline(urls, cfg, train, seed, epoch_samples=epoch_samples, world_size=world_size, workers=workers)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers)
