"""The shard sample format: one WebDataset sample per video. The single definition, used to write and to read.

A sample holds, under the key `<video_id>` (no '.' or '/'):

    cls                       the label as ASCII digits (-1 when unlabelled)
    json                      metadata (SampleMeta as JSON): ids, label, fps, frame count, source, modalities
    members.npy               the member table: (n, 2) int64, for each member after it in the tar (the frames and
                              flows, in `member_suffixes` order) the offset of its data from the sample's start
                              and its size; a loader reads the sample's head (up to here, `head` bytes in
                              index.parquet) and then only the members an example uses, by byte range
    rgb.000000.jpg ...        RGB frames, 0-based frame index i
    tvl1.000000.x.jpg ...     flow i = frame i -> frame i+1 (N frames give N-1 flows), x and y as 8-bit
    tvl1.000000.y.jpg         grayscale JPEGs, p = round(255 * (v + B) / (2B)) clipped, B = flow bound
    warp_tvl1.000000.x.jpg    the same for camera-motion-compensated flow

With `flow_encoding="png16"` the flow members end in `.x.png` / `.y.png` (16-bit, p = round(65535 (v+B)/2B)),
with `"float16"` each flow is one `<modality>.<i>.npy` member (H, W, 2) float16. Frame indices are 0-based
everywhere (rawframe tools number files from 1; that off-by-one does not exist here). Members are laid out in the
tar sorted by suffix, as webdataset's TarWriter lays them out.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

FORMAT_VERSION = 1

JSON = "json"
CLS = "cls"
MEMBERS = "members.npy"
RGB = "rgb"
FLOW_MODALITIES = ("tvl1", "warp_tvl1")
MODALITIES = (RGB, *FLOW_MODALITIES)
FLOW_ENCODINGS = ("jpeg", "png16", "float16")
DEFAULT_FLOW_BOUND = 20.0  # TSN / mmaction2 / I3D practice
DEFAULT_JPEG_QUALITY = 95


def rgb_member(index: int) -> str:
    """Member name of RGB frame `index` in a sample."""
    return f"{RGB}.{index:06d}.jpg"


def flow_members(modality: str, index: int, encoding: str = "jpeg") -> tuple[str, ...]:
    """Member name(s) of flow `index` (frame index -> index + 1): (x, y) for images, (npy,) for float16."""
    if encoding == "jpeg":
        return f"{modality}.{index:06d}.x.jpg", f"{modality}.{index:06d}.y.jpg"
    if encoding == "png16":
        return f"{modality}.{index:06d}.x.png", f"{modality}.{index:06d}.y.png"
    if encoding == "float16":
        return (f"{modality}.{index:06d}.npy",)
    raise ValueError(f"unknown flow encoding {encoding!r}; choose one of {', '.join(FLOW_ENCODINGS)}")


def member_suffixes(meta: SampleMeta) -> list[str]:
    """The suffixes of a sample's frames and flows in tar order: the rows of its member table."""
    names = [rgb_member(i) for i in range(meta.num_frames)] if RGB in meta.modalities else []
    for modality in FLOW_MODALITIES:
        if modality in meta.modalities:
            names += [n for i in range(meta.num_flows) for n in flow_members(modality, i, meta.flow_encoding)]
    return sorted(names)


# --- flow quantisation (pure) ----------------------------------------------------------------------------


def quantize(flow: np.ndarray, bound: float = DEFAULT_FLOW_BOUND) -> tuple[np.ndarray, np.ndarray]:
    """Flow (..., 2) float -> (x, y) uint8 images with p = clip(round(255 * (v + B) / (2B)), 0, 255).

    The formula of denseflow / dense_flow / mmaction2; values beyond +-B saturate. Zero flow maps to 128.
    """
    flow = np.asarray(flow)
    if flow.shape[-1] != 2:
        raise ValueError(f"flow must have a last axis of size 2 (x, y), got shape {flow.shape}")
    if bound <= 0:
        raise ValueError(f"flow bound must be positive, got {bound}")
    p = np.clip(np.rint(255.0 * (flow.astype(np.float32) + bound) / (2.0 * bound)), 0, 255).astype(np.uint8)
    return p[..., 0], p[..., 1]


def dequantize(x: np.ndarray, y: np.ndarray, bound: float = DEFAULT_FLOW_BOUND) -> np.ndarray:
    """(x, y) uint8 images -> flow (..., 2) float32 in pixels; the inverse of `quantize` within B/255 for |v| <= B."""
    p = np.stack([np.asarray(x), np.asarray(y)], axis=-1).astype(np.float32)
    return p * (2.0 * bound / 255.0) - bound


