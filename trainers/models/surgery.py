"""Weight surgery, visible and pure: widen a first conv for stacked flow, inflate 2D kernels to 3D."""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)


def adapt_input_conv(in_chans: int, weight: torch.Tensor) -> torch.Tensor:
    """TSN cross-modality initialisation: (O, 3, kh, kw) RGB kernels -> (O, in_chans, kh, kw).

    The kernel is averaged over its 3 input channels and the average is repeated for every new channel
    (Wang et al., TSN). Keeps dtype and device.

    Raises:
        NotImplementedError: a kernel that is not 4D or 5D with 3 input channels.
    """
    if weight.ndim not in (4, 5):
        raise NotImplementedError(f"cannot adapt a {weight.ndim}D conv weight; expected (O, I, kh, kw) or (O, I, t, kh, kw)")
    if weight.shape[1] == in_chans:
        return weight
    if weight.shape[1] != 3:
        raise NotImplementedError(f"cross-modality init starts from 3 RGB input channels, got {weight.shape[1]}")
    mean = weight.mean(dim=1, keepdim=True)  # (O, 1, kh, kw)
    return mean.repeat_interleave(in_chans, dim=1)


def inflate_conv_weight(weight: torch.Tensor, time: int) -> torch.Tensor:
    """I3D inflation: (O, I, kh, kw) -> (O, I, time, kh, kw), repeated over time and divided by `time`,
    so a temporally constant input gives the 2D response."""
    if weight.ndim != 4:
        raise NotImplementedError(f"can only inflate 4D conv weights, got {weight.ndim}D")
    return weight.unsqueeze(2).repeat(1, 1, time, 1, 1) / time


def load_pretrained(model: nn.Module, state_dict: dict, *, in_chans: int, num_classes: int, classifier: str = "fc") -> None:
    """Copy 2D (ImageNet) weights into `model`, adapting the first conv's channels and inflating 2D kernels
    where the model's are 3D; a classifier of another size is dropped. Logs missing/unexpected keys.

    Raises:
        ValueError: a weight whose shape cannot be adapted (names the key).
    """
    own = model.state_dict()
    loaded = {}
    for key, value in state_dict.items():
        if key not in own:
            continue
        target = own[key]
        if key.startswith(classifier + ".") and value.shape != target.shape:
            log.info("dropping classifier %s %s (model has %s for %d classes)", key, tuple(value.shape), tuple(target.shape), num_classes)
            continue
        if value.ndim in (4, 5) and value.shape[1] == 3 and target.shape[1] == in_chans != 3:
            value = adapt_input_conv(in_chans, value)
        if value.ndim == 4 and target.ndim == 5:
            value = inflate_conv_weight(value, target.shape[2])
        if value.shape != target.shape:
            raise ValueError(f"pretrained weight {key} has shape {tuple(value.shape)}, the model needs {tuple(target.shape)}")
        loaded[key] = value
    missing, unexpected = model.load_state_dict(loaded, strict=False)
    unused = sorted(set(state_dict) - set(loaded))
    log.info("loaded %d pretrained tensors; %d missing in the file, %d in the file unused", len(loaded), len(missing), len(unused))
    if missing:
        log.info("missing: %s", ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))
