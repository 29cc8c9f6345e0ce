"""Streaming data: the format round trip into examples, corrupt shards, uneven shards across ranks."""

from __future__ import annotations

import importlib.util
import io
import logging
import multiprocessing as mp
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from schemas.sample import Sample, dali_index_of, encode_flow, encode_jpeg, read_member_table, rgb_member
from tests.conftest import REPO
from tests.helpers import H, W, synthetic_sample, write_dataset
from trainers.data import ExampleConfig, example_pipeline, make_example, make_loader
from trainers.epochs import epoch_share, steps_in_epoch
from trainers.shard_reader import ShardReader, coalesce, sample_table, shard_urls
from trainers.tar_stream import read_members

STEP = 2 * 20.0 / 255  # one 8-bit level of flow at bound 20; JPEG may move a value by one more


def test_tsn_examples_take_the_sampled_frames_and_stack_flows():
    sample = synthetic_sample("v", 2)
    rgb_cfg = ExampleConfig(arch="tsn", modality="rgb", segments=3, input_size=32, crops=1)
    x, label, key = make_example(sample, rgb_cfg, train=False, rng=np.random.default_rng(0))
    assert x.shape == (3, 3, 32, 32) and label == 2 and key == "v"
    # test-time segment centres of 9 frames in 3 segments: frames 1, 4, 7 -> values 10, 40, 70
    means = (x * torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) + torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) * 255
    assert np.allclose(means.mean((1, 2, 3)).numpy(), [10, 40, 70], atol=2)
    flow_cfg = ExampleConfig(arch="tsn", modality="tvl1", segments=2, new_length=3, input_size=32, crops=3)
    x, _, _ = make_example(sample, flow_cfg, train=False, rng=np.random.default_rng(0))
    assert x.shape == (2 * 3, 6, 32, 32)  # 2 segments x 3 crops, 2L = 6 channels
    v = x[0].mean((1, 2)) * 20  # back to pixels (bound 20)
    assert np.allclose(v[0::2].numpy(), 2.0, atol=2 * STEP)  # x channels: the label
    assert np.allclose(v[1::2].numpy(), [0.1, 0.2, 0.3], atol=2 * STEP)  # y channels: consecutive flows i/10 from i = 1


def test_ten_crops_mirror_only_for_runs_trained_with_flips():
    """A run trained with --no-flip (direction can be the class) is never shown a mirror image: 10 crops are then
    the 5 unmirrored views, which equal the first 5 of the mirrored set."""
    sample = synthetic_sample("v", 1)
    cfg = ExampleConfig(arch="tsn", modality="tvl1", segments=2, new_length=2, input_size=32, crops=10)
    mirrored, _, _ = make_example(sample, cfg, train=False, rng=np.random.default_rng(0))
    plain, _, _ = make_example(sample, replace(cfg, flip=False), train=False, rng=np.random.default_rng(0))
    assert mirrored.shape[0] == 2 * 10 and plain.shape[0] == 2 * 5
    views = mirrored.view(10, 2, *mirrored.shape[1:])  # crop-major: (crops, segments, 2L, S, S)
    assert torch.equal(plain.view(5, 2, *plain.shape[1:]), views[:5])
    assert not torch.equal(views[5], views[0]) and torch.equal(views[5, :, 1], views[0, :, 1].flip(-1))  # a mirror image


def test_i3d_examples():
    sample = synthetic_sample("v", 1, frames=20)
    cfg = ExampleConfig(arch="i3d", modality="tvl1", clip_len=4, interval=2, clips=3, input_size=32, crops=1)
    train_x, _, _ = make_example(sample, cfg, train=True, rng=np.random.default_rng(0))
    test_x, _, _ = make_example(sample, cfg, train=False, rng=np.random.default_rng(0))
    assert train_x.shape == (2, 4, 32, 32) and test_x.shape == (3, 2, 4, 32, 32)
    y = test_x[0, 1].mean((1, 2)) * 20
    assert np.allclose(y.numpy(), [0.2, 0.4, 0.6, 0.8], atol=2 * STEP)  # flows 2, 4, 6, 8 of the first clip


