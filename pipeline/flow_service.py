"""Flow workers: long-lived computers of optical flow that batch frame pairs from many videos per launch.

A shard task decodes a video a chunk at a time and sends each chunk's gray frames to a flow worker; the
worker puts the pairs of every waiting request (from any video, any shard task) of one resolution into a
batch of exactly `batch_size` pairs (padded with constant frames, which converge at once), computes the
flows, quantizes them on the device and answers each request with its own pairs' values. Callers block
while their request waits, which bounds what is queued (back-pressure).

`FlowWorker` is plain Python and thread-safe: concurrent `compute` calls share batches. `pipeline.ray_tasks`
runs one per GPU (or per CPU core) as a threaded Ray actor; `LocalFlow` runs one inside the calling process.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from .flow import default_device, resolve_params
from .flow.compute import flows_on_device, quantize_on_device
from .flow.tvl1 import kernels_for

CPU_BATCH = 8  # pairs per launch on the CPU: larger batches gain nothing there, smaller ones keep more workers busy
GPU_BATCH = 256  # pairs per launch on a GPU: enough to fill one at 340x256


@dataclass(frozen=True)
class FlowSpec:
    """What a flow worker computes; the same for every request of a run."""

    algorithms: tuple[str, ...]  # subset of pipeline.flow.ALGORITHMS
    preset: str = "opencv"
    params: tuple[tuple[str, object], ...] = ()  # TV-L1 / homography overrides
    encoding: str = "jpeg"  # what the flows are quantized for (schemas.sample.quantize_flow)
    bound: float = 20.0


@dataclass
class FlowChunk:
    """A worker's answer to one request: the quantized flows of its pairs, in order."""

    flows: dict[str, np.ndarray]  # algorithm -> (n, H, W, 2) as schemas.sample.quantize_flow stores it
    homographies: list[dict] = field(default_factory=list)  # one per pair with warp_tvl1


def default_batch(device_type: str) -> int:
    """Pairs per launch when none is configured: CPU_BATCH on the CPU, GPU_BATCH on a GPU."""
    return CPU_BATCH if device_type == "cpu" else GPU_BATCH


class _Request:
    """One caller's frames, filled in batch by batch."""

    def __init__(self, frames: np.ndarray):
        self.frames = frames  # (n + 1, H, W) uint8
        self.pairs = len(frames) - 1
        self.taken = 0  # pairs handed to a batch
        self.filled = 0  # pairs computed
        self.flows: dict[str, np.ndarray] = {}
        self.homographies: list[dict | None] = [None] * self.pairs
        self.error: BaseException | None = None
        self.done = threading.Event()


