"""Batched TV-L1 optical flow (Zach, Pock, Bischof 2007, duality scheme of OpenCV's `DualTVL1OpticalFlow`).

The solver is OpenCV's, step for step (pyramid, warps, thresholding, dual updates, median filtering between
warps, stopping on epsilon or the iteration caps), run on a batch of N frame pairs at once on any device.
Each pair stops on its own: once its update falls below epsilon its state is frozen by a mask, so batching
never changes a pair's result.

What the host pays for (what a GPU waits for) is kept per block of iterations, not per iteration: the
`check_every` iterations between two convergence checks are one call of one compiled function (the median
filter that starts an outer iteration included), each check is one read of a count from the device (on a
GPU read one block late from pinned memory, so the device never waits for it), and pairs that converged
are set aside by a gather with device-side indices (no boolean masks, no `nonzero`).
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from dataclasses import dataclass, field

import torch
import torch.fx.experimental._config as fx_config

from .ops import (
    divergence,
    dual_step,
    image_gradients,
    median_filter5,
    median_filter5_cv,
    pyramid_size,
    resize_linear,
    threshold_step,
    upsample_flow,
    warp_bicubic,
    warp_bicubic_cv,
)
from .params import PRESETS, TVL1Config

log = logging.getLogger(__name__)

AUTO_COMPILE_PIXELS = 160 * 120  # below this, eager is faster than a process's one-time compilation


def _iteration(u, px, py, grad_i, rho_c, active, params):
    """One TV-L1 iteration in OpenCV's order (data step, flow update, dual update); pairs whose `active` is False
    keep their state.

    Args:
        u: (N, C, H, W) flow (C = 3 with the illumination channel).
        px, py: (N, C, H, W) dual variables.
        grad_i: (N, C, H, W) gradient of the warped image (third channel gamma when gamma > 0).
        rho_c: (N, 1, H, W) constant part of the residual.
        active: (N,) bool, pairs still iterating.
        params: (4,) float32 tensor (lambda * theta, theta, tau / theta, epsilon^2); a tensor rather than
            Python floats so that torch.compile does not specialise (and recompile) on their values.
    Returns:
        (u, px, py, active) after the iteration; active drops pairs whose update fell below epsilon.
    """
    l_t, theta, taut, eps2 = params[0], params[1], params[2], params[3]
    u_n = threshold_step(u, grad_i, rho_c, l_t) + theta * divergence(px, py)
    err = ((u_n - u) ** 2).flatten(1).sum(1)  # (N,) squared update
    px_n, py_n = dual_step(px, py, u_n, taut)
    still = err > eps2 * u.shape[-1] * u.shape[-2]
    m = active.view(-1, 1, 1, 1)
    return torch.where(m, u_n, u), torch.where(m, px_n, px), torch.where(m, py_n, py), active & still


def _median_of_active(u, active, median):
    """u with the flow channels of the active pairs median filtered (OpenCV filters before each outer iteration)."""
    filtered = median(u[:, :2])
    if u.shape[1] == 3:
        filtered = torch.cat([filtered, u[:, 2:]], 1)
    return torch.where(active.view(-1, 1, 1, 1), filtered, u)


def _block(u, px, py, grad_i, rho_c, active, params, *, iterations: int):
    """`iterations` iterations: what one compiled call runs."""
    for _ in range(iterations):
        u, px, py, active = _iteration(u, px, py, grad_i, rho_c, active, params)
    return u, px, py, active


def _filtered_block(u, px, py, grad_i, rho_c, active, params, *, iterations: int, median):
    """The median filter, then `_block` (a function of its own: one compiled graph cache each)."""
    return _block(_median_of_active(u, active, median), px, py, grad_i, rho_c, active, params, iterations=iterations)


class Kernels:
    """The solver's blocks of iterations and its warp for one device, compiled once per process where that pays.

    A block is n iterations, after the median filter at the start of an outer iteration; each (n, filtered)
    is one compiled graph (a solve uses one or two). On the CPU the median filter and the warp are OpenCV's
    own functions (same results, faster) unless `opencv_cpu_ops` is off, and run between the compiled blocks;
    elsewhere they are the tensor versions, compiled (the median inside the block's graph). Shapes are
    dynamic and sizes of 1 are not special-cased, so pyramid levels, resolutions and batch sizes share one
    graph each. Compiling has one fallback: the first failure to compile (no C++ compiler, an unsupported
    GPU) logs one warning and everything runs eagerly from then on; errors while running (out of memory, a
    lost device) are raised to the caller.
    """

    def __init__(self, device_type: str, compile: bool, opencv_cpu_ops: bool):
        opencv = device_type == "cpu" and opencv_cpu_ops
        self.compile = compile  # False after a compile failure
        self._median = median_filter5_cv if opencv else median_filter5
        self._warp = warp_bicubic_cv if opencv else warp_bicubic
        self._median_in_block = compile and not opencv
        self._compiled: dict[tuple, object] = {}
        self._params: dict[tuple, torch.Tensor] = {}
        self.compile_seconds = 0.0  # time spent in calls that compiled a graph
        self._frames = None  # Dynamo's counters of compiled frames, once it is imported

    @property
    def compiles(self) -> int:
        """Graphs compiled so far in this process (by any compiled function). Dynamo is imported only by a
        first compile: importing it costs every process ~3 s of CPU, which a solver that never compiles skips."""
        if self._frames is None:
            if "torch._dynamo" not in sys.modules:
                return 0
            from torch._dynamo.utils import counters

            self._frames = counters["frames"]  # read twice per block: looked up once
        return self._frames["ok"]

    def params(self, cfg: TVL1Config, device: torch.device) -> torch.Tensor:
        """The solver's constants on the device, made once per configuration (no host-to-device copy per solve)."""
        key = (device, cfg.lambda_, cfg.theta, cfg.tau, cfg.epsilon)
        if key not in self._params:
            with torch.inference_mode(False):  # usable in and outside inference mode
                values = [cfg.lambda_ * cfg.theta, cfg.theta, cfg.tau / cfg.theta, cfg.epsilon**2]
                self._params[key] = torch.tensor(values, dtype=torch.float32, device=device)
        return self._params[key]

    def block(self, u, px, py, grad_i, rho_c, active, params, iterations: int, filtered: bool):
        """`iterations` iterations (see `_iteration`), after the median filter when `filtered`: one host call.
        Returns (u, px, py, active)."""
        if filtered and not self._median_in_block:
            u, filtered = _median_of_active(u, active, self._median), False
        return self._call(("block", iterations, filtered), u, px, py, grad_i, rho_c, active, params)

    def warp(self, img, flow):
        """`img` sampled at x + flow (compiled where it pays)."""
        return self._call(("warp",), img, flow)

    def _eager(self, key: tuple):
        if key[0] == "warp":
            return self._warp
        _, iterations, filtered = key
        if filtered:
            return functools.partial(_filtered_block, iterations=iterations, median=self._median)
        return functools.partial(_block, iterations=iterations)

    def _compile(self, key: tuple):
        """The compiled version of kernel `key` (compiled on its first call)."""
        return _size_oblivious(torch.compile(self._eager(key), dynamic=True))

    def _call(self, key: tuple, *args):
        if not self.compile or (key == ("warp",) and self._warp is warp_bicubic_cv):
            return self._eager(key)(*args)
        fn = self._compiled.get(key)
        if fn is None:
            fn = self._compiled[key] = self._compile(key)
        before, start = self.compiles, time.perf_counter()
        try:
            out = fn(*args)
        except Exception as exc:
            if not _is_compile_error(exc):
                raise  # out of memory, a lost device, a bug: the caller decides
            log.warning("torch.compile failed (%s); TV-L1 continues without it (slower)", str(exc).splitlines()[0][:300])
            self.compile, self._median_in_block = False, False
            return self._eager(key)(*args)
        if self.compiles != before:
            self.compile_seconds += time.perf_counter() - start
        return out


def _is_compile_error(exc: BaseException) -> bool:
    """Whether `exc` says that compiling failed (Dynamo and Inductor wrap such errors), not running: an
    out-of-memory anywhere in its chain (autotuning allocates) is a running error."""
    from torch._dynamo.exc import TorchDynamoException
    from torch._inductor.exc import CppCompileError, InvalidCxxCompiler

    seen = exc
    while seen is not None:
        if isinstance(seen, torch.OutOfMemoryError):
            return False
        seen = seen.__cause__ or seen.__context__
    return isinstance(exc, (TorchDynamoException, CppCompileError, InvalidCxxCompiler))


def _size_oblivious(fn):
    """`fn` traced with dynamic batch and image sizes, without special-casing sizes of 0 and 1 (so a batch of
    one pair gets no graph of its own), and with static channel counts (so a channel of 1 still broadcasts).

    The settings are made around every call, not only the first: Dynamo may trace again later (sizes that were
    equal on the first trace and differ now, for one), and such a graph must be traced the same way. By hand
    rather than with `fx_config.patch`, whose context manager costs the host more than the rest of this wrapper
    (it runs once per block of iterations).
    """

    @functools.wraps(fn)
    def call(*args):
        for arg in args:
            if arg.ndim == 4:
                torch._dynamo.mark_static(arg, 1)
            elif arg.dtype.is_floating_point:  # the solver parameters
                torch._dynamo.mark_static(arg, 0)
        before = fx_config.backed_size_oblivious
        fx_config.backed_size_oblivious = True
        try:
            return fn(*args)
        finally:
            fx_config.backed_size_oblivious = before

    return call


def use_compile(cfg: TVL1Config, device_type: str, height: int, width: int) -> bool:
    """Whether to compile: as configured, else on a GPU or for frames of at least AUTO_COMPILE_PIXELS."""
    if cfg.compile is not None:
        return cfg.compile
    return device_type != "cpu" or height * width >= AUTO_COMPILE_PIXELS


@functools.cache
def kernels_for(device_type: str, compile: bool, opencv_cpu_ops: bool) -> Kernels:
    """This process's kernels for a device (one set per process: compiled graphs are reused by every call)."""
    return Kernels(device_type, compile, opencv_cpu_ops)


@dataclass
class SolveTrace:
    """What solves did, for benchmarks and the run report (pass one to `tvl1_flow` to fill it)."""

    iterations: list[int] = field(default_factory=list)  # per warp (every level): iterations its slowest pair ran
    blocks: int = 0  # host calls of a block of iterations
    reads: int = 0  # blocking reads of a device value by the host: one per convergence check
    compactions: int = 0  # times converged pairs were set aside


@dataclass
class _Solve:
    """How one `tvl1_flow` call runs (shared by its levels and warps)."""

    cfg: TVL1Config
    kernels: Kernels
    params: torch.Tensor
    check_every: int
    async_check: bool
    trace: SolveTrace


def tvl1_flow(prev: torch.Tensor, nxt: torch.Tensor, cfg: TVL1Config = PRESETS["opencv"], trace: SolveTrace | None = None) -> torch.Tensor:
    """TV-L1 optical flow from `prev` to `nxt` for a batch of grayscale pairs.

    Args:
        prev, nxt: (N, 1, H, W) float32 in [0, 1], on the device to compute on.
        cfg: solver parameters.
        trace: filled with what the solve did (iterations per warp, host reads), when given.
    Returns:
        (N, 2, H, W) float32 forward flow in pixels, channel 0 = x (dx), channel 1 = y (dy).
    """
    device = prev.device
    kernels = kernels_for(device.type, use_compile(cfg, device.type, *prev.shape[-2:]), cfg.opencv_cpu_ops)
    gpu = device.type != "cpu"
    solve = _Solve(
        cfg,
        kernels,
        kernels.params(cfg, device),
        check_every=cfg.check_every or (10 if gpu else 1),
        async_check=gpu if cfg.async_check is None else cfg.async_check,
        trace=trace if trace is not None else SolveTrace(),
    )
    # OpenCV works on 0..255 intensities; lambda is tuned for that range.
    levels = [(prev * 255.0, nxt * 255.0)]
    while cfg.nscales is None or len(levels) < cfg.nscales:
        h, w = pyramid_size(*levels[-1][0].shape[-2:], cfg.scale_step)
        if h < cfg.min_size or w < cfg.min_size:
            break
        levels.append(tuple(resize_linear(img, cfg.scale_step) for img in levels[-1]))

    channels = 3 if cfg.gamma > 0 else 2  # the third is the illumination term
    u = prev.new_zeros(prev.shape[0], channels, *levels[-1][0].shape[-2:])
    for level in range(len(levels) - 1, -1, -1):
        u = _solve_level(*levels[level], u, solve)
        if level > 0:
            finer = levels[level - 1][0].shape[-2:]
            flow = upsample_flow(u[:, :2], finer, cfg.scale_step)
            u = torch.cat([flow, upsample_flow(u[:, 2:], finer, 1.0)], 1) if channels == 3 else flow
    return u[:, :2]


def _solve_level(I0, I1, u, solve: _Solve):
    """All warps of one pyramid level (OpenCV `procOneScale`). I0, I1: (N, 1, H, W) in 0..255."""
    N, _, H, W = I0.shape
    I1x, I1y = image_gradients(I1)
    stack = torch.cat([I1, I1x, I1y], 1)  # (N, 3, H, W), warped together
    px, py = torch.zeros_like(u), torch.zeros_like(u)
    for _ in range(solve.cfg.warps):
        warped = solve.kernels.warp(stack, u[:, :2])  # (N, 3, H, W): I1(x + u), its x and y gradients
        grad_xy = warped[:, 1:].contiguous()  # one memory layout for the compiled iteration, before and after compaction
        rho_c = warped[:, :1] - (grad_xy * u[:, :2]).sum(1, keepdim=True) - I0
        grad_i = grad_xy if u.shape[1] == 2 else torch.cat([grad_xy, grad_xy.new_full((N, 1, H, W), solve.cfg.gamma)], 1)
        u, px, py = _iterate_warp(u, px, py, grad_i, rho_c, solve)
    return u


def _blocks(cfg: TVL1Config, check_every: int):
    """(starts with the median filter, iterations) of each block of a warp: a check after every block, blocks of
    `check_every` iterations, and a new block where an outer iteration starts with its median filter."""
    filtering = cfg.median_filtering > 1
    span = cfg.inner_iterations if filtering else cfg.inner_iterations * cfg.outer_iterations
    sizes = [check_every] * (span // check_every) + ([span % check_every] if span % check_every else [])
    for _ in range(cfg.outer_iterations if filtering else 1):
        for i, n in enumerate(sizes):
            yield filtering and i == 0, n


class _ActiveCount:
    """How many pairs are still active after a block: on a GPU copied into pinned memory behind an event (read
    later without stalling the device), elsewhere read when asked."""

    def __init__(self, active: torch.Tensor):
        # Counted outside the compiled block: the reduction over the batch inside it made the fused CPU kernel of
        # an iteration ~1.7x slower (measured), and on a GPU it is one more small kernel either way.
        count = active.sum()
        self.active = active
        self._event = None
        if active.is_cuda:
            self._count = torch.empty((), dtype=count.dtype, pin_memory=True)
            self._count.copy_(count, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._count = count

    def read(self) -> int:
        """The count (waits for the block that produced it, not for later ones)."""
        if self._event is not None:
            self._event.synchronize()
        return int(self._count)


def _iterate_warp(u, px, py, grad_i, rho_c, solve: _Solve):
    """The outer / inner iterations of one warp, each pair until its own convergence.

    Pairs found converged at a check are set aside (their state written to the output) and the rest go on as
    a smaller batch, so a batch costs the sum of its pairs' iterations, not N times the slowest. With
    `async_check` each check is acted on after the next block is queued: pairs frozen since then have not
    changed, so setting them aside late gives the same result.
    """
    trace = solve.trace
    out = [torch.empty_like(t) for t in (u, px, py)]
    index = torch.arange(u.shape[0], device=u.device)  # batch positions of the pairs still iterating
    active = torch.ones(u.shape[0], dtype=torch.bool, device=u.device)
    unread = None  # the check of the block before, with async_check
    iterations = 0
    for filtered, n in _blocks(solve.cfg, solve.check_every):
        u, px, py, active = solve.kernels.block(u, px, py, grad_i, rho_c, active, solve.params, n, filtered)
        iterations += n
        trace.blocks += 1
        check = _ActiveCount(active)
        if solve.async_check:
            check, unread = unread, check
        if check is None:
            continue
        remaining = check.read()
        trace.reads += 1
        if remaining == len(index):
            continue
        # a stable order with the pairs active at the check first: a gather, no boolean mask or nonzero
        order = torch.argsort((~check.active).to(torch.uint8), stable=True)
        keep, gone = order[:remaining], order[remaining:]
        for o, t in zip(out, (u, px, py)):
            o.index_copy_(0, index.index_select(0, gone), t.index_select(0, gone))
        trace.compactions += 1
        if remaining == 0:
            break
        index, active = index.index_select(0, keep), active.index_select(0, keep)
        u, px, py, grad_i, rho_c = (t.index_select(0, keep) for t in (u, px, py, grad_i, rho_c))
        unread = None  # it counted the batch as it was before this compaction
    else:
        for o, t in zip(out, (u, px, py)):
            o.index_copy_(0, index, t)
    trace.iterations.append(iterations)
    return out
