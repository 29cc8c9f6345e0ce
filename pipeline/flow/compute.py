"""`compute_flow`: the public entry point for optical flow on arrays or tensors."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .params import ALGORITHMS, TVL1Config, resolve_params
from .tvl1 import tvl1_flow
from .warped import HomographyConfig, HomographyResult, estimate_homography, warp_to_previous_view


def default_device() -> torch.device:
    """`cuda` when a GPU is visible, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _check_pair(prev, nxt) -> None:
    """Raise ValueError describing what is wrong with the inputs."""
    kinds = {type(prev).__name__, type(nxt).__name__}
    if not all(isinstance(x, (np.ndarray, torch.Tensor)) for x in (prev, nxt)) or len(kinds) != 1:
        raise ValueError(f"prev and nxt must both be numpy arrays or both torch tensors, got {' and '.join(sorted(kinds))}")
    for name, x in (("prev", prev), ("nxt", nxt)):
        if x.ndim not in (2, 3):
            raise ValueError(f"{name} must be (H, W) or (N, H, W) grayscale, got shape {tuple(x.shape)}")
        if isinstance(x, np.ndarray) and x.dtype != np.uint8:
            raise ValueError(f"{name} must be uint8 grayscale (0..255), got dtype {x.dtype}; convert with .astype(np.uint8)")
        if isinstance(x, torch.Tensor):
            if x.dtype != torch.uint8 and not x.dtype.is_floating_point:
                raise ValueError(f"{name} tensor must be uint8 or floating point in 0..255, got {x.dtype}")
            if x.dtype.is_floating_point and bool(torch.isnan(x).any()):
                raise ValueError(f"{name} contains NaN")
        if 0 in tuple(x.shape):
            raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
        if x.shape[-1] < 2 or x.shape[-2] < 2:
            raise ValueError(f"{name} frames must be at least 2x2 pixels, got {tuple(x.shape[-2:])}")
    if tuple(prev.shape) != tuple(nxt.shape):
        raise ValueError(f"prev and nxt sizes differ: {tuple(prev.shape)} vs {tuple(nxt.shape)}")


def compute_flow(
    prev,
    nxt,
    algorithm: str | Sequence[str] = "tvl1",
    preset: str = "opencv",
    device: str | torch.device | None = None,
    *,
    return_homographies: bool = False,
    **params,
):
    """Forward optical flow prev -> nxt for one pair or a batch, on the GPU when present.

    Args:
        prev, nxt: uint8 grayscale numpy arrays (H, W) or (N, H, W); torch tensors (uint8, or float in
            0..255) may be passed instead, and the result is then a tensor on their device.
        algorithm: "tvl1", or "warp_tvl1" (camera motion removed by a homography, TSN's warped flow); or a
            sequence of them, computed together (warped TV-L1 starts from plain TV-L1, so both cost one more
            solve, not two) and returned as {algorithm: flow}.
        preset: "opencv" (OpenCV's DualTVL1 defaults) or "accurate" (see `pipeline.flow.params.PRESETS`).
        device: where to compute; default `cuda` when available, else the CPU (ignored for tensors,
            which are computed where they are).
        return_homographies: with warp_tvl1, also return one HomographyResult per pair.
        **params: any TVL1Config field (`lambda` may be spelled without the underscore) or, for warp_tvl1,
            any HomographyConfig field.
    Returns:
        float32 (H, W, 2) or (N, H, W, 2) flow in pixels, [..., 0] = x, [..., 1] = y (Middlebury convention),
        or {algorithm: flow} for a sequence of algorithms; with return_homographies, a tuple
        (that, list of HomographyResult).
    Raises:
        ValueError: wrong shapes or dtypes, sizes that differ, empty input, NaN, unknown names.
    """
    algorithms = (algorithm,) if isinstance(algorithm, str) else tuple(algorithm or ())
    unknown = [a for a in algorithms if a not in ALGORITHMS]
    if unknown or not algorithms:
        raise ValueError(f"unknown flow algorithm {', '.join(map(repr, unknown)) or '(none given)'}; choose one of {', '.join(ALGORITHMS)}")
    if return_homographies and "warp_tvl1" not in algorithms:
        raise ValueError("return_homographies needs algorithm='warp_tvl1'")
    _check_pair(prev, nxt)
    tvl1_cfg, homography_cfg = resolve_params(preset, params)
    as_tensor = isinstance(prev, torch.Tensor)
    single = prev.ndim == 2
    if as_tensor:
        I0, I1 = (x.to(torch.float32) for x in (prev, nxt))
    else:
        dev = torch.device(device) if device is not None else default_device()
        I0, I1 = (torch.from_numpy(np.ascontiguousarray(x)).to(dev, torch.float32) for x in (prev, nxt))
    if single:
        I0, I1 = I0[None], I1[None]
    I0, I1 = I0[:, None] / 255.0, I1[:, None] / 255.0  # (N, 1, H, W) in [0, 1]

    with torch.inference_mode():
        flows, homographies = flows_on_device(I0, I1, algorithms, tvl1_cfg, homography_cfg)
        out = {}
        for name in algorithms:
            flow = flows[name].permute(0, 2, 3, 1).contiguous()  # (N, H, W, 2)
            flow = flow[0] if single else flow
            out[name] = flow if as_tensor else flow.cpu().numpy()
    result = out[algorithm] if isinstance(algorithm, str) else out
    return (result, homographies) if return_homographies else result


