"""Decoding videos with PyAV: any container and codec FFmpeg reads, audio ignored, frames counted by decoding.

Frames are resized as they are decoded (FFmpeg's swscale, area averaging), so memory holds only the
output-size frames. The pixel grid is a choice (`DecodeConfig.pixel_grid`):
  - "stored" (default): the pixels as stored, ignoring the sample aspect ratio, as OpenCV-based tools
    (denseflow, mmaction2) do. A 340x256 Kinetics clip with sample aspect 64/51 stays 340x256.
  - "square": sample-aspect corrected, so pixels are square: that clip becomes 427x256 before resizing.
Frames are shown as a player shows them: a stream's display matrix (phone videos carry a rotation) is applied as
FFmpeg's autorotation applies it (`Orientation`), so `short_side` and `size` are those of the displayed frame; the
frames an edit list hides (an off-keyframe `-c copy` trim keeps the packets from the keyframe before) are not
counted or kept; a damaged packet is decoded past, as FFmpeg and players do, and the frames it loses are recorded
(`Damage`; `DecodeConfig.strict` fails such a video instead).
`encode_mp4` is the way back, for generated videos and previews.
"""

from __future__ import annotations

import contextlib
import io
import math
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
import pyarrow.fs as pafs

from storage import Location, StorageError

PIXEL_GRIDS = ("stored", "square")
TRUNCATION_TOLERANCE = 0.9  # fewer decoded frames than this share of a declared count means a cut-off file
REMOTE_READ_BUFFER = 2 << 20  # bytes PyAV asks for per read of a video on object storage (one ranged GET)


class VideoError(Exception):
    """A video that cannot be used; str(error) is the one-line reason recorded in the results."""


@dataclass(frozen=True)
class DecodeConfig:
    """How frames are taken from a video."""

    short_side: int | None = 256  # shorter side after resizing, never upscaling; None = native size
    size: tuple[int, int] | None = None  # exact (width, height); overrides short_side
    fps: float | None = None  # resample to this frame rate (nearest frame in time); None = every frame
    max_frames: int | None = None  # keep at most this many frames (from the start of the clip)
    pixel_grid: str = "stored"  # "stored" or "square", see the module docstring
    strict: bool = False  # fail a video with damaged packets instead of keeping the frames that decode

    def __post_init__(self):
        if self.short_side is not None and self.short_side < 2:
            raise ValueError(f"short side must be at least 2 pixels, got {self.short_side}")
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 2):
            raise ValueError(f"size must be (width, height) of at least 2x2, got {self.size}")
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"fps must be positive, got {self.fps}")
        if self.max_frames is not None and self.max_frames < 2:
            raise ValueError(f"max frames must be at least 2 (one flow needs two frames), got {self.max_frames}")
        if self.pixel_grid not in PIXEL_GRIDS:
            raise ValueError(f"pixel grid must be one of {', '.join(PIXEL_GRIDS)}, got {self.pixel_grid!r}")


@dataclass
class DecodedVideo:
    """A whole decoded video (see `VideoStream` for one that streams)."""

    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    fps: float  # frame rate of `frames`
    source_size: tuple[int, int]  # stored (width, height)
    sample_aspect: Fraction  # of the source; 1 where unknown
    decoded_frames: int  # frames decoded inside the trim window (before fps resampling; decoding stops once max_frames are out)
    damage: Damage  # the frames damaged packets lost


@dataclass(frozen=True)
class Damage:
    """The frames of a video that damaged packets lost: a player skips or conceals them, and so does decoding."""

    times: tuple[float, ...] = ()  # seconds: when each lost frame was to be shown

    @property
    def frames(self) -> int:
        """How many frames were lost."""
        return len(self.times)

    def where(self) -> str:
        """The lost frames' times as spans, for a results row: '1.44-1.72 s', '0.48 s, 2.00-2.12 s'; '' for none."""
        spans: list[list[float]] = []
        step = _median_step(self.times)
        for t in self.times:
            if spans and t - spans[-1][1] <= 1.5 * step:
                spans[-1][1] = t
            else:
                spans.append([t, t])
        return ", ".join(f"{a:.2f} s" if a == b else f"{a:.2f}-{b:.2f} s" for a, b in spans)

    def error(self, shown: int) -> VideoError:
        """The failure of this video where damage is not accepted (`DecodeConfig.strict`); `shown`: its frames."""
        return VideoError(
            f"damaged: {self.frames} of its {shown} frames could not be decoded (at {self.where()}); "
            "without --strict-decode the video is kept without them"
        )


