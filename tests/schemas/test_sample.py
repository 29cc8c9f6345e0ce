"""The sample format: flow encodings, and samples through a real tar read back by plain webdataset."""

from __future__ import annotations

import io
import tarfile
from dataclasses import replace

import numpy as np
import pytest
import webdataset as wds

from schemas.sample import (
    FORMAT_VERSION,
    MEMBERS,
    Sample,
    SampleMeta,
    dali_index,
    decode_flow,
    decode_flow_u8,
    decode_image,
    decode_sample,
    encode_flow,
    encode_jpeg,
    encode_sample,
    flow_members,
    head_bytes,
    member_filter,
    member_suffixes,
    read_member_table,
    rgb_member,
    sample_ranges,
    with_member_table,
    write_sample,
)
from trainers.tar_stream import read_members


def smooth_flow(h=48, w=64, seed=0, scale=8.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    a, b, c, d = rng.uniform(-1, 1, 4)
    return scale * np.stack([np.sin(3 * xx + a) + b * yy, np.cos(2 * yy + c) + d * xx], -1).astype(np.float32)


@pytest.mark.parametrize(
    "encoding, tolerance",
    [("jpeg", 2 * 20 / 255 * 2.5), ("png16", 20 / 65535 + 1e-5), ("float16", 0.01)],  # png16: half a step
)
def test_flow_encodings_round_trip(encoding, tolerance):
    flow = smooth_flow()
    parts = encode_flow(flow, encoding, bound=20.0)
    assert len(parts) == len(flow_members("tvl1", 0, encoding))
    back = decode_flow(parts, encoding, bound=20.0)
    assert back.shape == flow.shape and back.dtype == np.float32
    assert np.abs(back - flow).max() <= tolerance


def test_jpeg_quality_changes_size_and_error():
    flow = smooth_flow(seed=1) + np.random.default_rng(1).normal(0, 0.5, (48, 64, 2)).astype(np.float32)
    low, high = encode_flow(flow, quality=30), encode_flow(flow, quality=95)
    assert sum(map(len, low)) < sum(map(len, high))
    assert np.abs(decode_flow(high) - flow).mean() < np.abs(decode_flow(low) - flow).mean()


def test_decode_flow_u8_gives_stored_values():
    x = np.full((8, 8), 200, np.uint8)
    y = np.full((8, 8), 50, np.uint8)
    stored = decode_flow_u8((encode_jpeg(x), encode_jpeg(y)))
    assert stored.shape == (8, 8, 2) and stored.dtype == np.uint8
    assert np.abs(stored.astype(int) - np.stack([x, y], -1)).max() <= 1  # every pixel, within JPEG's rounding


def make_sample(key="v_Move000_g01_c01", frames=3, encoding="jpeg") -> Sample:
    rng = np.random.default_rng(0)
    rgb = [encode_jpeg(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)) for _ in range(frames)]
    flows = [encode_flow(smooth_flow(24, 32, seed=i), encoding) for i in range(frames - 1)]
    meta = SampleMeta(
        video_id=key,
        label=2,
        label_name="Move180",
        split="train",
        source="/x.mp4",
        fps=25.0,
        num_frames=frames,
        height=24,
        width=32,
        modalities=("rgb", "tvl1"),
        flow_encoding=encoding,
        flow_params={"tvl1": {"preset": "opencv"}},
    )
    return Sample(meta=meta, rgb=rgb, flow={"tvl1": flows})


@pytest.mark.parametrize("encoding", ["jpeg", "png16", "float16"])
def test_sample_round_trip_through_a_tar_read_by_plain_webdataset(tmp_path, encoding):
    samples = [make_sample(f"video_{i}", frames=3 + i, encoding=encoding) for i in range(3)]
    path = str(tmp_path / "train-000000.tar")
    with tarfile.open(path, "w|") as sink:
        for s in samples:
            write_sample(sink, encode_sample(s))
    read = list(wds.WebDataset(path, shardshuffle=False))
    assert [r["__key__"] for r in read] == ["video_0", "video_1", "video_2"]
    for original, members in zip(samples, read):
        back = decode_sample(members)
        assert back.meta == original.meta
        assert back.rgb == original.rgb and back.flow == original.flow
        assert int(members["cls"]) == 2
        assert back.rgb_frame(1).shape == (24, 32, 3)
        assert back.flow_frame("tvl1", 0).shape == (24, 32, 2)
        assert len(back.rgb) == original.meta.num_frames and len(back.flow["tvl1"]) == original.meta.num_frames - 1


