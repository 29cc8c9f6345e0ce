"""Weight surgery, visible and pure: widen a first conv for stacked flow, inflate 2D kernels to 3D."""

from __future__ import annotations

import torch
from torch import nn


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


def load_pretrained(model: nn.Module, state_dict: dict, *, in_chans: int, num_classes: int, classifier: str = "fc") -> str:
    """Copy 2D (ImageNet) weights into `model`, adapting the first conv's channels and inflating 2D kernels
    where the model's are 3D; a classifier of another size is dropped. Returns one line saying what was loaded,
    adapted, inflated, dropped and left unused.

    Raises:
        ValueError: a weight whose shape cannot be adapted (names the key), or no weight of the file fits a
            layer of the model (weights of another architecture).
    """
    own = model.state_dict()
    loaded, adapted, inflated, dropped = {}, [], 0, []
    for key, value in state_dict.items():
        if key not in own:
            continue
        target = own[key]
        if key.startswith(classifier + ".") and value.shape != target.shape:
            dropped.append(key)
            continue
        if value.ndim in (4, 5) and value.shape[1] == 3 and target.shape[1] == in_chans != 3:
            value = adapt_input_conv(in_chans, value)
            adapted.append(key)
        if value.ndim == 4 and target.ndim == 5:
            value = inflate_conv_weight(value, target.shape[2])
            inflated += 1
        if value.shape != target.shape:
            raise ValueError(f"pretrained weight {key} has shape {tuple(value.shape)}, the model needs {tuple(target.shape)}")
        loaded[key] = value
    if not loaded:
        theirs = ", ".join(list(state_dict)[:3])
        raise ValueError(
            f"none of the {len(state_dict)} tensors of the pretrained weights (such as {theirs}) is a layer of this model; "
            "pass weights of its architecture with torchvision's names"
        )
    missing, _ = model.load_state_dict(loaded, strict=False)
    unused = len(state_dict) - len(loaded) - len(dropped)
    parts = [f"{len(loaded)} of the model's {len(own)} tensors loaded"]
    if adapted:
        parts.append(f"{', '.join(adapted)} adapted from 3 to {in_chans} input channels (cross-modality init)")
    if inflated:
        parts.append(f"{inflated} kernels inflated to 3D")
    if dropped:
        parts.append(f"classifier {', '.join(dropped)} dropped (the model has {num_classes} classes)")
    if unused:
        parts.append(f"{unused} tensors of the file unused")
    if missing:
        parts.append(f"{len(missing)} left as initialised (such as {missing[0]})")
    return "; ".join(parts)