def _median_step(times: tuple[float, ...]) -> float:
    return float(np.median(np.diff(times))) if len(times) > 1 else 0.0


@dataclass(frozen=True)
class Orientation:
    """How a player turns a stored frame for display: `turns` quarter turns counter-clockwise, then, where
    `mirrored`, its mirror image (left-right)."""

    turns: int = 0  # 0..3
    mirrored: bool = False

    @property
    def rotation(self) -> int:
        """Degrees counter-clockwise, as PyAV's `VideoFrame.rotation` gives them."""
        return 90 * self.turns

    def apply(self, frame: np.ndarray) -> np.ndarray:
        """A stored (H, W, ...) frame as displayed."""
        shown = np.rot90(frame, self.turns) if self.turns else frame
        return np.ascontiguousarray(shown[:, ::-1] if self.mirrored else shown)

    def stored_size(self, displayed: tuple[int, int]) -> tuple[int, int]:
        """The (width, height) of a stored frame that is `displayed` (width, height) once turned."""
        return (displayed[1], displayed[0]) if self.turns % 2 else displayed


def orientation_of(matrix: np.ndarray | None) -> Orientation:
    """A stream's display matrix (FFmpeg's 3x3 int32 side data, 16.16 fixed point; None where there is none) ->
    the turns and mirror image FFmpeg's autorotation gives (fftools' get_rotation and its transpose/flip filters,
    ffmpeg 7): what ffmpeg, players and OpenCV's VideoCapture show. Angles other than quarter turns are not
    applied (a rotate filter would pad the frame). Pure."""
    if matrix is None:
        return Orientation()
    m = [int(v) for v in matrix[:9]]
    scale = math.hypot(m[0], m[3]), math.hypot(m[1], m[4])
    if not min(scale):
        return Orientation()
    theta = round(math.degrees(math.atan2(m[1] / scale[1], m[0] / scale[0])))  # av_display_rotation_get, negated
    theta -= 360 * math.floor(theta / 360 + 0.9 / 360)
    if theta == 90:
        return Orientation(3, True) if m[3] > 0 else Orientation(3)  # transpose: cclock_flip / clock
    if theta == 180:
        return {(True, True): Orientation(2), (True, False): Orientation(0, True), (False, True): Orientation(2, True)}.get(
            (m[0] < 0, m[4] < 0), Orientation()
        )
    if theta == 270:
        return Orientation(1, True) if m[3] < 0 else Orientation(1)  # transpose: clock_flip / cclock
    return Orientation(2, True) if theta == 0 and m[4] < 0 else Orientation()  # a vertical flip; other angles as stored


def frame_orientation(frame: av.VideoFrame) -> Orientation:
    """The orientation a decoded frame's display matrix asks for (none without one)."""
    for data in frame.side_data:
        if data.type.name == "DISPLAYMATRIX":
            return orientation_of(np.frombuffer(bytes(data), "<i4"))
    return Orientation()


def output_size(width: int, height: int, sample_aspect: Fraction, cfg: DecodeConfig) -> tuple[int, int]:
    """(width, height) of the output frames for a source of the given stored size."""
    if cfg.size is not None:
        return cfg.size
    display_width = width * sample_aspect if cfg.pixel_grid == "square" else width
    if cfg.short_side is None:
        return max(2, round(display_width)), height
    scale = min(1.0, cfg.short_side / min(display_width, height))  # never upscale
    return max(2, round(display_width * scale)), max(2, round(height * scale))


def video_file(path: str) -> tuple[Location, int]:
    """The video at `path` (a local path or URI) and its size in bytes.

    Raises:
        VideoError: missing, not a file, empty, or its store cannot be reached.
    """
    try:
        source = Location(path)
        info = source.info()
    except StorageError as exc:
        raise VideoError(str(exc)) from None
    if info.type == pafs.FileType.NotFound:
        raise VideoError("file not found")
    if info.type != pafs.FileType.File:
        raise VideoError(f"not a regular file ({info.type.name.lower()})")
    if info.size == 0:
        raise VideoError("empty file (0 bytes)")
    return source, info.size


def turned_size(size: tuple[int, int], orientation: Orientation, cfg: DecodeConfig) -> tuple[int, int]:
    """The output (width, height) of frames shown turned, from `output_size` of the stored frame: a shorter-side
    resize turns with the frame, an exact `cfg.size` is the displayed frame's as given."""
    return size[::-1] if orientation.turns % 2 and cfg.size is None else size


