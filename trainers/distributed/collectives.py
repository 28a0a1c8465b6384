"""Collectives over the ranks, with and without gradient, and the log-step reductions.

Gradient convention (why N ranks x batch B equals 1 rank x batch N*B exactly): every rank's
loss is the mean over its local samples, every collective's backward *sums* the gradient
contributions of all ranks, and the parameter-gradient sync divides the summed gradients by
the world size (`trainers.distributed.data_parallel`). Together that is the gradient of the
mean of the rank losses: the single-process loss on the concatenated batch.
Per-step values stay on the training device; they are read back to the host only at log steps
(:func:`reduce_logs`, :func:`gather_ints`); checkpoints gather per-rank host state with
:func:`gather_host_bytes`. See ARCHITECTURE.md section 3.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from trainers.distributed.process_group import is_distributed, rank, world_size

__all__ = ["all_reduce_max", "all_reduce_sum", "all_reduce_with_grad", "broadcast_module", "gather",
           "gather_host_bytes", "gather_ints", "gather_with_grad", "reduce_logs"]


@torch.no_grad()
def gather(tensor: Tensor) -> Tensor:
    """Concatenate `tensor` from all ranks along dim 0, in rank order, without gradient.

    Every rank must pass a tensor of the same shape (the pipeline gives equal batches).
    """
    if not is_distributed():
        return tensor.detach().clone()
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:  # type: ignore[override]
        ctx.local_rows = tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        # Every rank's loss used every rank's rows: the gradient of this rank's rows is the
        # SUM over ranks of their gradients. Taking only grads[rank] (a common bug) drops
        # the other ranks' contributions.
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = rank() * ctx.local_rows
        return grad[start : start + ctx.local_rows]


def gather_with_grad(tensor: Tensor) -> Tensor:
    """Concatenate `tensor` from all ranks along dim 0 (rank order) with a correct backward.

    The backward all-reduces (sums) the incoming gradient and returns this rank's slice, so
    together with the averaged gradient sync the result equals single-process training.
    """
    if not is_distributed():
        return tensor
    return _GatherWithGrad.apply(tensor)


@torch.no_grad()
def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum of `tensor` over ranks, as a new tensor, without gradient."""
    out = tensor.detach().clone()
    if is_distributed():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


@torch.no_grad()
def all_reduce_max(tensor: Tensor) -> Tensor:
    """Element-wise maximum of `tensor` over ranks, as a new tensor, without gradient."""
    out = tensor.detach().clone()
    if is_distributed():
        dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out


class _AllReduceWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:  # type: ignore[override]
        out = tensor.contiguous().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        # y = sum_r x_r is used by every rank's loss, so dL/dx_r = sum_r' dL_r'/dy.
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def all_reduce_with_grad(tensor: Tensor) -> Tensor:
    """Sum of `tensor` over ranks; the backward sums the gradients of all ranks."""
    if not is_distributed():
        return tensor
    return _AllReduceWithGrad.apply(tensor)


def reduce_logs(logs: dict[str, Any]) -> dict[str, float]:
    """Mean of each logged scalar over ranks, in ONE all-reduce (same keys on every rank).

    Values may be floats or 0-d tensors on the training device (methods return their loss
    detached, not `.item()`-ed, so the step has no host sync); they are stacked on the device
    of the first tensor, reduced there (NCCL needs CUDA tensors) and read back with one
    `.tolist()`: the only host sync of a log step. Call it only at log steps.
    """
    if not logs:
        return {}
    keys = sorted(logs)
    device = next((v.device for v in logs.values() if isinstance(v, Tensor)), torch.device("cpu"))
    values = torch.stack([
        v.detach().reshape(()).to(device=device, dtype=torch.float64) if isinstance(v, Tensor)
        else torch.tensor(float(v), dtype=torch.float64, device=device)
        for v in (logs[k] for k in keys)
    ])
    if is_distributed():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= world_size()
    return {k: float(v) for k, v in zip(keys, values.tolist())}


def gather_ints(values: list[int], device: torch.device | str = "cpu") -> list[list[int]]:
    """Every rank's `values` (ints in [-2**63, 2**63), the same count on every rank), in rank
    order; call at log steps only. The tensor lives on `device` (the training device) so it
    goes through the same backend as the model's collectives."""
    if not is_distributed():
        return [list(values)]
    mine = torch.tensor(values, dtype=torch.int64, device=device)
    everyone = [torch.zeros_like(mine) for _ in range(world_size())]
    dist.all_gather(everyone, mine)
    return torch.stack(everyone).tolist()


def gather_host_bytes(data: Tensor) -> list[Tensor]:
    """Every rank's 1-D uint8 CPU tensor (lengths may differ), in rank order; a collective for
    checkpoint steps (RNG states). CPU tensors go through gloo (``cpu:gloo,cuda:nccl``)."""
    if not is_distributed():
        return [data.clone()]
    sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([data.numel()], dtype=torch.int64))
    longest = max(int(n) for n in sizes)
    padded = torch.zeros(longest, dtype=torch.uint8)
    padded[:data.numel()] = data
    parts = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded)
    return [p[:int(n)].clone() for p, n in zip(parts, sizes)]


@torch.no_grad()
def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copy parameters and buffers of rank `src` to all ranks (same start without a seed)."""
    if not is_distributed():
        return
    for tensor in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(tensor.data, src=src)
