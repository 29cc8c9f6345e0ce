"""Temporal Segment Networks: a 2D backbone on each of K snippets, averaged (segmental consensus)."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from .surgery import adapt_input_conv, load_pretrained

BACKBONES = {"resnet18": torchvision.models.resnet18, "resnet50": torchvision.models.resnet50}


class TSN(nn.Module):
    """TSN over a torchvision ResNet. Input (B, K, C, H, W) with C = 3 (RGB) or 2L (stacked flow)."""

    pretrained_summary: str | None = None  # what `tsn(pretrained=...)` loaded, in one line

    def __init__(self, backbone: str, in_chans: int, num_classes: int, dropout: float = 0.5):
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")
        net = BACKBONES[backbone](weights=None)
        if in_chans != 3:
            old = net.conv1
            net.conv1 = nn.Conv2d(in_chans, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
            with torch.no_grad():
                net.conv1.weight.copy_(adapt_input_conv(in_chans, old.weight))
        self.num_features = net.fc.in_features
        net.fc = nn.Identity()
        self.backbone = net
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.num_features, num_classes)
        nn.init.normal_(self.fc.weight, 0, 0.001)
        nn.init.zeros_(self.fc.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        B, K = x.shape[:2]
        feats = self.backbone(x.flatten(0, 1))  # (B*K, F)
        return feats.view(B, K, -1)  # (B, K, F)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.dropout(x)
        if pre_logits:
            return x.mean(1)
        return self.fc(x).mean(1)  # (B, classes): consensus = average over segments

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def tsn(
    *,
    backbone: str = "resnet18",
    modality: str,
    num_classes: int,
    new_length: int = 5,
    pretrained: dict | None = None,
    dropout: float = 0.5,
) -> TSN:
    """A TSN for `modality` "rgb" (3 channels) or a flow modality (2 * new_length stacked channels).

    `pretrained`: a 2D ImageNet state dict (torchvision key names); the flow stem gets cross-modality init.
    """
    in_chans = 3 if modality == "rgb" else 2 * new_length
    model = TSN(backbone, in_chans, num_classes, dropout)
    if pretrained is not None:
        backbone_state = {f"backbone.{k}": v for k, v in pretrained.items() if not k.startswith("fc.")}
        model.pretrained_summary = load_pretrained(model, backbone_state, in_chans=in_chans, num_classes=num_classes)
        model.pretrained_summary += f"; the file's classifier replaced by one for {num_classes} classes"
    return model
