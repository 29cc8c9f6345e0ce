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


def threshold_step(u: torch.Tensor, grad_i: torch.Tensor, rho_c: torch.Tensor, l_t: float) -> torch.Tensor:
    """The pointwise TV-L1 data step: v = u + TH(rho(u)), OpenCV `estimateV`.

    With gamma > 0 (an illumination term) the flow carries a third channel w and grad_i a constant third
    channel gamma, so the same step updates (u1, u2, w).

    Args:
        u: (N, 2, H, W) current flow, or (N, 3, H, W) with the illumination channel.
        grad_i: (N, 2, H, W) gradient of the warped second image, or (N, 3, H, W) with gamma appended.
        rho_c: (N, 1, H, W) constant part of the linearised residual, I1w - grad_i . u0 - I0.
        l_t: lambda * theta.
    """
    g2 = (grad_i * grad_i).sum(1, keepdim=True)  # (N, 1, H, W) |grad I1w|^2
    rho = rho_c + (grad_i * u).sum(1, keepdim=True)  # (N, 1, H, W)
    lg = l_t * g2
    fi = torch.where(rho < -lg, l_t, torch.where(rho > lg, -l_t, torch.where(g2 > 1.1920929e-07, -rho / g2, 0.0)))
    return u + fi * grad_i


def dual_step(px: torch.Tensor, py: torch.Tensor, u: torch.Tensor, taut: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Projected gradient ascent on the dual variables p = (px, py) of TV(u) (OpenCV `estimateDualVariables`)."""
    gx, gy = forward_gradient(u)
    ng = 1.0 + taut * torch.sqrt(gx * gx + gy * gy)
    return (px + taut * gx) / ng, (py + taut * gy) / ng


def warp_bicubic_cv(img: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """`warp_bicubic` for CPU tensors by OpenCV's `remap` itself (the reference, and faster)."""
    N, C, H, W = img.shape
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float32)
    planes = img.detach().permute(0, 2, 3, 1).contiguous().numpy()  # (N, H, W, C) for OpenCV
    f = flow.detach().numpy()
    out = np.empty_like(planes)
    for i in range(N):
        warped = cv2.remap(planes[i], xs + f[i, 0], ys + f[i, 1], cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT)
        out[i] = warped.reshape(H, W, C)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def _cubic_weights(t: torch.Tensor, a: float = -0.75) -> list[torch.Tensor]:
    """Weights of the taps at offsets -1, 0, 1, 2 for a fractional position t in [0, 1) (Keys, a = -0.75)."""

    def near(d):  # |d| <= 1
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d):  # 1 < |d| < 2
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def warp_bicubic(img: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample `img` at (x + flow_x, y + flow_y), bicubic (a = -0.75), zero outside (OpenCV `remap` INTER_CUBIC).

    16 gathered taps; positions are split into integer and fractional parts in pixel units (no normalised
    grid), so a zero flow reproduces the image exactly, as OpenCV does.

    Args:
        img: (N, C, H, W).
        flow: (N, 2, H, W) in pixels.
    """
    N, C, H, W = img.shape
    ys = torch.arange(H, dtype=img.dtype, device=img.device).view(1, H, 1)
    xs = torch.arange(W, dtype=img.dtype, device=img.device).view(1, 1, W)
    x, y = xs + flow[:, 0], ys + flow[:, 1]  # (N, H, W) sample positions
    x0, y0 = torch.floor(x), torch.floor(y)
    wx, wy = _cubic_weights(x - x0), _cubic_weights(y - y0)
    x0, y0 = x0.long(), y0.long()
    flat = img.reshape(N, C, H * W)
    out = torch.zeros_like(img)
    for i in range(4):
        yi = y0 + (i - 1)
        y_in = (yi >= 0) & (yi < H)
        for j in range(4):
            xj = x0 + (j - 1)
            inside = y_in & (xj >= 0) & (xj < W)  # (N, H, W)
            index = (yi.clamp(0, H - 1) * W + xj.clamp(0, W - 1)).view(N, 1, H * W).expand(N, C, H * W)
            taps = flat.gather(2, index).view(N, C, H, W)
            out += (wy[i] * wx[j] * inside).unsqueeze(1) * taps
    return out


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


MEDIAN25 = median_network(25)  # a plain constant for torch.compile to read (it warns on tracing a cached function)


def median_filter5_cv(u: torch.Tensor) -> torch.Tensor:
    """`median_filter5` for CPU tensors by OpenCV's `medianBlur` (same result, ~10x faster on the CPU)."""
    planes = u.detach().reshape(-1, *u.shape[-2:]).numpy()
    out = np.stack([cv2.medianBlur(np.ascontiguousarray(p), 5) for p in planes])
    return torch.from_numpy(out).view(u.shape)


def median_filter5(u: torch.Tensor) -> torch.Tensor:
    """5x5 median of each channel with replicated borders (OpenCV `medianBlur(u, 5)` on float32).

    A min/max selection network on the 25 shifted views; it fuses into one kernel on a GPU.
    """
    H, W = u.shape[-2:]
    p = F.pad(u, (2, 2, 2, 2), mode="replicate")  # (N, C, H+4, W+4)
    v = [p[..., i : i + H, j : j + W] for i in range(5) for j in range(5)]
    for a, b, keep_min, keep_max in MEDIAN25:
        lo = torch.minimum(v[a], v[b]) if keep_min else None
        hi = torch.maximum(v[a], v[b]) if keep_max else None
        if keep_min:
            v[a] = lo
        if keep_max:
            v[b] = hi
    return v[12]
