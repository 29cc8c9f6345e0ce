"""Optical flow: batched TV-L1 and warped TV-L1 in PyTorch (GPU when present, same code on the CPU).

from pipeline.flow import compute_flow
flow = compute_flow(prev_u8, next_u8, algorithm="tvl1", preset="opencv")  # (H, W, 2) float32, x then y

Importing the package does not import torch: `compute_flow`, `default_device` and `tvl1_flow` load it on first
use, so the processes that only check and pass flow parameters on (the preprocessing driver, shard tasks that
send frames to a flow service) start in a fraction of the time and memory.
"""

import importlib

from schemas.sample import dequantize, quantize

from .params import ALGORITHMS, PRESETS, TVL1Config, resolve_params
from .visualize import color_wheel_legend, flow_to_color, write_flow_png
from .warped import HomographyConfig, HomographyResult

_WITH_TORCH = {"compute_flow": ".compute", "default_device": ".compute", "tvl1_flow": ".tvl1"}

__all__ = [
    "ALGORITHMS",
    "PRESETS",
    "HomographyConfig",
    "HomographyResult",
    "TVL1Config",
    "color_wheel_legend",
    "compute_flow",
    "default_device",
    "dequantize",
    "flow_to_color",
    "quantize",
    "resolve_params",
    "tvl1_flow",
    "write_flow_png",
]


def __getattr__(name: str):
    """The torch-backed names, imported when first asked for (PEP 562)."""
    if name in _WITH_TORCH:
        return getattr(importlib.import_module(_WITH_TORCH[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
