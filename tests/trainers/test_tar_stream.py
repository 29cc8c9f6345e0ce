"""The fast tar reader against Python's tarfile: the same members for every header form tarfile writes."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest

from trainers.tar_stream import TarError, read_members

NAMES = [
    "v0.json",
    "v0.rgb.000000.jpg",
    "a" * 150 + ".flow.jpg",  # beyond ustar's 100 bytes: PAX path, GNU long name, or ustar prefix
    "d" * 120 + "/" + "v1.cls",
    "vidéo_ü.json",  # not ASCII
]


def tar_bytes(fmt: int, mtime: float = 0, names=NAMES) -> tuple[bytes, list[tuple[str, bytes]]]:
    rng = np.random.default_rng(len(names))
    members = [(n, rng.integers(0, 256, int(rng.integers(0, 2000)), dtype=np.uint8).tobytes()) for n in names]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), mtime
            tar.addfile(info, io.BytesIO(data))
        folder = tarfile.TarInfo("folder")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
    return buf.getvalue(), members


@pytest.mark.parametrize("fmt, mtime", [(tarfile.PAX_FORMAT, 0.0), (tarfile.PAX_FORMAT, 0), (tarfile.GNU_FORMAT, 0)])
def test_the_members_tarfile_reads(fmt, mtime):
    data, members = tar_bytes(fmt, mtime)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        expected = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isreg()]
    assert expected == members  # what was written, as tarfile reads it
    assert list(read_members(io.BytesIO(data))) == expected


def test_ustar_names_with_a_prefix():
    names = ["p" * 90 + "/" + "q" * 90 + ".jpg", "short.json"]
    data, members = tar_bytes(tarfile.USTAR_FORMAT, names=names)
    assert list(read_members(io.BytesIO(data))) == members


def test_unselected_members_are_read_past():
    data, members = tar_bytes(tarfile.PAX_FORMAT)
    kept = list(read_members(io.BytesIO(data), select=lambda name: name.endswith(".json")))
    assert kept == [m for m in members if m[0].endswith(".json")] and len(kept) == 2


def test_a_corrupt_or_cut_tar_is_an_error_naming_the_byte():
    data, members = tar_bytes(tarfile.PAX_FORMAT, 0)
    second = 512 + -(-len(members[0][1]) // 512) * 512  # the second member's header: after the first's data blocks
    broken = bytearray(data)
    broken[second + 10] ^= 0xFF
    reader = read_members(io.BytesIO(bytes(broken)))
    assert next(reader)[0] == NAMES[0]
    with pytest.raises(TarError, match=f"not a tar header at byte {second} "):
        next(reader)
    with pytest.raises(TarError, match="the tar ends inside a member"):
        list(read_members(io.BytesIO(data[: second + 600])))


def test_a_corrupt_pax_record_is_a_tar_error():
    """The PAX record's body is not under the header checksum: its damage must still be a TarError (which the
    loader skips with a warning), not a bare ValueError that would stop the training."""
    data, _ = tar_bytes(tarfile.PAX_FORMAT, 0.0)  # a PAX record before every member
    start = data.index(b" mtime=") - 2  # the record's length digits
    broken = data[:start] + b"z" + data[start + 1 :]
    with pytest.raises(TarError, match="corrupt PAX record"):
        list(read_members(io.BytesIO(broken)))
