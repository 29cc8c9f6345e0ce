"""Batched TV-L1 optical flow (Zach, Pock, Bischof 2007, duality scheme of OpenCV's `DualTVL1OpticalFlow`).

The solver is OpenCV's, step for step (pyramid, warps, thresholding, dual updates, median filtering between
warps, stopping on epsilon or the iteration caps), run on a batch of N frame pairs at once on any device.
Each pair stops on its own: once its update falls below epsilon its state is frozen by a mask, so batching
never changes a pair's result, and the loop checks for convergence only every `check_every` iterations
(a GPU never waits on the host inside that window).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from dataclasses import dataclass

import torch
import torch.fx.experimental._config as fx_config
from torch._dynamo.utils import counters

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

log = logging.getLogger(__name__)

AUTO_COMPILE_PIXELS = 160 * 120  # below this, eager is faster than a process's one-time compilation


@dataclass(frozen=True)
class TVL1Config:
    """TV-L1 parameters; the defaults are OpenCV's `DualTVL1OpticalFlow` defaults (the `opencv` preset)."""

    tau: float = 0.25  # time step of the dual ascent
    lambda_: float = 0.15  # weight of the data term (smaller = smoother flow)
    theta: float = 0.3  # coupling between the flow u and its auxiliary variable v
    nscales: int | None = 5  # pyramid levels; None = as many as `min_size` allows
    warps: int = 5  # re-linearisations of the data term per level
    epsilon: float = 0.01  # stop a pair when its RMS update per pixel falls below this
    inner_iterations: int = 30
    outer_iterations: int = 10  # a median filter runs before each outer iteration
    scale_step: float = 0.8  # size ratio between pyramid levels
    gamma: float = 0.0  # weight of an illumination-change term (0 = off)
    median_filtering: int = 5  # median filter size applied to the flow (1 = off, or 5)
    min_size: int = 16  # a pyramid level narrower or lower than this is not used (OpenCV: 16)
    # How the solver runs; these change the flow by float rounding at most (compile ~1e-3 px, the OpenCV ops ~0.01 px
    # mean; check_every not at all).
    compile: bool | None = None  # fuse each iteration into one kernel with torch.compile; None = when it pays
    # (on a GPU, or frames of at least AUTO_COMPILE_PIXELS); compiling costs ~10-60 s once per process
    check_every: int | None = None  # iterations between convergence checks; None = 1 on CPU, 10 on GPU
    opencv_cpu_ops: bool = True  # on the CPU, OpenCV's own remap and median filter (False: the GPU code)

    def __post_init__(self):
        for name in ("tau", "lambda_", "theta", "epsilon"):
            if not getattr(self, name) > 0:
                raise ValueError(f"TV-L1 {name} must be positive, got {getattr(self, name)}")
        if not 0 < self.scale_step < 1:
            raise ValueError(f"TV-L1 scale_step must be in (0, 1), got {self.scale_step}")
        for name in ("warps", "inner_iterations", "outer_iterations", "min_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"TV-L1 {name} must be at least 1, got {getattr(self, name)}")
        if self.nscales is not None and self.nscales < 1:
            raise ValueError(f"TV-L1 nscales must be at least 1 (or None for a full pyramid), got {self.nscales}")
        if self.median_filtering not in (1, 5):
            raise ValueError(f"TV-L1 median_filtering must be 1 (off) or 5, got {self.median_filtering}")
        if self.gamma < 0:
            raise ValueError(f"TV-L1 gamma must be >= 0, got {self.gamma}")
        if self.check_every is not None and self.check_every < 1:
            raise ValueError(f"TV-L1 check_every must be at least 1, got {self.check_every}")

    def replace(self, **changes) -> TVL1Config:
        """A copy with some parameters changed; unknown names raise ValueError listing the valid ones."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown TV-L1 parameter(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, TVL1Config] = {
    # OpenCV's defaults: the flow existing two-stream and I3D models were trained on.
    "opencv": TVL1Config(),
    # A pyramid down to 16 px with finer steps (0.9) follows large motion (Middlebury Urban2: 3.57 -> 0.36
    # end-point error); the illumination term (gamma) and a stronger data term sharpen motion edges
    # (Venus 0.31 -> 0.23). Chosen by a small sweep on the Middlebury sequences (bench/flow_accuracy.py):
    # mean error 0.94 -> 0.28, at about 3x the opencv preset's time.
    "accurate": TVL1Config(nscales=None, scale_step=0.9, lambda_=0.2, gamma=0.4),
}


def _update(u_grad, u, px, py, grad_i, rho_c, active, params):
    """One TV-L1 iteration for a batch; pairs whose `active` is False keep their state.

    The dual update pending from the previous iteration (on `u_grad`, before any median filtering) is done
    first, so the whole iteration is one pass: OpenCV's order of operations, rotated by half a step.

    Args:
        u_grad: (N, C, H, W) flow whose gradient updates the dual variables (zeros right after a new level).
        u: (N, C, H, W) flow the data step starts from (after median filtering where one ran).
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
    px_n, py_n = dual_step(px, py, u_grad, taut)
    u_n = threshold_step(u, grad_i, rho_c, l_t) + theta * divergence(px_n, py_n)
    err = ((u_n - u) ** 2).flatten(1).sum(1)  # (N,) squared update
    still = err > eps2 * u.shape[-1] * u.shape[-2]
    m = active.view(-1, 1, 1, 1)
    return torch.where(m, u_n, u), torch.where(m, px_n, px), torch.where(m, py_n, py), active & still


def _iteration(u, px, py, grad_i, rho_c, active, params):
    """The common iteration: the pending dual update is on the same flow the data step starts from."""
    return _update(u, u, px, py, grad_i, rho_c, active, params)


def _iteration_after_filter(u_grad, u, px, py, grad_i, rho_c, active, params):
    """The first iteration after a median filter or a new level, where the two flows differ.

    A function of its own (not `_iteration` called with u twice) so torch.compile keeps one graph for each
    case instead of recompiling whenever the two arguments are, or stop being, the same tensor.
    """
    return _update(u_grad, u, px, py, grad_i, rho_c, active, params)


class Kernels:
    """The iteration, median filter and warp for one device, compiled once per process where that pays.

    On the CPU the median filter and the warp are OpenCV's own functions (same results, faster) unless
    `opencv_cpu_ops` is off; elsewhere they are the tensor versions, compiled with the iteration. Every
    compiled function sits behind one fallback: the first failure (no C++ compiler, an unsupported GPU)
    logs one warning and the eager versions of all of them are used from then on. Shapes are dynamic and
    sizes of 1 are not special-cased, so pyramid levels, resolutions and batch sizes share one graph each.
    """

    def __init__(self, device_type: str, compile: bool, opencv_cpu_ops: bool):
        opencv = device_type == "cpu" and opencv_cpu_ops
        self._eager = {
            "same": _iteration,
            "after_filter": _iteration_after_filter,
            "median": median_filter5_cv if opencv else median_filter5,
            "warp": warp_bicubic_cv if opencv else warp_bicubic,
        }
        self._fns = dict(self._eager)
        self.compiled = ("same", "after_filter") + (() if opencv else ("median", "warp")) if compile else ()
        for name in self.compiled:
            self._fns[name] = _size_oblivious(torch.compile(self._eager[name], dynamic=True))
        self.compile_seconds = 0.0  # time spent in calls that compiled a graph

    @property
    def compiles(self) -> int:
        """Graphs compiled so far in this process (by any compiled function)."""
        return counters["frames"]["ok"]

    def call(self, name: str, *args):
        """Run kernel `name`, compiled where possible; a compilation failure switches every kernel to eager."""
        fn = self._fns[name]
        if fn is self._eager[name]:
            return fn(*args)
        before, start = self.compiles, time.perf_counter()
        try:
            out = fn(*args)
        except Exception as exc:  # compilation problems surface on the first call of each graph
            log.warning("torch.compile failed (%s); TV-L1 continues without it (slower)", str(exc).splitlines()[0][:300])
            self._fns = dict(self._eager)
            return self._eager[name](*args)
        if self.compiles != before:
            self.compile_seconds += time.perf_counter() - start
        return out

    def iterate(self, u_grad, u, *args):
        """One iteration (see `_update` for the arguments)."""
        return self.call("same", u, *args) if u_grad is u else self.call("after_filter", u_grad, u, *args)

    def median(self, u):
        """The median filter of the flow (compiled where it pays)."""
        return self.call("median", u)

    def warp(self, img, flow):
        """`img` sampled at x + flow (compiled where it pays)."""
        return self.call("warp", img, flow)


def _size_oblivious(fn):
    """`fn` traced with dynamic batch and image sizes, without special-casing sizes of 0 and 1 (so a batch of
    one pair gets no graph of its own), and with static channel counts (so a channel of 1 still broadcasts)."""

    @functools.wraps(fn)
    def call(*args):
        for arg in args:
            if arg.ndim == 4:
                torch._dynamo.mark_static(arg, 1)
            elif arg.dtype.is_floating_point:  # the solver parameters
                torch._dynamo.mark_static(arg, 0)
        with fx_config.patch(backed_size_oblivious=True):
            return fn(*args)

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


def tvl1_flow(prev: torch.Tensor, nxt: torch.Tensor, cfg: TVL1Config = PRESETS["opencv"]) -> torch.Tensor:
    """TV-L1 optical flow from `prev` to `nxt` for a batch of grayscale pairs.

    Args:
        prev, nxt: (N, 1, H, W) float32 in [0, 1], on the device to compute on.
        cfg: solver parameters.
    Returns:
        (N, 2, H, W) float32 forward flow in pixels, channel 0 = x (dx), channel 1 = y (dy).
    """
    compile = use_compile(cfg, prev.device.type, *prev.shape[-2:])
    kernels = kernels_for(prev.device.type, compile, cfg.opencv_cpu_ops)
    check_every = cfg.check_every or (1 if prev.device.type == "cpu" else 10)
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
        u = _solve_level(*levels[level], u, cfg, kernels, check_every)
        if level > 0:
            finer = levels[level - 1][0].shape[-2:]
            flow = upsample_flow(u[:, :2], finer, cfg.scale_step)
            u = torch.cat([flow, upsample_flow(u[:, 2:], finer, 1.0)], 1) if channels == 3 else flow
    return u[:, :2]


def _solve_level(I0, I1, u, cfg: TVL1Config, kernels: Kernels, check_every: int):
    """All warps of one pyramid level (OpenCV `procOneScale`). I0, I1: (N, 1, H, W) in 0..255."""
    N, _, H, W = I0.shape
    params = torch.tensor([cfg.lambda_ * cfg.theta, cfg.theta, cfg.tau / cfg.theta, cfg.epsilon**2], device=u.device)
    I1x, I1y = image_gradients(I1)
    stack = torch.cat([I1, I1x, I1y], 1)  # (N, 3, H, W), warped together
    px, py = torch.zeros_like(u), torch.zeros_like(u)
    for warp in range(cfg.warps):
        warped = kernels.warp(stack, u[:, :2])  # (N, 3, H, W): I1(x + u), its x and y gradients
        grad_xy = warped[:, 1:].contiguous()  # one memory layout for the compiled iteration, before and after compaction
        rho_c = warped[:, :1] - (grad_xy * u[:, :2]).sum(1, keepdim=True) - I0
        grad_i = grad_xy if u.shape[1] == 2 else torch.cat([grad_xy, grad_xy.new_full((N, 1, H, W), cfg.gamma)], 1)
        # At a new level p = 0 and no dual update is pending; grad(0) = 0 makes the pending update a no-op.
        pending = torch.zeros_like(u) if warp == 0 else u
        u, px, py = _iterate_warp(pending, u, px, py, grad_i, rho_c, params, cfg, kernels, check_every)
    return u


def _iterate_warp(pending, u, px, py, grad_i, rho_c, params, cfg: TVL1Config, kernels: Kernels, check_every: int):
    """The outer / inner iterations of one warp, each pair until its own convergence.

    Pairs that converge are set aside at the next check (their state written to the output) and the rest
    go on as a smaller batch, so a batch costs the sum of its pairs' iterations, not N times the slowest.
    """
    out_u, out_px, out_py = torch.empty_like(u), torch.empty_like(px), torch.empty_like(py)
    index = torch.arange(u.shape[0], device=u.device)  # batch positions of the pairs still iterating
    active = torch.ones(u.shape[0], dtype=torch.bool, device=u.device)
    iterations = 0
    for _ in range(cfg.outer_iterations):
        u_v = u
        if cfg.median_filtering > 1:
            filtered = kernels.median(u[:, :2])
            u_v = torch.cat([filtered, u[:, 2:]], 1) if u.shape[1] == 3 else filtered
            u_v = torch.where(active.view(-1, 1, 1, 1), u_v, u)
        for _ in range(cfg.inner_iterations):
            u, px, py, active = kernels.iterate(pending, u_v, px, py, grad_i, rho_c, active, params)
            pending = u_v = u
            iterations += 1
            if iterations % check_every:
                continue
            remaining = int(active.sum())
            if remaining < len(index):
                done = ~active
                out_u[index[done]], out_px[index[done]], out_py[index[done]] = u[done], px[done], py[done]
                if remaining == 0:
                    return out_u, out_px, out_py
                keep = active.nonzero().squeeze(1)
                index, active = index[keep], active[keep]
                u, px, py, grad_i, rho_c = u[keep], px[keep], py[keep], grad_i[keep], rho_c[keep]
                pending = u_v = u
    out_u[index], out_px[index], out_py[index] = u, px, py
    return out_u, out_px, out_py
