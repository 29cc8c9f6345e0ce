"""Small tensor operations TV-L1 is built from, each matching its OpenCV counterpart.

All take and return float32 tensors shaped (N, C, H, W) on any device; none does I/O or keeps state.
The boundary handling follows OpenCV's `optflow::DualTVL1OpticalFlow` so that flow computed here
matches the flow existing two-stream / I3D models were trained on.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np
import torch
import torch.nn.functional as F


def image_gradients(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centred differences (x, y) with one-sided half differences at the border (OpenCV `centeredGradient`)."""
    p = F.pad(img, (1, 1, 1, 1), mode="replicate")  # (N, C, H+2, W+2)
    dx = 0.5 * (p[..., 1:-1, 2:] - p[..., 1:-1, :-2])
    dy = 0.5 * (p[..., 2:, 1:-1] - p[..., :-2, 1:-1])
    return dx, dy


def forward_gradient(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward differences (x, y), zero in the last column / row (OpenCV `forwardGradient`)."""
    dx = F.pad(u[..., :, 1:] - u[..., :, :-1], (0, 1, 0, 0))
    dy = F.pad(u[..., 1:, :] - u[..., :-1, :], (0, 0, 0, 1))
    return dx, dy


def divergence(px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    """Backward-difference divergence, the negative adjoint of `forward_gradient` (OpenCV `divergence`)."""
    return px - F.pad(px[..., :, :-1], (1, 0, 0, 0)) + py - F.pad(py[..., :-1, :], (0, 0, 1, 0))


def threshold_step(
    u: torch.Tensor, grad_i: torch.Tensor, rho_c: torch.Tensor, l_t: float
) -> torch.Tensor:
    """The pointwise TV-L1 data step: v = u + TH(rho(u)), OpenCV `estimateV` with gamma = 0.

    Args:
        u: (N, 2, H, W) current flow.
        grad_i: (N, 2, H, W) gradient of the warped second image.
        rho_c: (N, 1, H, W) constant part of the linearised residual, I1w - grad_i . u0 - I0.
        l_t: lambda * theta.
    """
    g2 = (grad_i * grad_i).sum(1, keepdim=True)  # (N, 1, H, W) |grad I1w|^2
    rho = rho_c + (grad_i * u).sum(1, keepdim=True)  # (N, 1, H, W)
    lg = l_t * g2
    fi = torch.where(
        rho < -lg, l_t, torch.where(rho > lg, -l_t, torch.where(g2 > 1.1920929e-07, -rho / g2, 0.0))
    )
    return u + fi * grad_i


def dual_step(px: torch.Tensor, py: torch.Tensor, u: torch.Tensor, taut: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Projected gradient ascent on the dual variables p = (px, py) of TV(u) (OpenCV `estimateDualVariables`)."""
    gx, gy = forward_gradient(u)
    ng = 1.0 + taut * torch.sqrt(gx * gx + gy * gy)
    return (px + taut * gx) / ng, (py + taut * gy) / ng


REMAP_SUBPIXELS = 32  # OpenCV's remap samples at 1/32-pixel positions (INTER_TAB_SIZE)


def warp_bicubic(img: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample `img` at (x + flow_x, y + flow_y), bicubic (a = -0.75), zero outside (OpenCV `remap` INTER_CUBIC).

    Sample positions are rounded to 1/32 pixel as OpenCV's fixed-point remap does. Besides matching its
    results, this keeps a flow of ~0 exactly 0 (identical frames give zero flow rather than drifting at
    the zero-padded border).

    Args:
        img: (N, C, H, W).
        flow: (N, 2, H, W) in pixels.
    """
    N, _, H, W = img.shape
    ys = torch.arange(H, dtype=img.dtype, device=img.device).view(1, H, 1)
    xs = torch.arange(W, dtype=img.dtype, device=img.device).view(1, 1, W)
    # align_corners=True maps -1/+1 to the centres of the first/last pixel.
    sx = torch.round((xs + flow[:, 0]) * REMAP_SUBPIXELS) * (1.0 / REMAP_SUBPIXELS)  # (N, H, W)
    sy = torch.round((ys + flow[:, 1]) * REMAP_SUBPIXELS) * (1.0 / REMAP_SUBPIXELS)
    gx = sx * (2.0 / max(W - 1, 1)) - 1.0
    gy = sy * (2.0 / max(H - 1, 1)) - 1.0
    grid = torch.stack((gx, gy), dim=-1)  # (N, H, W, 2)
    return F.grid_sample(img, grid, mode="bicubic", padding_mode="zeros", align_corners=True)


def pyramid_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """Size of the next pyramid level, rounded as OpenCV's `resize` with fx = fy = scale does."""
    return int(round(height * scale)), int(round(width * scale))


def resize_linear(img: torch.Tensor, scale: float) -> torch.Tensor:
    """Bilinear resize by `scale` exactly as OpenCV's `resize(..., fx=scale, fy=scale, INTER_LINEAR)`.

    OpenCV rounds the output size but maps pixels with the exact factor, which torch's `interpolate`
    cannot do both of; the difference moves the flow error on large motion (Middlebury Urban2 by 6%).
    """
    N, C, H, W = img.shape
    nh, nw = pyramid_size(H, W, scale)
    sy = ((torch.arange(nh, dtype=img.dtype, device=img.device) + 0.5) / scale - 0.5).clamp(0, H - 1)
    sx = ((torch.arange(nw, dtype=img.dtype, device=img.device) + 0.5) / scale - 0.5).clamp(0, W - 1)
    gy = sy * (2.0 / max(H - 1, 1)) - 1.0
    gx = sx * (2.0 / max(W - 1, 1)) - 1.0
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)  # (nh, nw, 2) as (x, y)
    grid = grid.unsqueeze(0).expand(N, nh, nw, 2)
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=True)


