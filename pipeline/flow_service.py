"""Flow workers: long-lived computers of TV-L1 flow that batch frame pairs from many videos per launch.

A shard task sends a video's frames a chunk at a time (`pipeline.video_flow.VideoFlow`); the worker puts the
pairs of every waiting request (from any video, any shard task) of one resolution into a launch of exactly
`batch_size` pairs (padded with constant frames, which converge at once), solves them, quantizes the flows
on the device and answers each request with its own pairs' values, and with the float flow at any points
the request asked for (warped flow's corners). It does device work only: warped flow's homographies are
estimated by the shard tasks, which send the re-projected frames back as pairs. Callers block while their
request waits, which bounds what is queued (back-pressure).

Faults stay with the launch they happen in: any exception fails that launch's callers only; running out
of device memory retries the launch in halves and lowers the batch size; a device that no longer answers
(a sticky CUDA error) makes a Ray flow worker exit, so Ray restarts it and re-sends its callers' requests.

`FlowWorker` is plain Python and thread-safe: concurrent `compute` calls share launches. `pipeline.ray_tasks`
runs one per GPU (or per CPU core) as a threaded Ray actor; `pipeline.flow_requests.LocalFlow` runs one inside the
calling process. What callers send and get back is defined in `pipeline.flow_requests` (no torch needed there).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import Counter

import cv2
import numpy as np
import torch

from .flow import default_device, resolve_params, tvl1_flow
from .flow.compute import quantize_on_device
from .flow.tvl1 import SolveTrace, kernels_for
from .flow.warped import homography_seconds
from .flow_requests import FlowChunk, FlowRequest, FlowSpec, default_batch

log = logging.getLogger(__name__)


class _Pending:
    """One caller's request, filled in launch by launch."""

    def __init__(self, request: FlowRequest):
        self.request = request
        self.pairs = request.pairs
        self.size = request.frames.shape[1:]
        self.taken = 0  # pairs handed to a launch
        self.filled = 0  # pairs computed
        self.seconds = 0.0  # the solver's time for its pairs (FlowChunk.seconds)
        self.flows: dict[str, np.ndarray] = {}
        self.points: list[np.ndarray | None] = [None] * self.pairs if request.points is not None else []
        self.error: BaseException | None = None
        self.done = threading.Event()

    def prev(self, start: int, stop: int) -> np.ndarray:
        return self.request.frames[start:stop]

    def next(self, start: int, stop: int) -> np.ndarray:
        r = self.request
        return r.frames[start + 1 : stop + 1] if r.targets is None else r.targets[start:stop]

    def fail(self, exc: BaseException) -> None:
        if not self.done.is_set():
            self.error = exc
            self.done.set()