@pytest.mark.parametrize("encoding", ["png16", "float16"])
def test_lossless_flow_gives_the_input_of_8bit_flow_clipped_at_the_bound(encoding):
    """A flow beyond the bound saturates at +-1 whatever the encoding, as the 8-bit images do."""
    field = np.broadcast_to(np.float32([35.0, -3.0]), (H, W, 2)).copy()  # x beyond the bound of 20
    cfg = ExampleConfig(arch="tsn", modality="tvl1", segments=1, new_length=1, input_size=32, crops=1)
    inputs = {}
    for enc in ("jpeg", encoding):
        sample = synthetic_sample("v", 0, frames=2)
        sample = replace(sample, meta=replace(sample.meta, flow_encoding=enc), flow={"tvl1": [encode_flow(field, enc, quality=100)]})
        inputs[enc] = make_example(sample, cfg, train=False, rng=np.random.default_rng(0))[0][0]
    assert float(inputs[encoding][0].min()) == 1.0 and float(inputs[encoding][0].max()) == 1.0  # x: 35 px -> bound
    assert torch.allclose(inputs[encoding], inputs["jpeg"], atol=1 / 127.5)  # y: within one 8-bit level


def test_flip_negates_flow_x_in_training_examples():
    sample = synthetic_sample("v", 2)
    cfg = ExampleConfig(arch="tsn", modality="tvl1", segments=1, new_length=2, input_size=32, flip=True)
    signs = {float(np.sign(make_example(sample, cfg, True, np.random.default_rng(s))[0][0, 0].mean().item())) for s in range(12)}
    assert signs == {1.0, -1.0}


def textured_sample(key: str, label: int, encoding: str, seed: int) -> Sample:
    """Noise frames and flows (what a decoder difference would show in), 48 x 40, 12 frames."""
    rng = np.random.default_rng(seed)
    sample = synthetic_sample(key, label, frames=12)
    rgb = [encode_jpeg(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8), 90) for _ in range(12)]
    flows = [encode_flow(rng.normal(0, 8, (40, 48, 2)).astype(np.float32), encoding) for _ in range(11)]
    meta = replace(sample.meta, height=40, width=48, flow_encoding=encoding)
    return Sample(meta=meta, rgb=rgb, flow={"tvl1": flows})


@pytest.mark.parametrize(
    "cfg, train, encoding",
    [
        (ExampleConfig(arch="tsn", modality="rgb", segments=3, input_size=32), True, "jpeg"),
        (ExampleConfig(arch="tsn", modality="tvl1", segments=2, new_length=3, input_size=32, crops=10), False, "jpeg"),
        (ExampleConfig(arch="i3d", modality="tvl1", clip_len=4, interval=2, input_size=24), True, "jpeg"),
        (ExampleConfig(arch="i3d", modality="rgb", clip_len=4, clips=2, input_size=24, crops=3), False, "jpeg"),
        (ExampleConfig(arch="tsn", modality="tvl1", segments=2, new_length=2, input_size=32), True, "png16"),
    ],
)
def test_decoding_on_the_device_gives_the_workers_inputs_on_the_cpu(tmp_path, cfg, train, encoding):
    """torchvision's decode_jpeg in the training process (nvJPEG on a GPU) against OpenCV in the workers: on the
    CPU the same tensors, bit for bit, for every recipe and crop."""
    write_dataset(tmp_path, {"train-000000.tar": [textured_sample(f"v{i}", i % 3, encoding, i) for i in range(5)]})
    kwargs = dict(train=train, batch_size=2, workers=0, seed=3)
    batches = list(make_loader(tmp_path, "train", cfg, **kwargs))
    on_device = list(make_loader(tmp_path, "train", cfg, decode_on=torch.device("cpu"), **kwargs))
    assert len(batches) == len(on_device) == 3
    for (x, y, k), (dx, dy, dk) in zip(batches, on_device):
        assert torch.equal(x, dx) and torch.equal(y, dy) and list(k) == list(dk)
        assert x.std() > 0.1  # textured: a decoder or crop difference would show


def test_round_trip_every_video_once_through_the_loader(tmp_path):
    samples = [synthetic_sample(f"v{i}", i % 3) for i in range(7)]
    write_dataset(tmp_path, {"train-000000.tar": samples[:4], "train-000001.tar": samples[4:]})
    cfg = ExampleConfig(arch="tsn", modality="tvl1", segments=2, new_length=2, input_size=32)
    loader = make_loader(tmp_path, "train", cfg, train=False, batch_size=3, workers=2)
    keys, labels = [], []
    for x, y, k in loader:
        assert x.shape[1:] == (2, 4, 32, 32)
        keys += list(k)
        labels += y.tolist()
    assert sorted(keys) == [f"v{i}" for i in range(7)]
    assert dict(zip(keys, labels)) == {f"v{i}": i % 3 for i in range(7)}