def _quantize16(flow: np.ndarray, bound: float) -> tuple[np.ndarray, np.ndarray]:
    p = np.clip(np.rint(65535.0 * (flow.astype(np.float64) + bound) / (2.0 * bound)), 0, 65535).astype(np.uint16)
    return p[..., 0], p[..., 1]


def _dequantize16(x: np.ndarray, y: np.ndarray, bound: float) -> np.ndarray:
    p = np.stack([x, y], axis=-1).astype(np.float32)
    return p * (2.0 * bound / 65535.0) - bound


# --- image and flow (de)coding ---------------------------------------------------------------------------


def encode_jpeg(image: np.ndarray, quality: int = DEFAULT_JPEG_QUALITY) -> bytes:
    """uint8 (H, W) grayscale or (H, W, 3) RGB -> JPEG bytes."""
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"expected a uint8 (H, W) or (H, W, 3) image, got {image.dtype} {image.shape}")
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"JPEG encoding failed for an image of shape {image.shape}")
    return buf.tobytes()


def decode_image(data: bytes, color: bool = True) -> np.ndarray:
    """JPEG/PNG bytes -> (H, W, 3) RGB uint8 (color) or (H, W) grayscale (8- or 16-bit as stored)."""
    flags = cv2.IMREAD_COLOR if color else cv2.IMREAD_UNCHANGED
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flags) if len(data) else None
    except cv2.error:
        image = None
    if image is None:
        raise ValueError("could not decode image bytes (corrupt or not an image)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if color else image


def quantize_flow(flow: np.ndarray, encoding: str = "jpeg", bound: float = DEFAULT_FLOW_BOUND) -> np.ndarray:
    """Flow (..., 2) float -> the values an encoding stores, (..., 2): uint8 (jpeg), uint16 (png16) or float16."""
    if encoding == "jpeg":
        return np.stack(quantize(flow, bound), axis=-1)
    if encoding == "png16":
        return np.stack(_quantize16(np.asarray(flow), bound), axis=-1)
    if encoding == "float16":
        return np.asarray(flow, dtype=np.float16)
    raise ValueError(f"unknown flow encoding {encoding!r}; choose one of {', '.join(FLOW_ENCODINGS)}")


def encode_quantized_flow(q: np.ndarray, encoding: str = "jpeg", quality: int = DEFAULT_JPEG_QUALITY) -> tuple[bytes, ...]:
    """One quantized flow field (H, W, 2) from `quantize_flow` -> the bytes of its member(s), in `flow_members` order."""
    if encoding == "jpeg":
        return tuple(encode_jpeg(np.ascontiguousarray(q[..., i]), quality) for i in range(2))
    if encoding == "png16":
        out = []
        for i in range(2):
            ok, buf = cv2.imencode(".png", np.ascontiguousarray(q[..., i]))
            if not ok:
                raise ValueError("16-bit PNG encoding failed")
            out.append(buf.tobytes())
        return tuple(out)
    if encoding == "float16":
        return (_npy(np.asarray(q, dtype=np.float16)),)
    raise ValueError(f"unknown flow encoding {encoding!r}; choose one of {', '.join(FLOW_ENCODINGS)}")


def encode_flow(
    flow: np.ndarray, encoding: str = "jpeg", bound: float = DEFAULT_FLOW_BOUND, quality: int = DEFAULT_JPEG_QUALITY
) -> tuple[bytes, ...]:
    """One flow field (H, W, 2) float -> the bytes of its member(s), in `flow_members` order."""
    return encode_quantized_flow(quantize_flow(flow, encoding, bound), encoding, quality)


def decode_flow(parts: tuple[bytes, ...], encoding: str = "jpeg", bound: float = DEFAULT_FLOW_BOUND) -> np.ndarray:
    """The inverse of `encode_flow`: member bytes -> (H, W, 2) float32 flow in pixels."""
    if encoding == "float16":
        return _from_npy(parts[0], "could not decode a float16 flow").astype(np.float32)
    x, y = (decode_image(p, color=False) for p in parts)
    return _dequantize16(x, y, bound) if encoding == "png16" else dequantize(x, y, bound)


def decode_flow_u8(parts: tuple[bytes, bytes]) -> np.ndarray:
    """JPEG flow members -> (H, W, 2) uint8 as stored, for loaders that normalise (p - 127.5) / 127.5 themselves."""
    return np.stack([decode_image(p, color=False) for p in parts], axis=-1)


# --- the sample ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleMeta:
    """What `json` holds. `flow_params` maps each flow modality to the parameters it was computed with."""

    video_id: str
    label: int
    label_name: str
    split: str
    source: str  # the video file it came from
    fps: float  # frame rate of the stored frames
    num_frames: int  # frames after resampling and max_frames (stored as RGB when rgb is a modality); flows: num_frames - 1
    height: int
    width: int
    modalities: tuple[str, ...]
    flow_encoding: str = "jpeg"
    flow_bound: float = DEFAULT_FLOW_BOUND
    jpeg_quality: int = DEFAULT_JPEG_QUALITY
    flow_params: dict = field(default_factory=dict)
    homographies: list = field(default_factory=list)  # warp_tvl1: per flow {"found": bool, "inliers": int, "matches": int}
    start_sec: float | None = None
    end_sec: float | None = None
    format_version: int = FORMAT_VERSION
    # How the stored frames were turned for display (the video's display matrix): degrees counter-clockwise, then a
    # mirror image. Written to `json` only when the video had one (see `meta_json`).
    rotation: int = 0
    mirrored: bool = False
    # Frames of the video that damaged packets lost (decoded past, as players do), and when they were to be shown
    # ('1.44-1.72 s'): the stored frames skip them. Written only when some were lost.
    frames_lost: int = 0
    lost_at: str = ""

    @property
    def num_flows(self) -> int:
        """Flows per modality: one per consecutive frame pair."""
        return max(self.num_frames - 1, 0)


@dataclass
class Sample:
    """A video's sample with its members still encoded; decode frames one at a time with the methods."""

    meta: SampleMeta
    rgb: list[bytes] = field(default_factory=list)  # one JPEG per frame
    flow: dict[str, list[tuple[bytes, ...]]] = field(default_factory=dict)  # modality -> per-flow member bytes

    @property
    def key(self) -> str:
        """The WebDataset key: the video id."""
        return self.meta.video_id

    def rgb_frame(self, index: int) -> np.ndarray:
        """Frame `index` as (H, W, 3) RGB uint8."""
        return decode_image(self.rgb[index], color=True)

    def flow_frame(self, modality: str, index: int) -> np.ndarray:
        """Flow `index` (frame index -> index + 1) of `modality` as (H, W, 2) float32 pixels."""
        return decode_flow(self.flow[modality][index], self.meta.flow_encoding, self.meta.flow_bound)


# Fields added to format version 1 after it was first written, with the value that means "not there": left out of
# `json` at that value, so the samples of videos without them keep the bytes they had (and older readers read them).
LATER_FIELDS = {"rotation": 0, "mirrored": False, "frames_lost": 0, "lost_at": ""}


def meta_json(meta: SampleMeta) -> bytes:
    """The `json` member of a sample."""
    raw = {k: v for k, v in asdict(meta).items() if not (k in LATER_FIELDS and v == LATER_FIELDS[k])}
    return json.dumps(raw).encode()


def encode_sample(sample: Sample) -> dict[str, bytes]:
    """Sample -> {"__key__": key, member suffix: bytes}, ready for `write_sample` (or `webdataset.TarWriter.write`).

    Raises:
        ValueError: the key is not a valid WebDataset key, a flow modality is unknown, or frame/flow counts disagree
            with the metadata.
    """
    meta = sample.meta
    if not meta.video_id or "." in meta.video_id or "/" in meta.video_id:
        raise ValueError(f"sample key {meta.video_id!r} must be non-empty without '.' or '/'")
    if RGB in meta.modalities and len(sample.rgb) != meta.num_frames:
        raise ValueError(f"{meta.video_id}: {len(sample.rgb)} RGB frames but num_frames = {meta.num_frames}")
    out = {"__key__": meta.video_id, JSON: meta_json(meta), CLS: str(meta.label).encode()}
    for i, data in enumerate(sample.rgb):
        out[rgb_member(i)] = data
    for modality, flows in sample.flow.items():
        if modality not in FLOW_MODALITIES:
            raise ValueError(f"{meta.video_id}: unknown flow modality {modality!r}; expected one of {FLOW_MODALITIES}")
        if len(flows) != meta.num_flows:
            raise ValueError(f"{meta.video_id}: {len(flows)} {modality} flows for {meta.num_frames} frames (expected {meta.num_flows})")
        for i, parts in enumerate(flows):
            for name, data in zip(flow_members(modality, i, meta.flow_encoding), parts, strict=True):
                out[name] = data
    return out


def _npy(array: np.ndarray) -> bytes:
    """An array as the bytes of a .npy file (a float16 flow member, the member table)."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _from_npy(data: bytes, what: str) -> np.ndarray:
    """`_npy`'s inverse; bytes that are no .npy array are a ValueError: "<what> (why)"."""
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{what} ({exc})") from None


def _tar_info(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uname, info.gname = size, mtime, 0o444, "bigdata", "bigdata"
    return info


def _padded(size: int) -> int:
    return -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def with_member_table(members: dict[str, bytes], tar_format: int = tarfile.PAX_FORMAT, mtime: int = 0) -> dict[str, bytes]:
    """An encoded sample with its member table (`MEMBERS`) added: where each member after the table will lie once
    the sample is written to a tar of `tar_format` (sorted by suffix, as `write_sample` and webdataset's TarWriter
    write it), as offsets from the sample's first header. Pure: every header's length is known before writing
    (a long or non-ASCII name takes a PAX record)."""
    key = members["__key__"]
    suffixes = sorted([s for s in members if s not in ("__key__", MEMBERS)] + [MEMBERS])
    after = [s for s in suffixes if s > MEMBERS]
    table = np.zeros((len(after), 2), np.int64)
    sizes = {s: len(members[s]) for s in suffixes if s != MEMBERS} | {MEMBERS: len(_npy(table))}  # fixed by the shape
    position, row = 0, 0
    for suffix in suffixes:
        position += len(_tar_info(f"{key}.{suffix}", sizes[suffix], mtime).tobuf(tar_format, "utf-8", "surrogateescape"))
        if suffix > MEMBERS:
            table[row], row = (position, sizes[suffix]), row + 1
        position += _padded(sizes[suffix])
    return {**members, MEMBERS: _npy(table)}


def write_sample(tar: tarfile.TarFile, members: dict[str, bytes], mtime: int = 0) -> list[tuple[str, int, int, str]]:
    """Append an encoded sample to a shard tar with its member table (`with_member_table`): members `<key>.<suffix>`
    in sorted order, laid out byte for byte as `webdataset.TarWriter` lays them out (mode 0444, owner bigdata),
    with a fixed time so that the same sample always gives the same bytes (an int: a float adds a PAX record per
    member). The standard library writes it: webdataset's writer imports torch, which a shard task otherwise never
    needs.

    Returns the sample's members as a DALI index lists them (see `dali_index`): (extension, offset of the data
    in the tar, size, member name)."""
    if tar.encoding != "utf-8" or tar.errors != "surrogateescape":
        raise ValueError(f"shards are written as UTF-8 tars (this one: {tar.encoding}, {tar.errors})")
    members = with_member_table(members, tar.format, mtime)
    key, start = members["__key__"], tar.offset
    components = []
    for suffix in sorted(s for s in members if s != "__key__"):
        data = members[suffix]
        info = _tar_info(f"{key}.{suffix}", len(data), mtime)
        tar.addfile(info, io.BytesIO(data))
        components.append((suffix, tar.offset - _padded(len(data)), len(data), info.name))  # tar.offset: the end of this member
    table = read_member_table(members[MEMBERS])
    if [(o - start, n) for suffix, o, n, _ in components if suffix > MEMBERS] != [tuple(r) for r in table.tolist()]:
        raise AssertionError(f"{key}: the member table does not match the tar as written")  # a change to the layout
    return components


def read_member_table(data: bytes) -> np.ndarray:
    """A sample's `MEMBERS` bytes -> (n, 2) int64: each later member's data offset from the sample's start, and size.

    Raises:
        ValueError: the bytes are not such a table.
    """
    table = _from_npy(data, "a corrupt member table")
    if table.dtype != np.int64 or table.ndim != 2 or table.shape[1] != 2:
        raise ValueError(f"a corrupt member table ({table.dtype} {table.shape}, expected int64 (n, 2))")
    return table


def head_bytes(components: list[tuple[str, int, int, str]], start: int) -> int:
    """How many bytes of a sample, from its first header at `start`, hold its head (its members up to and including
    the member table); 0 for a sample without a table (written before flowshard wrote them)."""
    for suffix, offset, size, _ in components:
        if suffix == MEMBERS:
            return offset + _padded(size) - start
    return 0


DALI_INDEX_VERSION = "v1.2"


def dali_index(samples: list[list[tuple[str, int, int, str]]]) -> str:
    """A shard's index file for NVIDIA DALI's webdataset reader (`fn.readers.webdataset(index_paths=...)`), as its
    `tools/wds2idx.py` writes it: `v1.2 <samples>`, then one line per sample, its members' `<extension> <offset>
    <size> <name>` one after another, space-separated. The extension is the text after the key's dot (DALI
    matches `ext` against it exactly: `rgb.000000.jpg`), the offset that of the member's data."""
    lines = [f"{DALI_INDEX_VERSION} {len(samples)}"]
    lines += [" ".join(" ".join(str(field) for field in component) for component in sample) for sample in samples]
    return "\n".join(lines) + "\n"


def sample_ranges(index: str) -> dict[str, tuple[int, int, int]]:
    """{key: (offset, bytes, head)} of each sample of a shard, from its `dali_index` text: a sample starts where the
    one before it ends (the first at 0) and ends with its last member's data, padded to a tar block; `head` as
    `head_bytes` gives it."""
    ranges, start = {}, 0
    for line in index.splitlines()[1:]:
        fields = line.split(" ")
        components = [(fields[i], int(fields[i + 1]), int(fields[i + 2]), fields[i + 3]) for i in range(0, len(fields), 4)]
        key = components[0][3].split(".", 1)[0]
        end = components[-1][1] + _padded(components[-1][2])
        ranges[key], start = (start, end - start, head_bytes(components, start)), end
    return ranges


def dali_index_of(stream) -> str:
    """The `dali_index` of a shard tar read from its headers (for shards written before flowshard wrote indexes)."""
    samples: list[list[tuple]] = []
    last = None
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            if not member.isreg():
                continue
            key, _, extension = member.name.partition(".")  # keys hold no '.' or '/'
            if key != last:
                samples.append([])
                last = key
            samples[-1].append((extension, member.offset_data, member.size, member.name))
    return dali_index(samples)


def member_filter(modalities: tuple[str, ...]):
    """A `select_files` predicate for webdataset: keep a sample's metadata and the members of `modalities`
    only, so a loader never reads the other modalities' images into memory."""
    wanted = {JSON, CLS, *modalities}

    def keep(name: str) -> bool:
        suffix = name.rsplit("/", 1)[-1].split(".", 1)[-1]
        return suffix.split(".", 1)[0] in wanted

    return keep


def decode_meta(members: dict) -> SampleMeta:
    """A sample's metadata from its `json` member ({member suffix: bytes}, with "__key__" where known).

    Raises:
        ValueError: the metadata is missing or from another format version.
    """
    key = members.get("__key__", "?")
    if JSON not in members:
        raise ValueError(f"sample {key!r} has no {JSON} member; it was not written by flowshard")
    raw = json.loads(members[JSON])
    if raw.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"sample {key!r} has format version {raw.get('format_version')}, this flowshard reads {FORMAT_VERSION}; rebuild the shards"
        )
    try:
        raw["modalities"] = tuple(raw["modalities"])
        return SampleMeta(**raw)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"sample {key!r} has metadata flowshard cannot read ({exc})") from None


def decode_sample(members: dict, modalities: tuple[str, ...] | None = None) -> Sample:
    """{member suffix: bytes} as read by `webdataset` (undecoded) -> Sample. Nothing is image-decoded here.

    Args:
        modalities: the modalities to collect (default: all the sample has); members of the others may be
            absent, e.g. when read with `member_filter`.
    Raises:
        ValueError: the metadata is missing or from another format version, or frames are missing.
    """
    key = members.get("__key__", "?")
    meta = decode_meta(members)
    wanted = meta.modalities if modalities is None else [m for m in meta.modalities if m in modalities]
    try:
        rgb = [members[rgb_member(i)] for i in range(meta.num_frames)] if RGB in wanted else []
        flow = {
            m: [tuple(members[n] for n in flow_members(m, i, meta.flow_encoding)) for i in range(meta.num_flows)]
            for m in wanted
            if m in FLOW_MODALITIES
        }
    except KeyError as exc:
        raise ValueError(f"sample {key!r} lacks member {exc.args[0]!r}; the shard is incomplete") from None
    return Sample(meta=meta, rgb=rgb, flow=flow)
