"""I3D: Inception-v1 (torchvision GoogLeNet) inflated to 3D (Carreira & Zisserman 2017).

`inflate_googlenet` turns a 2D GoogLeNet into the 3D network in place of its layers, weights included:
each k x k conv becomes kt x k x k with the 2D kernel repeated over time and divided by kt, batch norms
become 3D with the same statistics, pools get the paper's temporal extents. Convolutions pad time by
repeating the edge frames, so a temporally constant clip gives exactly the 2D network's output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.googlenet import BasicConv2d, GoogLeNet, Inception

from .surgery import adapt_input_conv, inflate_conv_weight, load_pretrained

# (temporal kernel, temporal stride) of the stem layers, from the I3D paper; inception convs keep their
# spatial kernel size in time (1x1 -> 1x1x1, 3x3 -> 3x3x3) with stride 1.
STEM_TIME = {
    "conv1": (7, 2),
    "maxpool1": (1, 1),
    "conv2": (1, 1),
    "conv3": (3, 1),
    "maxpool2": (1, 1),
    "maxpool3": (3, 2),
    "maxpool4": (2, 2),
}


class InflatedConv3d(nn.Module):
    """A Conv3d whose temporal padding repeats the edge frames (spatial padding stays zeros)."""

    def __init__(self, conv2d: nn.Conv2d, time: int, time_stride: int = 1):
        super().__init__()
        self.time_pad = (time - 1) // 2
        self.conv = nn.Conv3d(
            conv2d.in_channels,
            conv2d.out_channels,
            (time, *conv2d.kernel_size),
            (time_stride, *conv2d.stride),
            (0, *conv2d.padding),
            bias=conv2d.bias is not None,
        )
        with torch.no_grad():
            self.conv.weight.copy_(inflate_conv_weight(conv2d.weight, time))
            if conv2d.bias is not None:
                self.conv.bias.copy_(conv2d.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T, H, W)
        if self.time_pad:
            x = F.pad(x, (0, 0, 0, 0, self.time_pad, self.time_pad), mode="replicate")
        return self.conv(x)


def _bn3d(bn: nn.BatchNorm2d) -> nn.BatchNorm3d:
    out = nn.BatchNorm3d(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    out.load_state_dict(bn.state_dict())
    return out


def _pool3d(pool: nn.MaxPool2d, time: int, time_stride: int) -> nn.MaxPool3d:
    k, s, p = (
        pool.kernel_size if isinstance(pool.kernel_size, int) else pool.kernel_size[0],
        pool.stride if isinstance(pool.stride, int) else pool.stride[0],
        pool.padding if isinstance(pool.padding, int) else pool.padding[0],
    )
    return nn.MaxPool3d((time, k, k), (time_stride, s, s), ((time - 1) // 2 if p else 0, p, p), ceil_mode=pool.ceil_mode)


def _inflate_basic_conv(block: nn.Module, time: int | None = None, time_stride: int = 1) -> None:
    kt = time if time is not None else block.conv.kernel_size[0]
    block.conv = InflatedConv3d(block.conv, kt, time_stride)
    block.bn = _bn3d(block.bn)


def inflate_googlenet(net: GoogLeNet) -> GoogLeNet:
    """Inflate a 2D GoogLeNet (aux_logits=False, transform_input=False) to I3D, in place; returns it.

    Afterwards it takes (B, C, T, H, W) clips.
    """
    for name in ("conv1", "conv2", "conv3"):
        _inflate_basic_conv(getattr(net, name), *STEM_TIME[name])
    for name in ("maxpool1", "maxpool2", "maxpool3", "maxpool4"):
        setattr(net, name, _pool3d(getattr(net, name), *STEM_TIME[name]))
    for module in list(net.modules()):
        if isinstance(module, Inception):
            for branch in (module.branch1, module.branch2, module.branch3, module.branch4):
                for i, layer in enumerate(branch if isinstance(branch, nn.Sequential) else [branch]):
                    if isinstance(layer, BasicConv2d):
                        _inflate_basic_conv(layer)
                    elif isinstance(layer, nn.MaxPool2d):
                        branch[i] = _pool3d(layer, 3, 1)
    net.avgpool = nn.AdaptiveAvgPool3d((1, 1, 1))
    return net


def kaiming_init(net: nn.Module) -> None:
    """He initialisation of every conv (fan-out, as torchvision's ResNets); batch norms keep their 1 / 0 start.

    For training from scratch. GoogLeNet's own init (truncated normal, std 0.01) makes the weights ahead of
    each batch norm so small that their effective step size is huge; I3D then trains erratically.
    """
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


class I3D(nn.Module):
    """Inflated Inception-v1 for clips (B, C, T, H, W), C = 3 (RGB) or 2 (flow x, y)."""

    pretrained_summary: str | None = None  # what `pretrained` loaded into the 2D network, in one line

    def __init__(self, in_chans: int, num_classes: int, dropout: float = 0.5, pretrained: dict | None = None):
        super().__init__()
        net = torchvision.models.googlenet(weights=None, aux_logits=False, transform_input=False, init_weights=False)
        if pretrained is None:
            kaiming_init(net)
        else:
            self.pretrained_summary = load_pretrained(
                net, {k: v for k, v in pretrained.items() if not k.startswith(("fc.", "aux"))}, in_chans=3, num_classes=num_classes
            )
            stem = f", the stem adapted to {in_chans} channels" if in_chans != 3 else ""
            self.pretrained_summary += f"; inflated to 3D{stem}, a new classifier for {num_classes} classes"
        if in_chans != 3:
            old = net.conv1.conv
            net.conv1.conv = nn.Conv2d(in_chans, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
            with torch.no_grad():
                net.conv1.conv.weight.copy_(adapt_input_conv(in_chans, old.weight))
        self.num_features = net.fc.in_features
        net.fc = nn.Identity()
        net.dropout = nn.Identity()
        self.backbone = inflate_googlenet(net)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)  # (B, F) after global average pooling

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.dropout(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 6:  # (B, clips, C, T, H, W): average the clips' scores
            B, n = x.shape[:2]
            return self.forward_head(self.forward_features(x.flatten(0, 1))).view(B, n, -1).mean(1)
        return self.forward_head(self.forward_features(x))


def i3d(*, modality: str, num_classes: int, pretrained: dict | None = None, dropout: float = 0.5) -> I3D:
    """I3D for "rgb" (3 channels) or a flow modality (2 channels); `pretrained` is a 2D GoogLeNet state dict."""
    return I3D(3 if modality == "rgb" else 2, num_classes, dropout, pretrained)