def upsample_flow(u: torch.Tensor, size: tuple[int, int], scale: float) -> torch.Tensor:
    """Flow of a coarser level brought to `size`: bilinear resize, values divided by the scale step."""
    return F.interpolate(u, size=size, mode="bilinear", align_corners=False) * (1.0 / scale)


@functools.cache
def median_network(n: int = 25) -> tuple[tuple[int, int, bool, bool], ...]:
    """A selection network for the median of n values: Batcher's odd-even merge sort pruned to the median.

    Each entry (a, b, keep_min, keep_max) compares slots a < b; only the outputs that the median depends on
    are kept, which leaves 113 comparators (202 min/max) for n = 25.
    """
    size = 1 << (n - 1).bit_length()
    network = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p) and i + j + k < n:
                        network.append((i + j, i + j + k))
            k //= 2
        p *= 2
    needed, kept = {n // 2}, []
    for a, b in reversed(network):
        if a in needed or b in needed:
            kept.append((a, b, a in needed, b in needed))
            needed |= {a, b}
    return tuple(reversed(kept))


def median_filter5(u: torch.Tensor) -> torch.Tensor:
    """5x5 median of each channel with replicated borders (OpenCV `medianBlur(u, 5)` on float32).

    On the CPU this calls OpenCV itself (same result, ~10x faster than the tensor version); elsewhere it
    runs a min/max selection network on the 25 shifted views, which fuses into one kernel on a GPU.
    """
    if u.device.type == "cpu":
        planes = u.detach().reshape(-1, *u.shape[-2:]).numpy()
        out = np.stack([cv2.medianBlur(np.ascontiguousarray(p), 5) for p in planes])
        return torch.from_numpy(out).view(u.shape)
    return median_filter5_tensor(u)


def median_filter5_tensor(u: torch.Tensor) -> torch.Tensor:
    """The device-independent 5x5 median used by `median_filter5` off the CPU."""
    H, W = u.shape[-2:]
    p = F.pad(u, (2, 2, 2, 2), mode="replicate")  # (N, C, H+4, W+4)
    v = [p[..., i : i + H, j : j + W] for i in range(5) for j in range(5)]
    for a, b, keep_min, keep_max in median_network(25):
        lo = torch.minimum(v[a], v[b]) if keep_min else None
        hi = torch.maximum(v[a], v[b]) if keep_max else None
        if keep_min:
            v[a] = lo
        if keep_max:
            v[b] = hi
    return v[12]