class FlowWorker:
    """Computes flow for many callers at once, in launches of exactly `batch_size` pairs of one resolution.

    Args:
        spec: how flow is solved and stored.
        batch_size: pairs per launch; None = 8 on the CPU, 256 on a GPU. Lowered (halved) when a launch runs
            out of device memory.
        device: "cpu", "cuda" or None (cuda when visible).
        threads: torch and OpenCV threads for the solver (None: leave as they are). A CPU worker that shares
            its cores with other processes should use 1: spinning thread pools slow everything down.
        exit_on_device_loss: end the process when the device stops answering (a Ray actor, which Ray then
            restarts); otherwise such launches fail their callers like any other error.
    """

    def __init__(
        self,
        spec: FlowSpec,
        batch_size: int | None = None,
        device: str | None = None,
        threads: int | None = None,
        exit_on_device_loss: bool = False,
    ):
        self.spec = spec
        self.device = torch.device(device) if device else default_device()
        self.batch_size = batch_size or default_batch(self.device.type)
        self.exit_on_device_loss = exit_on_device_loss
        if threads:
            torch.set_num_threads(threads)
            cv2.setNumThreads(threads)
        self.tvl1, _ = resolve_params(spec.preset, dict(spec.params))
        self._queue: list[_Pending] = []
        self._queue_lock = threading.Lock()
        self._launch_lock = threading.Lock()  # one launch at a time; whoever holds it computes for everyone
        self._started = time.monotonic()
        self._homography_before = homography_seconds()
        self._iterations: Counter[int] = Counter()  # warps by the iterations they ran (bounded: at most outer x inner values)
        self._stats = {
            "requests": 0,
            "pairs": 0,
            "padded_pairs": 0,
            "batches": 0,
            "flow_seconds": 0.0,
            "failed_batches": 0,
            "out_of_memory": 0,
            "host_reads": 0,
        }

    def compute(self, request: FlowRequest) -> FlowChunk:
        """Solve the request's pairs (in launches shared with other callers) and return their flows.

        Raises:
            ValueError: a malformed request.
            Exception: whatever failed the launch of one of its pairs (out of memory even at one pair, a lost device).
        """
        request.check()
        pending = _Pending(request)
        with self._queue_lock:
            self._queue.append(pending)
            self._stats["requests"] += 1
        while not pending.done.is_set():
            with self._launch_lock:
                if not pending.done.is_set():
                    self._launch()
        if pending.error is not None:
            raise pending.error
        return FlowChunk(pending.flows, pending.points, pending.seconds)

    def _compile_seconds(self) -> float:
        """Seconds this process has spent compiling the solver's kernels so far."""
        return sum(k.compile_seconds for k in (kernels_for(self.device.type, c, self.tvl1.opencv_cpu_ops) for c in (False, True)))

    def stats(self) -> dict:
        """Counts and seconds so far, for the run report."""
        kernels = [kernels_for(self.device.type, c, self.tvl1.opencv_cpu_ops) for c in (False, True)]
        return {
            **self._stats,
            "device": _device_name(self.device),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "batch_size": self.batch_size,
            "seconds": time.monotonic() - self._started,
            "compiles": kernels[1].compiles,
            "compile_failed": not kernels[1].compile,  # a compile failure turned the kernels eager
            "compile_seconds": sum(k.compile_seconds for k in kernels),
            "iterations_per_warp": _spread(self._iterations),
            # measured over the whole process since this worker started: none, where the process is a flow worker
            "homography_seconds": homography_seconds() - self._homography_before,
        }

    # --- one launch: take, solve, hand back; a failure anywhere fails this launch's callers only ---------------

    def _launch(self) -> None:
        pieces: list[tuple[_Pending, int, int]] = []
        try:
            pieces = self._take_batch()
            if not pieces:
                return
            start_time, compiled = time.perf_counter(), self._compile_seconds()
            prev, nxt = self._batch_frames(pieces)
            flow = self._solve(prev, nxt)
            real = sum(stop - start for _, start, stop in pieces)
            solved = time.perf_counter() - start_time - (self._compile_seconds() - compiled)
            for pending, start, stop in pieces:  # each request's share, before it is handed back
                pending.seconds += solved * (stop - start) / real
            self._hand_back(pieces, flow)
        except Exception as exc:  # noqa: BLE001 - the callers of this launch get the error, the worker goes on
            self._stats["failed_batches"] += 1
            self._fail(pieces, exc)  # no pieces: taking them failed, and every queued caller is failed
            if self.device.type == "cuda" and not isinstance(exc, torch.OutOfMemoryError) and not _device_answers(self.device):
                self._device_lost(exc)
            return
        self._stats["flow_seconds"] += time.perf_counter() - start_time
        self._stats["pairs"] += real
        self._stats["padded_pairs"] += len(prev) - real
        self._stats["batches"] += 1

    def _take_batch(self) -> list[tuple[_Pending, int, int]]:
        """Up to batch_size pairs (pending, start, stop) from the waiting requests of the oldest one's resolution."""
        with self._queue_lock:
            self._queue = [p for p in self._queue if not p.done.is_set()]  # failed by an earlier launch
            if not self._queue:
                return []
            size = self._queue[0].size
            pieces, room = [], self.batch_size
            for pending in self._queue:
                if room == 0:
                    break
                if pending.size != size:
                    continue
                n = min(room, pending.pairs - pending.taken)
                pieces.append((pending, pending.taken, pending.taken + n))
                pending.taken += n
                room -= n
            self._queue = [p for p in self._queue if p.taken < p.pairs]
        return pieces

    def _batch_frames(self, pieces) -> tuple[np.ndarray, np.ndarray]:
        """(batch_size, H, W) prev and next frames of the pieces, padded with constant frames."""
        h, w = pieces[0][0].size
        prev = np.zeros((self.batch_size, h, w), np.uint8)
        nxt = np.zeros_like(prev)
        at = 0
        for pending, start, stop in pieces:
            prev[at : at + stop - start] = pending.prev(start, stop)
            nxt[at : at + stop - start] = pending.next(start, stop)
            at += stop - start
        return prev, nxt

    def _solve(self, prev: np.ndarray, nxt: np.ndarray) -> torch.Tensor:
        """(B, 2, H, W) flow on the device. Out of device memory: the batch is solved in halves (recursively) and
        the worker's batch size lowered to the half, so the next launches fit; one pair that does not fit fails."""
        try:
            with torch.inference_mode():
                I0, I1 = (torch.from_numpy(x).to(self.device, non_blocking=True)[:, None].float() / 255.0 for x in (prev, nxt))
                trace = SolveTrace()
                flow = tvl1_flow(I0, I1, self.tvl1, trace)
        except torch.OutOfMemoryError:
            if len(prev) < 2:
                raise
            self._stats["out_of_memory"] += 1
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            half = (len(prev) + 1) // 2
            if half < self.batch_size:
                log.warning(
                    "flow worker on %s: out of memory solving %d pairs of %dx%d; launches of %d pairs from now on",
                    _device_name(self.device),
                    len(prev),
                    prev.shape[2],
                    prev.shape[1],
                    half,
                )
                self.batch_size = half
            return torch.cat([self._solve(prev[:half], nxt[:half]), self._solve(prev[half:], nxt[half:])])
        self._iterations.update(trace.iterations)
        self._stats["host_reads"] += trace.reads
        return flow

    def _hand_back(self, pieces, flow: torch.Tensor) -> None:
        """Give each piece its pairs' quantized flows and point flows; a request is done when all its pairs are."""
        stored = {p.request.store_as for p, _, _ in pieces} - {None}
        with torch.inference_mode():
            quantized = quantize_on_device(flow, self.spec.encoding, self.spec.bound) if stored else None
            points = _points_on_device(flow, pieces)
        at = 0
        for pending, start, stop in pieces:
            n = stop - start
            name = pending.request.store_as
            if name is not None:
                if name not in pending.flows:
                    pending.flows[name] = np.empty((pending.pairs, *quantized.shape[1:]), quantized.dtype)
                pending.flows[name][start:stop] = quantized[at : at + n]
            if pending.request.points is not None:
                pending.points[start:stop] = points[at : at + n]
            at += n
            pending.filled += n
            if pending.filled == pending.pairs:
                pending.done.set()

    def _fail(self, pieces, exc: BaseException) -> None:
        """Fail the requests of this launch (those not already answered) and drop their queued pairs; without
        pieces (the launch failed while taking them) fail every queued request, so that none waits forever."""
        with self._queue_lock:
            failing = [p for p, _, _ in pieces] if pieces else list(self._queue)
            self._queue = [p for p in self._queue if all(p is not f for f in failing)]
        for pending in failing:
            pending.fail(exc)

    def _device_lost(self, exc: BaseException) -> None:
        """The device no longer answers (a sticky CUDA error): end the process when that is how it recovers."""
        if not self.exit_on_device_loss:
            return
        log.error("flow worker on %s: the device no longer answers (%s); exiting so that Ray restarts this worker", self.device, exc)
        logging.shutdown()
        os._exit(1)