def flows_on_device(I0, I1, algorithms, tvl1_cfg: TVL1Config, homography_cfg: HomographyConfig):
    """The flows of a batch where it lies: warped TV-L1 starts from plain TV-L1.

    Args:
        I0, I1: (N, 1, H, W) float32 in [0, 1].
    Returns:
        ({algorithm: (N, 2, H, W) flow}, one HomographyResult per pair when warp_tvl1 is asked for, else []).
    """
    flows = {"tvl1": tvl1_flow(I0, I1, tvl1_cfg)}
    homographies: list[HomographyResult] = []
    if "warp_tvl1" in algorithms:
        flows["warp_tvl1"], homographies = _remove_camera_motion(I0, I1, flows["tvl1"], tvl1_cfg, homography_cfg)
    return flows, homographies


def _remove_camera_motion(I0, I1, flow, tvl1_cfg: TVL1Config, homography_cfg: HomographyConfig):
    """Warped TV-L1 for a batch: homographies on the CPU (OpenCV), then TV-L1 again on (prev, warped next).
    (The preprocessing pipeline does the CPU part in its shard tasks instead: `pipeline.video_flow`.)"""
    to_u8 = lambda t: (t[:, 0] * 255.0).round().clamp(0, 255).to(torch.uint8).cpu().numpy()  # noqa: E731
    prev_u8, next_u8 = to_u8(I0), to_u8(I1)
    flow_np = flow.permute(0, 2, 3, 1).cpu().numpy()
    results = [estimate_homography(p, n, f, homography_cfg) for p, n, f in zip(prev_u8, next_u8, flow_np)]
    warped = np.stack([warp_to_previous_view(p, n, r.matrix) for p, n, r in zip(prev_u8, next_u8, results)])
    I1w = torch.from_numpy(warped).to(I0.device, torch.float32)[:, None] / 255.0
    return tvl1_flow(I0, I1w, tvl1_cfg), results


def quantize_on_device(flow: torch.Tensor, encoding: str, bound: float) -> np.ndarray:
    """(N, 2, H, W) flow -> the (N, H, W, 2) values `schemas.sample.quantize_flow` stores, computed where the flow
    lies (the same float operations in the same order, so the values are identical) before it leaves the device."""
    flow = flow.permute(0, 2, 3, 1)
    if encoding == "jpeg":
        q = torch.clamp(torch.round(255.0 * (flow.float() + bound) / (2.0 * bound)), 0, 255).to(torch.uint8)
    elif encoding == "png16":
        q = torch.clamp(torch.round(65535.0 * (flow.double() + bound) / (2.0 * bound)), 0, 65535).to(torch.int32)
    elif encoding == "float16":
        q = flow.to(torch.float16)
    else:
        raise ValueError(f"unknown flow encoding {encoding!r}")
    q = q.contiguous().cpu().numpy()
    return q.astype(np.uint16) if encoding == "png16" else q
