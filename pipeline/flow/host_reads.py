"""Counting the operations that make the host wait for the device (for tests and benchmarks).

On a GPU, turning a device value into a Python number or bool (`.item()`, `int(t)`, `bool(t)`), finding
indices (`nonzero`), indexing with a boolean mask (its result size depends on device values) and copying
to the host each drain the queue: the GPU idles while Python catches up. `HostReads` counts them as they
are dispatched, on any device, so the count measured on the CPU is the count a GPU would pay.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

_ALWAYS = {
    aten._local_scalar_dense.default,  # .item(), int(t), float(t), bool(t)
    aten.is_nonzero.default,
    aten.equal.default,
    aten.nonzero.default,
    aten.masked_select.default,
    aten.unique_consecutive.default,
    aten._unique2.default,
}
_INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}
_COPIES = {aten._to_copy.default, aten.copy_.default}


class HostReads(TorchDispatchMode):
    """Counts blocking host reads of device values while active: `with HostReads() as reads: ...; reads.total`.

    `reads.by_op` names what each was ("aten.index.Tensor[bool]" for boolean-mask indexing). Count outside
    `torch.inference_mode()` (use `torch.no_grad()`): in inference mode `.item()` on a CPU tensor does not
    reach the dispatch mode, so the count would miss it.
    """

    def __init__(self):
        super().__init__()
        self.by_op: Counter[str] = Counter()

    @property
    def total(self) -> int:
        """Blocking reads counted so far."""
        return sum(self.by_op.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _blocking(func, args, kwargs)
        if name:
            self.by_op[name] += 1
        return func(*args, **kwargs)


def _blocking(func, args, kwargs) -> str | None:
    """The name of a blocking read, or None for an operation the host does not wait for."""
    if func in _ALWAYS:
        return str(func)
    if func in _INDEXING:
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        if any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices):
            return f"{func}[bool]"
        return None
    if func in _COPIES:  # device -> host copies (none on a CPU-only run)
        src, dst_device = (args[1], args[0].device) if func is aten.copy_.default else (args[0], kwargs.get("device"))
        if isinstance(src, torch.Tensor) and src.device.type != "cpu" and dst_device is not None and torch.device(dst_device).type == "cpu":
            return f"{func}[to host]"
    return None
