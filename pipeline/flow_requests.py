"""What shard tasks and flow workers exchange: how flow is solved and stored (`FlowSpec`), a request of frame
pairs (`FlowRequest`) and its answer (`FlowChunk`), and `LocalFlow`, the in-process way of asking.

Free of torch: a shard task that sends its frames to a flow service (`pipeline.flow_service.FlowWorker` in other
processes) never imports it, which saves it seconds of start-up and hundreds of MB.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .flow.params import ALGORITHMS

CPU_BATCH = 8  # pairs per launch on the CPU: larger batches gain nothing there, smaller ones keep more workers busy
GPU_BATCH = 256  # pairs per launch on a GPU: enough to fill one at 340x256


@dataclass(frozen=True)
class FlowSpec:
    """How a flow worker solves and stores flow; the same for every request of a run."""

    preset: str = "opencv"
    params: tuple[tuple[str, object], ...] = ()  # TV-L1 overrides (homography ones are the shard tasks')
    encoding: str = "jpeg"  # what the flows are quantized for (schemas.sample.quantize_flow)
    bound: float = 20.0


@dataclass
class FlowRequest:
    """Frame pairs to solve: consecutive `frames` (pair i = frame i -> i + 1), or, with `targets`, frames[i] ->
    targets[i]. All (n, H, W) uint8 gray (n + 1 consecutive frames for n pairs)."""

    frames: np.ndarray
    targets: np.ndarray | None = None
    store_as: str | None = "tvl1"  # the modality whose quantized values to return; None: no stored flow
    points: list[np.ndarray] | None = None  # per pair, (M, 2) int (x, y) pixels whose float flow to return

    @property
    def pairs(self) -> int:
        """How many pairs the request holds."""
        return len(self.frames) - (1 if self.targets is None else 0)

    def check(self) -> None:
        """Raise ValueError describing what is malformed."""
        ok = isinstance(self.frames, np.ndarray) and self.frames.dtype == np.uint8 and self.frames.ndim == 3 and self.pairs >= 1
        if self.targets is not None:
            ok = ok and isinstance(self.targets, np.ndarray) and self.targets.shape == self.frames.shape and self.targets.dtype == np.uint8
        if not ok:
            raise ValueError(
                "flow requests are (n + 1, H, W) uint8 gray frames with n >= 1, or (n, H, W) frames and targets of one shape, "
                f"got {getattr(self.frames, 'shape', self.frames)} and {getattr(self.targets, 'shape', self.targets)}"
            )
        if self.store_as is not None and self.store_as not in ALGORITHMS:
            raise ValueError(f"store_as must be one of {', '.join(ALGORITHMS)} or None, got {self.store_as!r}")
        if self.points is not None and len(self.points) != self.pairs:
            raise ValueError(f"points must give one (M, 2) array per pair ({self.pairs}), got {len(self.points)}")


@dataclass
class FlowChunk:
    """A worker's answer to one request, pair by pair."""

    flows: dict[str, np.ndarray]  # {store_as: (n, H, W, 2) as schemas.sample.quantize_flow stores it}, or {}
    points: list[np.ndarray] = field(default_factory=list)  # per pair, (M, 2) float32 flow (dx, dy) at the asked points
    # the solver's seconds for these pairs: their share of each launch they were in (its padding shared out over its
    # real pairs), compiling left out; what this request cost the worker, whoever else waited with it
    seconds: float = 0.0


def default_batch(device_type: str) -> int:
    """Pairs per launch when none is configured: CPU_BATCH on the CPU, GPU_BATCH on a GPU."""
    return CPU_BATCH if device_type == "cpu" else GPU_BATCH


class LocalFlow:
    """Flow computed in the calling process by its own `pipeline.flow_service.FlowWorker` (tests, and runs without
    a flow service)."""

    in_flight = 1

    def __init__(self, worker):
        self.worker = worker
        self.batch_size = worker.batch_size

    def submit(self, request: FlowRequest):
        """Compute now; returns a function that gives the FlowChunk, or raises what computing it raised (the
        interface of a remote request)."""
        try:
            chunk = self.worker.compute(request)
        except Exception as exc:  # noqa: BLE001 - handed to the caller when it collects, as a remote error would be
            error = exc

            def fail():
                raise error

            return fail
        return lambda: chunk