class FlowWorker:
    """Computes flow for many callers at once, in launches of exactly `batch_size` pairs of one resolution.

    Args:
        spec: the flows to compute.
        batch_size: pairs per launch; None = 8 on the CPU, 256 on a GPU.
        device: "cpu", "cuda" or None (cuda when visible).
        threads: torch and OpenCV threads for the solver (None: leave as they are). A CPU worker that shares
            its cores with other processes should use 1: spinning thread pools slow everything down.
    """

    def __init__(self, spec: FlowSpec, batch_size: int | None = None, device: str | None = None, threads: int | None = None):
        self.spec = spec
        self.device = torch.device(device) if device else default_device()
        self.batch_size = batch_size or default_batch(self.device.type)
        if threads:
            torch.set_num_threads(threads)
            cv2.setNumThreads(threads)
        self.tvl1, self.homography = resolve_params(spec.preset, dict(spec.params))
        self._queue: list[_Request] = []
        self._queue_lock = threading.Lock()
        self._launch_lock = threading.Lock()  # one launch at a time; whoever holds it computes for everyone
        self._started = time.monotonic()
        self._stats = {"requests": 0, "pairs": 0, "padded_pairs": 0, "batches": 0, "flow_seconds": 0.0, "failed_batches": 0}

    def compute(self, frames: np.ndarray) -> FlowChunk:
        """Flows between consecutive frames: (n + 1, H, W) uint8 gray -> n pairs' flows.

        Raises:
            ValueError: frames that are not (n + 1, H, W) uint8 with n >= 1.
        """
        if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 3 or len(frames) < 2:
            raise ValueError(f"flow requests are (n + 1, H, W) uint8 gray frames with n >= 1, got {getattr(frames, 'shape', frames)}")
        request = _Request(frames)
        with self._queue_lock:
            self._queue.append(request)
            self._stats["requests"] += 1
        while not request.done.is_set():
            with self._launch_lock:
                if not request.done.is_set():
                    self._launch()
        if request.error is not None:
            raise request.error
        return FlowChunk(request.flows, request.homographies if "warp_tvl1" in self.spec.algorithms else [])

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
            "compile_seconds": sum(k.compile_seconds for k in kernels),
        }

    def _take_batch(self) -> tuple[list[tuple[_Request, int, int]], tuple[int, int]]:
        """Up to batch_size pairs from the waiting requests of the first one's resolution, oldest first."""
        with self._queue_lock:
            size = self._queue[0].frames.shape[1:]
            pieces, room = [], self.batch_size
            for request in self._queue:
                if room == 0:
                    break
                if request.frames.shape[1:] != size:
                    continue
                n = min(room, request.pairs - request.taken)
                pieces.append((request, request.taken, request.taken + n))
                request.taken += n
                room -= n
            self._queue = [r for r in self._queue if r.taken < r.pairs]
        return pieces, size

    def _launch(self) -> None:
        """Compute one batch and hand each piece to its request."""
        with self._queue_lock:
            if not self._queue:
                return
        pieces, (h, w) = self._take_batch()
        real = sum(stop - start for _, start, stop in pieces)
        start_time = time.perf_counter()
        try:
            prev = np.zeros((self.batch_size, h, w), np.uint8)
            nxt = np.zeros_like(prev)
            at = 0
            for request, start, stop in pieces:
                prev[at : at + stop - start] = request.frames[start:stop]
                nxt[at : at + stop - start] = request.frames[start + 1 : stop + 1]
                at += stop - start
            out, homographies = self._flows(prev, nxt, real)
        except Exception as exc:  # noqa: BLE001 - the callers of this batch get the error, the worker goes on
            self._stats["failed_batches"] += 1
            for request, _, _ in pieces:
                request.error = exc
                request.done.set()
            return
        at = 0
        for request, start, stop in pieces:
            for name, values in out.items():
                if name not in request.flows:
                    request.flows[name] = np.empty((request.pairs, *values.shape[1:]), values.dtype)
                request.flows[name][start:stop] = values[at : at + stop - start]
            if homographies:
                request.homographies[start:stop] = homographies[at : at + stop - start]
            at += stop - start
            request.filled += stop - start
            if request.filled == request.pairs:
                request.done.set()
        self._stats["flow_seconds"] += time.perf_counter() - start_time
        self._stats["pairs"] += real
        self._stats["padded_pairs"] += self.batch_size - real
        self._stats["batches"] += 1

    def _flows(self, prev: np.ndarray, nxt: np.ndarray, real: int) -> tuple[dict[str, np.ndarray], list[dict]]:
        """One launch: (batch, H, W) uint8 pairs -> quantized flows and the real pairs' homographies."""
        with torch.inference_mode():
            I0, I1 = (torch.from_numpy(x).to(self.device, non_blocking=True)[:, None].float() / 255.0 for x in (prev, nxt))
            flows, found = flows_on_device(I0, I1, self.spec.algorithms, self.tvl1, self.homography, real)
            out = {name: quantize_on_device(flows[name], self.spec.encoding, self.spec.bound) for name in self.spec.algorithms}
        return out, [h.as_dict() for h in found]


class LocalFlow:
    """Flow computed in the calling process by its own worker (tests, and runs without a flow service)."""

    in_flight = 1

    def __init__(self, worker: FlowWorker):
        self.worker = worker
        self.batch_size = worker.batch_size

    def submit(self, frames: np.ndarray):
        """Compute now; returns a function that gives the FlowChunk, or raises what computing it raised (the
        interface of a remote request)."""
        try:
            chunk = self.worker.compute(frames)
        except Exception as exc:  # noqa: BLE001 - handed to the caller when it collects, as a remote error would be
            error = exc

            def fail():
                raise error

            return fail
        return lambda: chunk


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} {torch.cuda.get_device_name(index)}"
    return device.type
