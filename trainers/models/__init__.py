"""Models: TSN (2D backbone per segment) and I3D (inflated Inception-v1), built by name."""

from __future__ import annotations

from torch import nn

from .i3d import I3D, i3d, inflate_googlenet
from .surgery import adapt_input_conv, inflate_conv_weight, load_pretrained
from .tsn import TSN, tsn

MODELS = ("tsn_rgb", "tsn_flow", "i3d_rgb", "i3d_flow")

__all__ = [
    "I3D",
    "MODELS",
    "TSN",
    "adapt_input_conv",
    "build_model",
    "i3d",
    "inflate_conv_weight",
    "inflate_googlenet",
    "load_pretrained",
    "tsn",
]


def build_model(
    name: str, *, num_classes: int, backbone: str = "resnet18", new_length: int = 5, pretrained: dict | None = None, dropout: float = 0.5
) -> nn.Module:
    """`tsn_rgb`, `tsn_flow`, `i3d_rgb` or `i3d_flow` for `num_classes` classes."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    kind, modality = name.split("_")
    if kind == "tsn":
        return tsn(
            backbone=backbone, modality=modality, num_classes=num_classes, new_length=new_length, pretrained=pretrained, dropout=dropout
        )
    return i3d(modality=modality, num_classes=num_classes, pretrained=pretrained, dropout=dropout)
