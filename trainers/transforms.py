"""Augmentation and normalisation for stacks of frames, as pure functions on uint8 arrays / tensors.

Layouts are in the names: a stack is (N, H, W, C) uint8 (N frames or flows, C = 3 RGB or 2 flow x/y).
Every function applies the same geometry to all N items of a stack, as TSN's group transforms do.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TSN_SCALES = (1.0, 0.875, 0.75, 0.66)


def multi_scale_crop_box(
    height: int, width: int, rng: np.random.Generator, scales=TSN_SCALES, max_distort: int = 1
) -> tuple[int, int, int, int]:
    """TSN's GroupMultiScaleCrop: a (top, left, h, w) box with sides from `scales` x the short side, at a
    corner, the centre, or a quarter position."""
    base = min(height, width)
    sizes = [int(base * s) for s in scales]
    pairs = [(h, w) for i, h in enumerate(sizes) for j, w in enumerate(sizes) if abs(i - j) <= max_distort]
    ch, cw = pairs[rng.integers(len(pairs))]
    ch, cw = min(ch, height), min(cw, width)
    dy, dx = (height - ch) // 4, (width - cw) // 4
    offsets = [
        (0, 0),
        (0, 4 * dx),
        (4 * dy, 0),
        (4 * dy, 4 * dx),
        (2 * dy, 2 * dx),
        (0, 2 * dx),
        (4 * dy, 2 * dx),
        (2 * dy, 0),
        (2 * dy, 4 * dx),
        (dy, dx),
        (dy, 3 * dx),
        (3 * dy, dx),
        (3 * dy, 3 * dx),
    ]
    top, left = offsets[rng.integers(len(offsets))]
    return top, left, ch, cw


def center_box(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the largest centred square crop of at most `size` pixels."""
    s = min(size, height, width)
    return (height - s) // 2, (width - s) // 2, s, s


def three_crop_boxes(height: int, width: int, size: int) -> list[tuple[int, int, int, int]]:
    """Three size x size crops along the long side (start, centre, end), as TSN/mmaction2 ThreeCrop."""
    s = min(size, height, width)
    if width >= height:
        return [(0 + (height - s) // 2, x, s, s) for x in (0, (width - s) // 2, width - s)]
    return [(y, (width - s) // 2, s, s) for y in (0, (height - s) // 2, height - s)]


def ten_crop_boxes(height: int, width: int, size: int) -> list[tuple[int, int, int, int, bool]]:
    """Four corners and the centre, each also flipped: (top, left, h, w, flip)."""
    s = min(size, height, width)
    five = [(0, 0), (0, width - s), (height - s, 0), (height - s, width - s), ((height - s) // 2, (width - s) // 2)]
    return [(top, left, s, s, flip) for flip in (False, True) for top, left in five]


def crop_resize(stack: np.ndarray | torch.Tensor, box: tuple[int, ...], size: int) -> torch.Tensor:
    """(N, H, W, C) 0..255 (an array, or a tensor on any device) -> (N, C, size, size) float32 in the same range."""
    top, left, h, w = box[:4]
    x = torch.as_tensor(stack)[:, top : top + h, left : left + w].contiguous().permute(0, 3, 1, 2).float()
    if (h, w) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x


def hflip_rgb(x: torch.Tensor) -> torch.Tensor:
    """Mirror (..., C, H, W) images left-right."""
    return x.flip(-1)


def hflip_flow(x: torch.Tensor) -> torch.Tensor:
    """Mirror (N, 2, H, W) flows left-right: the x component changes sign, on every flow of the stack.

    On 0..255 quantised flow (p = 255 (v + B) / 2B) negation is p -> 255 - p.
    """
    x = x.flip(-1).clone()
    x[:, 0] = 255.0 - x[:, 0]
    return x


def normalize_rgb(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) in 0..255 -> ImageNet-normalised."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1) * 255
    return (x - mean) / std


def normalize_flow(x: torch.Tensor) -> torch.Tensor:
    """(N, 2, H, W) quantised flow in 0..255 -> v / B in [-1, 1] (p - 127.5) / 127.5, whatever the bound."""
    return (x - 127.5) / 127.5


def stack_flow_channels(x: torch.Tensor, snippet: int) -> torch.Tensor:
    """(K * L, 2, H, W) -> (K, 2L, H, W) with channels x0, y0, x1, y1, ... (TSN's stacked flow)."""
    kl, c, h, w = x.shape
    return x.reshape(kl // snippet, snippet * c, h, w)