def test_write_sample_writes_the_bytes_webdatasets_tar_writer_writes():
    """Shards are written with the standard library (webdataset's writer imports torch); their bytes stay those
    webdataset's TarWriter gives, so shards written before and after the change are identical."""
    samples = [make_sample(f"video_{i}", frames=2 + i, encoding=e) for i, e in enumerate(("jpeg", "png16", "float16"))]
    ours, theirs = io.BytesIO(), io.BytesIO()
    with tarfile.open(fileobj=ours, mode="w|") as sink:
        for s in samples:
            write_sample(sink, encode_sample(s))
    with wds.TarWriter(theirs, mtime=0) as sink:
        for s in samples:
            sink.write(with_member_table(encode_sample(s)))
    assert len(ours.getvalue()) > 10240 and ours.getvalue() == theirs.getvalue()


@pytest.mark.parametrize("key", ["v_Move000_g01_c01", "k" * 120, "ویدیو_۱"])  # one header each; PAX names; non-ASCII
@pytest.mark.parametrize("modalities", [("rgb", "tvl1"), ("tvl1", "warp_tvl1")])
def test_the_member_table_places_every_member_after_it(key, modalities):
    """The head (the members up to the table, `head_bytes` long) is read first; the table then gives each frame's
    and flow's data by offset and size, in `member_suffixes` order, for every name length and modality set."""
    original = make_sample(key, frames=4)
    original.meta = replace(original.meta, modalities=modalities)
    original.flow = {m: original.flow["tvl1"] for m in modalities if m != "rgb"}
    original.rgb = original.rgb if "rgb" in modalities else []
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w|") as sink:
        first = write_sample(sink, encode_sample(make_sample("first")))  # offsets are from the sample's own start
        start = sink.offset
        components = write_sample(sink, encode_sample(original))
    data = buf.getvalue()
    tar_members = {name: m for name, m in read_members(io.BytesIO(data[start:]))}
    head = head_bytes(components, start)
    assert [n for n, _ in read_members(io.BytesIO(data[start : start + head]))] == [f"{key}.{s}" for s in ("cls", "json", MEMBERS)]
    table = read_member_table(tar_members[f"{key}.{MEMBERS}"])
    suffixes = member_suffixes(original.meta)
    assert len(table) == len(suffixes) == len(tar_members) - 3
    for suffix, (offset, size) in zip(suffixes, table.tolist(), strict=True):
        assert data[start + offset : start + offset + size] == tar_members[f"{key}.{suffix}"]
    end = components[-1][1] + -(-components[-1][2] // 512) * 512
    assert sample_ranges(dali_index([first, components]))[key] == (start, end - start, head)


def test_empty_or_cut_members_are_a_value_error_not_a_codec_error():
    """A 0-byte or cut member (an overwritten shard) is a ValueError the loader skips, for every encoding."""
    flow = encode_flow(smooth_flow(), "float16")[0]
    for decode in (lambda: decode_image(b""), lambda: decode_image(b"\xff\xd8" + b"\0" * 30), lambda: decode_flow((b"",), "float16")):
        with pytest.raises(ValueError):
            decode()
    with pytest.raises(ValueError, match="float16"):
        decode_flow((flow[:60],), "float16")


def test_a_corrupt_member_table_is_one_clear_error():
    for data in (b"", b"junk" * 40, encode_sample(make_sample())["json"]):
        with pytest.raises(ValueError, match="corrupt member table"):
            read_member_table(data)


def parse_dali_index(text: str) -> list[list[tuple[str, int, int, str]]]:
    """An index file read as DALI's ParseIndexFile / ParseSampleDesc read version 1.2: `v1.2 N`, then N lines of
    `<ext> <offset> <size> <filename>` groups split on whitespace."""
    lines = text.splitlines()
    version, count = lines[0].split()
    assert version == "v1.2" and int(count) == len(lines) - 1 > 0
    samples = []
    for line in lines[1:]:
        fields = line.split()
        assert len(fields) % 4 == 0, line
        samples.append([(fields[i], int(fields[i + 1]), int(fields[i + 2]), fields[i + 3]) for i in range(0, len(fields), 4)])
    return samples


def test_the_dali_index_finds_every_member_of_a_shard_by_its_offset(tmp_path):
    """Every member read back through the index equals the member as tar reads it; offsets are those of the data
    (GNU tar's header block + 1), multiples of 512, and the extension is everything after the key's dot."""
    import shutil
    import subprocess

    from schemas.sample import dali_index

    samples = [make_sample(f"video_{i}", frames=2 + i, encoding=e) for i, e in enumerate(("jpeg", "png16", "float16"))]
    path = tmp_path / "train-000000.tar"
    with tarfile.open(path, "w|") as sink:
        components = [write_sample(sink, encode_sample(s)) for s in samples]
    index = parse_dali_index(dali_index(components))
    data = path.read_bytes()
    with tarfile.open(path) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    assert sum(len(sample) for sample in index) == len(members)
    for sample, original in zip(index, samples, strict=True):
        for ext, offset, size, name in sample:
            assert name == f"{original.key}.{ext}" and offset % 512 == 0
            assert data[offset : offset + size] == members[name]
    if shutil.which("tar"):  # GNU tar lists each member's header block: the data starts one block later
        listing = subprocess.run(["tar", "--list", "--block-number", "--file", str(path)], capture_output=True, text=True).stdout
        blocks = {line.split(": ", 1)[1]: int(line.split(":")[0].removeprefix("block ")) for line in listing.splitlines()}
        assert all(offset == (blocks[name] + 1) * 512 for sample in index for _, offset, _, name in sample)


def test_plain_webdataset_decoders_read_the_images(tmp_path):
    path = str(tmp_path / "s.tar")
    with wds.TarWriter(path) as sink:
        sink.write(encode_sample(make_sample()))
    (decoded,) = list(wds.WebDataset(path, shardshuffle=False).decode("rgb8"))
    assert decoded[rgb_member(0)].shape == (24, 32, 3)
    x_name, _ = flow_members("tvl1", 1)
    assert decoded[x_name].shape[:2] == (24, 32)
    assert decoded["json"]["format_version"] == FORMAT_VERSION


def test_member_filter_reads_one_modality(tmp_path):
    path = str(tmp_path / "s.tar")
    with wds.TarWriter(path) as sink:
        sink.write(encode_sample(make_sample()))
    (members,) = list(wds.WebDataset(path, shardshuffle=False, select_files=member_filter(("tvl1",))))
    tvl1 = {name for i in range(2) for name in flow_members("tvl1", i)}
    assert {k for k in members if not k.startswith("__")} == {"json", "cls", *tvl1}  # no RGB member read
    sample = decode_sample(members, modalities=("tvl1",))
    assert sample.rgb == [] and len(sample.flow["tvl1"]) == 2
    with pytest.raises(ValueError, match="lacks member"):
        decode_sample(members)  # all modalities asked for, RGB absent


def test_encode_sample_rejects_inconsistent_samples():
    s = make_sample()
    s.flow["tvl1"] = s.flow["tvl1"][:-1]
    with pytest.raises(ValueError, match="1 tvl1 flows for 3 frames"):
        encode_sample(s)
    bad = make_sample(key="a.b")
    with pytest.raises(ValueError, match="without '.' or '/'"):
        encode_sample(bad)


def test_decode_sample_rejects_foreign_or_incomplete_members():
    members = encode_sample(make_sample())
    with pytest.raises(ValueError, match="no json member"):
        decode_sample({"__key__": "x", "cls": b"1"})
    del members[rgb_member(2)]
    with pytest.raises(ValueError, match="lacks member 'rgb.000002.jpg'"):
        decode_sample(members)