def _points_on_device(flow: torch.Tensor, pieces) -> list[np.ndarray | None]:
    """The float flow at every asked point of every pair, gathered on the device and copied to the host at once:
    per pair of the launch, its (M, 2) float32 (dx, dy) values (None where no points were asked)."""
    asked, at = [], 0  # (batch position, (M, 2) int (x, y) points)
    for pending, start, stop in pieces:
        if pending.request.points is not None:
            asked += [(at + i, pending.request.points[start + i]) for i in range(stop - start)]
        at += stop - start
    out: list[np.ndarray | None] = [None] * at
    if not asked:
        return out
    b, _, h, w = flow.shape
    batch = np.concatenate([np.full(len(p), i, np.int64) for i, p in asked])
    pixel = np.concatenate([p[:, 1].astype(np.int64) * w + p[:, 0] for _, p in asked])
    batch, pixel = (torch.from_numpy(x).to(flow.device, non_blocking=True) for x in (batch, pixel))
    values = flow.reshape(b, 2, h * w)[batch, :, pixel].cpu().numpy()  # (sum M, 2): a gather, then one copy
    for (i, _), v in zip(asked, np.split(values, np.cumsum([len(p) for _, p in asked])[:-1])):
        out[i] = v
    return out


def _device_answers(device: torch.device) -> bool:
    """Whether the device still runs work (after a sticky CUDA error every call fails)."""
    try:
        torch.cuda.synchronize(device)
        return bool(torch.ones(1, device=device).add_(1).item() == 2)
    except Exception:  # noqa: BLE001 - any failure means it does not
        return False


def _spread(counts: Counter) -> dict:
    """Mean, 99th percentile (nearest rank) and maximum of values counted as {value: times}; {} when empty."""
    if not counts:
        return {}
    values = sorted(counts)
    times = np.cumsum([counts[v] for v in values])
    total = int(times[-1])
    p99 = values[int(np.searchsorted(times, 0.99 * total))]
    return {"mean": sum(v * n for v, n in counts.items()) / total, "p99": p99, "max": values[-1], "count": total}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} {torch.cuda.get_device_name(index)}"
    return device.type