def open_container(path: str, files: contextlib.ExitStack, source: Location | None = None) -> av.container.InputContainer:
    """Open the video at `path` (a local path or URI) with PyAV. A local file is read by FFmpeg itself; an
    object on a store through a seekable pyarrow file (ranged reads, nothing copied to local disk). `source`:
    the file as `video_file` found it, when it was checked already.

    Raises:
        VideoError: missing, not a file, empty, unreadable, or its store cannot be reached.
    """
    source = source or video_file(path)[0]
    try:
        if source.is_local:
            return files.enter_context(av.open(source.path()))
        remote = files.enter_context(source.open_input_file())
        return files.enter_context(av.open(remote, buffer_size=REMOTE_READ_BUFFER))
    except StorageError as exc:
        raise VideoError(str(exc)) from None
    except av.error.FFmpegError as exc:
        raise VideoError(f"not a readable video file ({_reason(exc)})") from None


def video_stream(container: av.container.InputContainer) -> av.VideoStream:
    """The container's first video stream; VideoError naming what it holds instead (an audio-only file)."""
    if not container.streams.video:
        kinds = ", ".join(sorted({s.type for s in container.streams})) or "no streams"
        raise VideoError(f"no video stream (contains: {kinds})")
    return container.streams.video[0]


def presented_frames(stream: av.VideoStream) -> int:
    """The frames a player shows of `stream`: the container's index of every frame (mp4, avi) less the entries an
    edit list hides, else the count the container declares; 0 where it declares none (Matroska).

    An off-keyframe `-c copy` trim holds the packets from the keyframe before its start and hides them with an
    edit list: it may declare 221 frames and show 122, as ffprobe's `-count_frames` and a player do."""
    entries = stream.index_entries
    if stream.frames > 0 and len(entries) >= stream.frames:
        return sum(not e.is_discard for e in entries)
    return max(stream.frames, 0)


def held_frames(stream: av.VideoStream, size: int) -> int | None:
    """How many of the frames a player shows lie wholly inside the file's `size` bytes, from the container's index
    of every frame (mp4, avi); None where the index does not list every frame (Matroska's cues)."""
    entries = stream.index_entries
    if stream.frames <= 0 or len(entries) < stream.frames:
        return None
    return sum(not e.is_discard and e.pos + e.size <= size for e in entries)


def cut_off(held: int, shown: int) -> VideoError | None:
    """The failure of a file that holds fewer than `TRUNCATION_TOLERANCE` of the `shown` frames its container
    presents (`presented_frames`): its end is missing, as a download that stopped leaves it. `held`: the frames
    found in the file (demuxed, or placed inside it by the index); None when it is not cut off (or presents too few
    frames to tell)."""
    if shown <= 2 or held >= TRUNCATION_TOLERANCE * shown:
        return None
    return VideoError(f"cut off: the file holds {held} of the {shown} frames it presents")


def stream_rate(stream: av.VideoStream) -> float:
    """The stream's frame rate: its average, else FFmpeg's guess, else 25."""
    return float(stream.average_rate or stream.guessed_rate or 25)


def stream_aspect(stream: av.VideoStream) -> Fraction:
    """The stream's sample aspect ratio; 1 where unknown."""
    return stream.sample_aspect_ratio or Fraction(1)


def too_short(frames: int) -> VideoError:
    """The failure of a video that gives fewer than the 2 frames one flow needs."""
    return VideoError(f"too short: {frames} frame(s), at least 2 are needed for optical flow")


def corrupt(decoded: int, exc: Exception) -> VideoError:
    """The failure of a video whose decoder stopped with an error after `decoded` frames."""
    return VideoError(f"corrupt or cut off after {decoded} decoded frames ({_reason(exc)})")


