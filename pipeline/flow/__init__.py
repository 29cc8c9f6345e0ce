"""Optical flow: batched TV-L1 and warped TV-L1 in PyTorch (GPU when present, same code on the CPU).

from pipeline.flow import compute_flow
flow = compute_flow(prev_u8, next_u8, algorithm="tvl1", preset="opencv")  # (H, W, 2) float32, x then y
"""

from schemas.sample import dequantize, quantize

from .compute import ALGORITHMS, compute_flow, default_device, resolve_params
from .tvl1 import PRESETS, TVL1Config, tvl1_flow
from .visualize import flow_to_color, write_flow_png
from .warped import HomographyConfig, HomographyResult

__all__ = [
    "ALGORITHMS",
    "PRESETS",
    "HomographyConfig",
    "HomographyResult",
    "TVL1Config",
    "compute_flow",
    "default_device",
    "dequantize",
    "flow_to_color",
    "quantize",
    "resolve_params",
    "tvl1_flow",
    "write_flow_png",
]
