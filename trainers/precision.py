"""Statistics that must not be formed in half precision, whatever the autocast dtype.

Under bf16/fp16 autocast a sum over a batch keeps 8 (bf16) or 11 (fp16) bits of mantissa, and
matmuls run in the autocast dtype; centres, Sinkhorn's normalisations, the standardisation and
covariance of Barlow Twins and VICReg and CPC's unnormalised logits then drift from the fp32
result. `fp32_statistics` is the one place that says how they are computed instead (see
ARCHITECTURE.md section 3).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence, TypeVar

import torch
from torch import Tensor

F32 = TypeVar("F32", bound=Callable[..., Any])


def _at_least_fp32(value: Any) -> Any:
    if isinstance(value, Tensor) and value.is_floating_point():
        return value.to(torch.promote_types(value.dtype, torch.float32))
    if isinstance(value, (list, tuple)):
        return type(value)(_at_least_fp32(v) for v in value)
    return value


def _device_type(args: Sequence[Any]) -> str:
    for value in args:
        if isinstance(value, Tensor):
            return value.device.type
        if isinstance(value, (list, tuple)) and value and isinstance(value[0], Tensor):
            return value[0].device.type
    return "cpu"


def fp32_statistics(fn: F32) -> F32:
    """Run `fn` in at least float32 whatever the autocast dtype: its tensor arguments (and lists of
    them) promoted, autocast off inside, so sums over a batch, standardisations, covariances and
    unnormalised logits are never formed in bf16/fp16 (a bf16 sum keeps 8 bits of mantissa).
    Gradients flow through the promotion back to the caller's dtype. One helper for every such
    statistic: DINO and iBOT centres, Sinkhorn, Barlow Twins, VICReg, CPC's logits."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast(device_type=_device_type(args), enabled=False):
            return fn(*_at_least_fp32(args), **{k: _at_least_fp32(v) for k, v in kwargs.items()})
    return wrapper  # type: ignore[return-value]