def nearest_in_time(timed_frames: Iterable[tuple[object, float]], fps: float, start: float | None = None) -> Iterator[object]:
    """Resample to `fps` as the frames stream in: for each target time start, start + 1/fps, ... up to the end of
    the last frame (its timestamp plus the median frame step), the frame nearest in time (ties to the earlier).

    Holds at most a few frames: a pick is let out once it is certainly below the final count (which depends on
    the last timestamp).

    Args:
        timed_frames: (frame, timestamp in seconds) in increasing time.
        start: time of the first output frame; default the first timestamp.
    """
    times: list[float] = []
    held: list[tuple[int, object]] = []  # picks not yet known to be inside the final count
    k, previous = 0, None
    for frame, t in timed_frames:
        if previous is None:
            start = t if start is None else start
        else:
            prev_frame, prev_t = previous
            # targets up to t are decided here: the earlier frame when it is nearer (or tied), else a later call
            while start + k / fps <= t and abs(prev_t - (start + k / fps)) <= abs(t - (start + k / fps)):
                held.append((k, prev_frame))
                k += 1
            certain = max(1, math.floor((t - start) * fps + 1e-6))  # the count can only grow from here
            while held and held[0][0] < certain:
                yield held.pop(0)[1]
        times.append(t)
        previous = (frame, t)
    if previous is None:
        return
    step = float(np.median(np.diff(times))) if len(times) > 1 else 1.0 / fps
    count = max(1, int(math.floor((times[-1] + step - start) * fps + 1e-6)))
    for index, frame in held:
        if index < count:
            yield frame
    for _ in range(k, count):
        yield previous[0]


class VideoStream:
    """The frames of one video as they are decoded (resized, resampled, trimmed): memory holds a few frames.

        with VideoStream(path, cfg) as video:
            for chunk in video.chunks(64):  # (<=64, H, W, 3) uint8 RGB
                ...

    The checks that need the whole file (cut off, too short) raise VideoError when the stream ends.
    """

    def __init__(
        self,
        path: str,
        cfg: DecodeConfig = DecodeConfig(),
        start_sec: float | None = None,
        end_sec: float | None = None,
        stop: threading.Event | None = None,
    ):
        self.cfg, self.start_sec, self.end_sec, self.stop = cfg, start_sec, end_sec, stop
        self._files = contextlib.ExitStack()
        try:
            self._container = open_container(path, self._files)
            self._stream = stream = video_stream(self._container)
        except BaseException:
            self._files.close()
            raise
        stream.thread_type = "AUTO"
        self.sample_aspect = stream_aspect(stream)
        self.source_size = (stream.codec_context.width, stream.codec_context.height)
        self.size = output_size(*self.source_size, self.sample_aspect, cfg)  # (width, height) of the frames as displayed
        self.orientation = Orientation()  # known at the first frame (its display matrix), which may turn `size`
        self.native_rate = stream_rate(stream)
        self.fps = cfg.fps or self.native_rate  # frame rate of the output
        self.decoded_frames = 0  # frames decoded inside the window so far (before resampling)
        self.emitted = 0  # frames given out so far
        self._shown: list[int] = []  # timestamps (stream time base) of the frames inside the window the file holds
        self._decoded_at: set[int] = set()  # and of those decoded
        self._untimed = 0  # frames decoded without a timestamp (not matched to theirs)
        self._ended = False  # the file was read to its end (else decoding stopped at the window or max_frames)

    def __enter__(self) -> VideoStream:
        return self

    def __exit__(self, *exc) -> None:
        self._files.close()

    @property
    def damage(self) -> Damage:
        """The frames inside the window that damaged packets lost, so far (at the end: all of them)."""
        last = max(self._decoded_at, default=None) if not self._ended else None
        lost = sorted(t for t in self._shown if t not in self._decoded_at and (last is None or t < last))[self._untimed :]
        return Damage(tuple(float(t * self._stream.time_base) for t in lost))

    def frames(self) -> Iterator[np.ndarray]:
        """(H, W, 3) uint8 RGB frames in order; raises VideoError (corrupt, cut off, damaged where strict, too
        short, stopped)."""
        cfg = self.cfg
        timed = self._decoded()
        picked = (frame for frame, _ in timed) if cfg.fps is None else nearest_in_time(timed, cfg.fps, self.start_sec)
        for frame in picked:
            self.emitted += 1
            yield frame
            if cfg.max_frames is not None and self.emitted >= cfg.max_frames:
                break
        emitted = self.emitted
        full = cfg.max_frames is not None and emitted >= cfg.max_frames
        trimming = self.start_sec is not None or self.end_sec is not None
        error = None if trimming or full else cut_off(len(self._shown), presented_frames(self._stream))
        if error:
            raise error
        damage = self.damage
        if cfg.strict and damage.frames:
            raise damage.error(len(self._shown))
        if emitted < 2:
            raise too_short(emitted)

    def chunks(self, size: int) -> Iterator[np.ndarray]:
        """The frames in (<= size, H, W, 3) arrays."""
        chunk = []
        for frame in self.frames():
            chunk.append(frame)
            if len(chunk) == size:
                yield np.stack(chunk)
                chunk = []
        if chunk:
            yield np.stack(chunk)

    def _orient(self, orientation: Orientation) -> tuple[int, int]:
        """Take the stream's orientation; returns the (width, height) to resize stored frames to, so that once
        turned they are `size`: the displayed frame's size (`short_side` and `size` are the displayed frame's)."""
        self.orientation = orientation
        self.size = turned_size(self.size, orientation, self.cfg)
        return orientation.stored_size(self.size)

    def _decoded(self) -> Iterator[tuple[np.ndarray, float]]:
        """(frame at the output size, timestamp) of every frame inside the window; a damaged packet is decoded
        past (its frame is missing from `_decoded_at`), a container that cannot be read further is corrupt."""
        container, stream, (width, height) = self._container, self._stream, self.size
        if self.start_sec:
            try:
                container.seek(int(self.start_sec / stream.time_base), stream=stream, backward=True)
            except av.error.FFmpegError:
                container.seek(0)
        index = 0
        for packet in self._packets():
            for frame in _decode_past_damage(stream, packet):
                if self.stop is not None and self.stop.is_set():
                    raise VideoError("stopped")
                t = frame.time if frame.time is not None else index / self.native_rate
                index += 1
                if self.start_sec is not None and t < self.start_sec - 1e-6:
                    continue
                if frame.pts is None:
                    self._untimed += 1
                else:
                    self._decoded_at.add(frame.pts)
                if self.end_sec is not None and t >= self.end_sec - 1e-6:
                    return  # past the window (this frame bounds the ones lost before it)
                if not self.decoded_frames:
                    width, height = self._orient(frame_orientation(frame))
                self.decoded_frames += 1
                image = frame.reformat(width=width, height=height, format="rgb24", interpolation="AREA").to_ndarray()
                yield self.orientation.apply(image), t
        self._ended = True

    def _packets(self) -> Iterator[av.Packet]:
        """The stream's packets in file order (the last one empty, to flush the decoder), noting the timestamps of
        the frames inside the window that a player shows (an edit list hides some); VideoError where the container
        cannot be read further."""
        stream, base = self._stream, self._stream.time_base
        start = None if self.start_sec is None else self.start_sec - 1e-6
        end = None if self.end_sec is None else self.end_sec - 1e-6
        try:
            for packet in self._container.demux(stream):
                ts = packet.pts if packet.pts is not None else packet.dts
                if packet.size and not packet.is_discard and ts is not None:
                    t = float(ts * base)
                    if (start is None or t >= start) and (end is None or t < end):
                        self._shown.append(ts)
                yield packet
        except av.error.FFmpegError as exc:
            raise corrupt(self.decoded_frames, exc) from None