@pytest.mark.parametrize("world, workers", [(1, 1), (2, 2), (3, 2), (4, 3)])
@pytest.mark.parametrize("n", [1, 5, 7, 12])
def test_an_epoch_deals_every_sample_once_and_ranks_equal_shares(n, world, workers):
    """Training: over all ranks and workers every sample at least once and at most the padding (world - 1) twice,
    each rank the same count, even with fewer samples than ranks x workers; evaluation: each exactly once."""
    shares = {(r, w): epoch_share(n, 7, True, r, world, w, workers) for r in range(world) for w in range(workers)}
    per_rank = [sum(len(shares[r, w]) for w in range(workers)) for r in range(world)]
    assert per_rank == [-(-n // world)] * world
    seen = np.bincount(np.concatenate(list(shares.values())), minlength=n)
    assert seen.min() >= 1 and seen.sum() == per_rank[0] * world and seen.sum() - n <= world - 1
    test = np.concatenate([epoch_share(n, 7, False, r, world, w, workers) for r in range(world) for w in range(workers)])
    assert sorted(test) == list(range(n))


@pytest.mark.parametrize("n, world, workers, batch", [(7, 1, 0, 2), (10, 1, 4, 8), (9, 2, 2, 2), (13, 3, 2, 4), (2, 4, 3, 2)])
def test_the_schedule_counts_the_batches_the_loader_makes(n, world, workers, batch):
    """steps_in_epoch (the lr schedule's steps) against what a DataLoader makes of each worker's share."""
    made = []
    for rank in range(world):
        shares = [epoch_share(n, 0, True, rank, world, w, max(workers, 1)) for w in range(max(workers, 1))]
        made.append(sum(-(-len(share) // batch) for share in shares))
    assert made == [steps_in_epoch(n, world, workers, batch)] * world


def test_each_epoch_has_its_own_order_the_same_on_every_rank():
    orders = [np.concatenate([epoch_share(10, seed, True, r, 2) for r in range(2)]) for seed in (1, 1, 2)]
    assert np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[0], orders[2])
    assert sorted(orders[0]) == list(range(10))


def test_two_ranks_of_two_workers_read_every_video_once_an_epoch(tmp_path):
    """The loader itself (2 ranks x 2 loader workers, 9 videos in 2 shards): every video once, one padded repeat,
    both ranks the same number of examples; another epoch seed, another order."""
    write_dataset(
        tmp_path,
        {
            "train-000000.tar": [synthetic_sample(f"v{i}", 0) for i in range(6)],
            "train-000001.tar": [synthetic_sample(f"w{i}", 1) for i in range(3)],
        },
    )
    cfg = ExampleConfig(arch="tsn", modality="rgb", segments=1, input_size=16)
    table = sample_table(tmp_path, "train")

    def epoch(seed: int) -> list[list[str]]:
        ranks = []
        for rank in range(2):
            loader = torch.utils.data.DataLoader(example_pipeline(table, cfg, True, seed, rank, 2), batch_size=2, num_workers=2)
            batches = [list(keys) for _, _, keys in loader]
            assert len(batches) == steps_in_epoch(len(table), 2, 2, 2)  # what the lr schedule counts
            ranks.append([k for keys in batches for k in keys])
        return ranks

    ranks = epoch(seed=5)
    assert len(ranks[0]) == len(ranks[1]) == 5
    everything = ranks[0] + ranks[1]
    assert set(everything) == {f"v{i}" for i in range(6)} | {f"w{i}" for i in range(3)} and len(everything) == 10
    assert epoch(seed=5) == ranks and epoch(seed=6) != ranks


def test_a_corrupt_sample_is_skipped_with_a_warning_and_training_makes_up_for_it(tmp_path, caplog):
    write_dataset(
        tmp_path, {"train-000000.tar": [synthetic_sample(f"v{i}", 0) for i in range(3)], "train-000001.tar": [synthetic_sample("w", 1)]}
    )
    data = (tmp_path / "shards" / "train-000001.tar").read_bytes()
    (tmp_path / "shards" / "train-000001.tar").write_bytes(data[:700] + b"\xff" * 2000)  # a cut, overwritten tar
    cfg = ExampleConfig(arch="tsn", modality="rgb", segments=1, input_size=16)
    with caplog.at_level(logging.WARNING, logger="trainers.data"):
        keys = [k for _, _, ks in make_loader(tmp_path, "train", cfg, train=False, batch_size=1) for k in ks]
    assert sorted(keys) == ["v0", "v1", "v2"]
    assert any("skipped corrupt shard data (1 so far)" in r.message for r in caplog.records)
    # training: the lost example is made again from a good sample, so the epoch keeps its length (ranks stay equal)
    keys = [k for _, _, ks in make_loader(tmp_path, "train", cfg, train=True, batch_size=2) for k in ks]
    assert len(keys) == 4 and set(keys) == {"v0", "v1", "v2"}


def test_a_dataset_without_sample_ranges_still_trains(tmp_path, caplog):
    """index.parquet written before flowshard kept byte ranges: they come from the DALI indexes, or the tars."""
    write_dataset(tmp_path, {"train-000000.tar": [synthetic_sample(f"v{i}", 0) for i in range(3)]})
    exact = sample_table(tmp_path, "train")
    index = pq.read_table(tmp_path / "index.parquet")
    pq.write_table(index.drop_columns(["offset"]).set_column(5, "bytes", pa.array([0] * 3, pa.int64())), tmp_path / "index.parquet")
    with caplog.at_level(logging.WARNING, logger="trainers.shard_reader"):
        from_tars = sample_table(tmp_path, "train")  # write_dataset writes no DALI index: from the tar headers
    assert any("has no sample byte ranges" in r.message for r in caplog.records)
    assert all(np.array_equal(getattr(from_tars, a), getattr(exact, a)) for a in ("offset", "size", "head")) and exact.head.min() > 0
    with open(tmp_path / "shards" / "train-000000.tar", "rb") as tar:
        (tmp_path / "shards" / "train-000000.idx").write_text(dali_index_of(tar))
    (tmp_path / "shards" / "train-000000.tar").rename(tmp_path / "tar")  # so only the index can give them
    from_index = sample_table(tmp_path, "train")
    (tmp_path / "tar").rename(tmp_path / "shards" / "train-000000.tar")
    assert all(np.array_equal(getattr(from_index, a), getattr(exact, a)) for a in ("offset", "size", "head"))
    cfg = ExampleConfig(arch="tsn", modality="rgb", segments=1, input_size=16)
    assert sorted(k for _, _, ks in make_loader(tmp_path, "train", cfg, train=True, batch_size=2) for k in ks) == ["v0", "v1", "v2"]


RECIPES = [
    (ExampleConfig(arch="tsn", modality="rgb", segments=3, input_size=32), True, "jpeg"),
    (ExampleConfig(arch="tsn", modality="rgb", segments=5, input_size=24, crops=10), False, "jpeg"),
    (ExampleConfig(arch="tsn", modality="tvl1", segments=3, new_length=3, input_size=32), True, "jpeg"),
    (ExampleConfig(arch="tsn", modality="tvl1", segments=2, new_length=2, input_size=32, crops=3), False, "png16"),
    (ExampleConfig(arch="i3d", modality="tvl1", clip_len=4, interval=2, input_size=24), True, "float16"),
    (ExampleConfig(arch="i3d", modality="rgb", clip_len=4, clips=2, input_size=24, crops=3), False, "jpeg"),
]


@pytest.mark.parametrize("cfg, train, encoding", RECIPES)
def test_reading_only_the_chosen_members_gives_the_examples_of_the_whole_samples(tmp_path, cfg, train, encoding):
    """The loader reads each sample's head and its chosen members by range; for the same samples and generator
    state its examples equal, tensor for tensor, those made from the whole samples in memory (`make_example`),
    and those of the same samples written without member tables (read whole, as before them)."""
    samples = [textured_sample(f"v{i}", i % 3, encoding, i) for i in range(5)]
    write_dataset(tmp_path / "new", {"train-000000.tar": samples[:3], "train-000001.tar": samples[3:]})
    write_dataset(tmp_path / "old", {"train-000000.tar": samples[:3], "train-000001.tar": samples[3:]}, member_tables=False)
    assert sample_table(tmp_path / "new", "train").head.min() > 0 and sample_table(tmp_path / "old", "train").head.max() == 0
    by_member, whole = (list(make_loader(tmp_path / d, "train", cfg, train, batch_size=1, seed=4)) for d in ("new", "old"))
    rng, by_key = np.random.default_rng([4, 0, 0]), {s.key: s for s in samples}  # the generator of rank 0's only worker
    assert len(by_member) == len(whole) == 5
    for (x, y, (key,)), (wx, wy, (wkey,)) in zip(by_member, whole):
        ex, ey, ekey = make_example(by_key[key], cfg, train, rng)
        assert key == wkey == ekey and int(y) == int(wy) == ey
        assert torch.equal(x[0], ex) and torch.equal(wx[0], ex) and ex.std() > 0.1


def test_an_example_reads_its_chosen_members_and_little_else(tmp_path):
    """What a reader asks for, counted: a TSN RGB example of a 12-frame sample reads the head and its 3 frames (each
    with its header), a fraction of the sample; far apart, they are 3 reads, and the head 1."""
    samples = [textured_sample(f"v{i}", 0, "jpeg", i) for i in range(2)]
    write_dataset(tmp_path, {"train-000000.tar": samples})
    table = sample_table(tmp_path, "train")
    reader = ShardReader()
    cfg = ExampleConfig(arch="tsn", modality="rgb", segments=3, input_size=32)
    try:
        sample = reader.open_sample(table.ref(0)).result()
        opened = reader.stats.bytes
        suffixes = [rgb_member(i) for i in (1, 5, 9)]
        members = reader.members(sample, suffixes)()
    finally:
        reader.close()
    assert members == {name: samples[0].rgb[i] for name, i in zip(suffixes, (1, 5, 9))}
    assert opened == table.head[0] and reader.stats.bytes - opened == sum(len(m) + 512 for m in members.values())
    assert reader.stats.requests == 1 + 1 + 3  # the open, the head, three frames
    assert reader.stats.bytes < table.size[0] / 3
    assert cfg.segments == len(members)


def test_coalescing_joins_runs_and_never_reads_more_than_twice_what_is_used():
    assert coalesce([(0, 10), (10, 20), (20, 30)]) == [(0, 30)]  # a TSN flow snippet: one read
    assert coalesce([(0, 10), (20, 30), (40, 50)]) == [(0, 50)]  # every other member (I3D at interval 2)
    assert coalesce([(1000, 1010), (0, 10), (500, 510)]) == [(0, 10), (500, 510), (1000, 1010)]  # far apart: apart
    rng = np.random.default_rng(0)
    for _ in range(200):
        starts = np.sort(rng.choice(10_000, 20, replace=False)) * 10
        spans = [(int(a), int(a) + int(rng.integers(1, 10))) for a in starts]
        runs = coalesce(spans)
        assert all(any(r0 <= a and b <= r1 for r0, r1 in runs) for a, b in spans)  # everything asked for is read
        for r0, r1 in runs:
            used = sum(b - a for a, b in spans if r0 <= a and b <= r1)
            assert r1 - r0 <= 2 * used


def test_a_member_table_that_lies_is_caught_and_the_sample_skipped(tmp_path, caplog):
    """A member's header that is not where the table says (an overwritten shard) fails its check: the example is
    skipped with a warning, never made of the wrong bytes."""
    write_dataset(tmp_path, {"train-000000.tar": [synthetic_sample(f"v{i}", 0, frames=3) for i in range(2)]})
    table = sample_table(tmp_path, "train")
    path = tmp_path / "shards" / "train-000000.tar"
    data = bytearray(path.read_bytes())
    start = int(table.offset[1] + table.head[1])  # v1's first frame header
    data[start : start + 512] = bytes(512)
    path.write_bytes(bytes(data))
    cfg = ExampleConfig(arch="tsn", modality="rgb", segments=3, input_size=16)
    with caplog.at_level(logging.WARNING, logger="trainers.data"):
        keys = [k for _, _, ks in make_loader(tmp_path, "train", cfg, train=False, batch_size=1) for k in ks]
    assert keys == ["v0"]
    assert any("not a tar header" in r.message and "v1" in r.message for r in caplog.records)


def test_a_corrupt_member_table_is_a_skipped_sample_not_a_huge_read(tmp_path, caplog):
    """A member table whose numbers were overwritten (a size of 2**45, an offset back into the head) is refused
    before any read it would ask for: the sample is skipped with a warning, the others read."""
    write_dataset(tmp_path, {"train-000000.tar": [synthetic_sample(f"v{i}", 0, frames=3) for i in range(3)]})
    path = tmp_path / "shards" / "train-000000.tar"
    data = path.read_bytes()
    table = sample_table(tmp_path, "train")
    for i, (row, column, value) in enumerate([(0, 1, 2**45), (2, 0, 16)]):  # v0: a size; v2: an offset into the head
        start, end = int(table.offset[2 * i]), int(table.offset[2 * i] + table.head[2 * i])
        stored = dict(read_members(io.BytesIO(data[start:end])))[f"v{2 * i}.members.npy"]
        places = read_member_table(stored).copy()
        places[row, column] = value
        changed = io.BytesIO()
        np.save(changed, places)
        data = data[:start] + data[start:end].replace(stored, changed.getvalue()) + data[end:]
    path.write_bytes(data)
    cfg = ExampleConfig(arch="tsn", modality="rgb", segments=2, input_size=16)
    with caplog.at_level(logging.WARNING, logger="trainers.data"):
        keys = [k for _, _, ks in make_loader(tmp_path, "train", cfg, train=False, batch_size=1) for k in ks]
    assert keys == ["v1"]
    assert sum("places members outside the sample" in r.message for r in caplog.records) == 2


def test_missing_split_is_a_clear_error(tmp_path):
    write_dataset(tmp_path, {"train-000000.tar": [synthetic_sample("v", 0)]})
    with pytest.raises(ValueError, match="no 'test' shards"):
        shard_urls(tmp_path, "test")


def _rank_loop(rank: int, world: int, root: str, port: int, results) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    cfg = ExampleConfig(arch="tsn", modality="rgb", segments=1, input_size=16)
    dataset = example_pipeline(sample_table(root, "train"), cfg, train=True, rank=rank, world_size=world)
    loader = torch.utils.data.DataLoader(dataset, batch_size=1)
    steps = 0
    for _ in loader:
        t = torch.ones(1)
        torch.distributed.all_reduce(t)  # would hang if the ranks ran different numbers of steps
        steps += 1
    torch.distributed.barrier()
    results[rank] = steps
    torch.distributed.destroy_process_group()


@pytest.mark.slow  # two DDP ranks in processes of their own
def test_uneven_shards_across_ranks_do_not_hang(tmp_path):
    """3 shards of 1, 2 and 6 videos on 2 ranks: dealt by sample and padded, both ranks take the same steps."""
    write_dataset(
        tmp_path,
        {
            "train-000000.tar": [synthetic_sample("a", 0)],
            "train-000001.tar": [synthetic_sample(f"b{i}", 1) for i in range(2)],
            "train-000002.tar": [synthetic_sample(f"c{i}", 2) for i in range(6)],
        },
    )
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    results = ctx.Manager().dict()
    procs = [ctx.Process(target=_rank_loop, args=(r, 2, str(tmp_path), port, results)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
    assert not alive, "a rank hung"
    assert dict(results) == {0: 5, 1: 5}


def test_the_loader_benchmarks_rawframes_tree_makes_the_same_examples(tmp_path):
    """bench/loader_throughput.py compares storage layouts only if its mmaction2-style rawframes reader makes
    the examples the shard loader makes: the same frames, crops, flips and decoding, from files."""
    spec = importlib.util.spec_from_file_location("loader_throughput", REPO / "bench" / "loader_throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    samples = [textured_sample(f"v{i}", i, "jpeg", i) for i in range(2)]
    write_dataset(tmp_path / "data", {"train-000000.tar": samples})
    videos = bench.export_rawframes(sample_table(tmp_path / "data", "train"), tmp_path / "raw")
    assert len(list((tmp_path / "raw" / "v1").glob("flow_x_*.jpg"))) == 11 and (tmp_path / "raw" / "v1" / "img_00012.jpg").is_file()
    for cfg in bench.RECIPES.values():
        cfg = replace(cfg, input_size=24)
        raw = bench.Rawframes(videos, cfg, bench.ReadTotals())
        for i, sample in enumerate(samples):
            raw.rng = np.random.default_rng(i)
            x, label, key = raw[i]
            expected = make_example(sample, cfg, True, np.random.default_rng(i))
            assert torch.equal(x, expected[0]) and (label, key) == expected[1:]
    assert raw.reads.per_example(2)["read_requests"] > 1  # the files it opened, counted