def decode_video(
    path: str,
    cfg: DecodeConfig = DecodeConfig(),
    start_sec: float | None = None,
    end_sec: float | None = None,
    stop: threading.Event | None = None,
) -> DecodedVideo:
    """Decode all frames of `path` (a local path or URI; optionally only [start_sec, end_sec)) at the
    configured size and rate into one array (`VideoStream` gives them a chunk at a time instead).
    Setting `stop` makes it give up at the next frame.

    Raises:
        VideoError: missing, empty, unreadable, without a video stream, cut off, corrupt, fewer than
            2 frames, or stopped; the message is one line naming the reason.
    """
    with VideoStream(path, cfg, start_sec, end_sec, stop) as video:
        frames = np.stack(list(video.frames()))
        return DecodedVideo(frames, video.fps, video.source_size, video.sample_aspect, video.decoded_frames, video.damage)


def _decode_past_damage(stream: av.VideoStream, packet: av.Packet) -> list[av.VideoFrame]:
    """The frames decoding `packet` gives; none where the packet is damaged (FFmpeg logs the error and goes on)."""
    try:
        return stream.decode(packet)
    except av.error.FFmpegError:
        return []


def _reason(exc: Exception) -> str:
    """The FFmpeg error text without the file name PyAV appends."""
    text = getattr(exc, "strerror", None) or str(exc)
    return text.split(":")[0].strip() if ": '" in text else text.strip()


def encode_mp4(frames, fps: float, crf: int = 17) -> bytes:
    """RGB frames (T, H, W, 3) uint8, even sizes, as H.264 (yuv420p) in an MP4 container. Encoded in memory: the
    MP4 muxer seeks back to finish its index. One encoder thread: the same frames give the same bytes (almost
    always; see README, make_synthetic)."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "medium", "threads": "1"}
        for rgb in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()
