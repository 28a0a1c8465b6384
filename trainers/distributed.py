"""The only module that talks to torch.distributed.

Gradient convention (the reason N ranks x batch B equals 1 rank x batch N*B exactly):
every rank's loss is the mean over its *local* samples, every collective's backward *sums*
the gradient contributions of all ranks, and :func:`average_gradients` divides the summed
parameter gradients by the world size. Together that is the gradient of the mean of the rank
losses, which is the single-process loss on the concatenated batch.

Everything degrades to a no-op on one process (torch.distributed not initialised).
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "is_distributed",
    "rank",
    "world_size",
    "gather",
    "gather_with_grad",
    "all_reduce_sum",
    "all_reduce_max",
    "all_reduce_with_grad",
    "reduce_logs",
    "average_gradients",
    "broadcast_module",
    "SyncBatchNorm",
    "convert_sync_batchnorm",
]


def is_distributed() -> bool:
    """True when a process group with more than one rank is active."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank, 0 without a process group."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of processes, 1 without a process group."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


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
    together with :func:`average_gradients` the result equals single-process training.
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


def reduce_logs(logs: dict[str, float]) -> dict[str, float]:
    """Mean of each logged scalar over ranks, in one all-reduce (same keys on every rank)."""
    if not is_distributed() or not logs:
        return dict(logs)
    keys = sorted(logs)
    values = torch.tensor([float(logs[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    values /= world_size()
    return {k: float(v) for k, v in zip(keys, values.tolist())}


def _parameters(module_or_params: nn.Module | Iterable[Tensor]) -> list[Tensor]:
    if isinstance(module_or_params, nn.Module):
        return [p for p in module_or_params.parameters() if p.requires_grad]
    return [p for p in module_or_params if p.requires_grad]


@torch.no_grad()
def average_gradients(module_or_params: nn.Module | Iterable[Tensor]) -> None:
    """Average parameter gradients over ranks in ONE all-reduce of a coalesced buffer.

    Replaces DDP's gradient hook. A parameter whose gradient is None on every rank stays None
    (the optimizer then skips it, as in single-process training, e.g. frozen SwAV prototypes);
    one present on only some ranks is averaged with zeros for the others, like DDP with
    unused parameters. A presence flag per parameter rides in the same buffer.
    """
    if not is_distributed():
        return
    params = _parameters(module_or_params)
    if not params:
        return
    reference = next((p.grad for p in params if p.grad is not None), params[0])
    dtype, device = reference.dtype, reference.device
    numel = sum(p.numel() for p in params)
    buffer = torch.zeros(numel + len(params), dtype=dtype, device=device)
    offset = 0
    for i, p in enumerate(params):
        if p.grad is not None:
            buffer[offset : offset + p.numel()].copy_(p.grad.reshape(-1))
            buffer[numel + i] = 1.0
        offset += p.numel()
    dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
    buffer[:numel] /= world_size()
    offset = 0
    for i, p in enumerate(params):
        n = p.numel()
        if buffer[numel + i] > 0:
            grad = buffer[offset : offset + n].view_as(p).to(p.dtype)
            if p.grad is None:
                p.grad = grad.clone()
            else:
                p.grad.copy_(grad)
        offset += n


@torch.no_grad()
def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copy parameters and buffers of rank `src` to all ranks (same start without a seed)."""
    if not is_distributed():
        return
    for tensor in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(tensor.data, src=src)


# --------------------------------------------------------------------------- SyncBatchNorm


class _SyncBatchNormFunction(torch.autograd.Function):
    """Batch norm over the union of all ranks' batches, for gloo/CPU.

    Forward: each rank computes its count, mean and centred sum of squares (two local passes,
    no E[x^2]-E[x]^2 cancellation); ONE all-gather of those 3C numbers per rank, merged with
    Chan's parallel formula. Backward: ONE all-reduce of the 2C sums the input gradient needs.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps):  # type: ignore[override]
        channels = x.shape[1]
        flat = x.transpose(0, 1).reshape(channels, -1)  # C x (N * spatial)
        count = flat.shape[1]
        local_mean = flat.mean(dim=1)
        local_m2 = (flat - local_mean[:, None]).pow(2).sum(dim=1)
        stats = torch.cat([torch.full_like(local_mean[:1], float(count)), local_mean, local_m2])
        gathered = [torch.empty_like(stats) for _ in range(world_size())]
        dist.all_gather(gathered, stats)
        table = torch.stack(gathered)  # W x (1 + 2C)
        counts = table[:, :1]
        means = table[:, 1 : 1 + channels]
        m2s = table[:, 1 + channels :]
        total = counts.sum()
        mean = (counts * means).sum(dim=0) / total
        m2 = m2s.sum(dim=0) + (counts * (means - mean).pow(2)).sum(dim=0)
        var = m2 / total
        invstd = torch.rsqrt(var + eps)
        shape = [1, channels] + [1] * (x.dim() - 2)
        xhat = (x - mean.view(shape)) * invstd.view(shape)
        out = xhat if weight is None else xhat * weight.view(shape)
        if bias is not None:
            out = out + bias.view(shape)
        ctx.save_for_backward(xhat, weight, invstd)
        ctx.total = total
        ctx.has_bias = bias is not None
        unbiased_var = var * (total / max(float(total) - 1.0, 1.0))
        ctx.mark_non_differentiable(mean, unbiased_var)
        return out, mean, unbiased_var

    @staticmethod
    def backward(ctx, grad_out, _grad_mean, _grad_var):  # type: ignore[override]
        xhat, weight, invstd = ctx.saved_tensors
        channels = xhat.shape[1]
        dims = [0] + list(range(2, xhat.dim()))
        shape = [1, channels] + [1] * (xhat.dim() - 2)
        local_sum_dy = grad_out.sum(dim=dims)
        local_sum_dy_xhat = (grad_out * xhat).sum(dim=dims)
        sums = torch.cat([local_sum_dy, local_sum_dy_xhat])
        # The normalisation statistics are shared: the input gradient needs the sums of all
        # ranks' upstream gradients (see the gradient convention at the top of the module).
        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
        mean_dy = (sums[:channels] / ctx.total).view(shape)
        mean_dy_xhat = (sums[channels:] / ctx.total).view(shape)
        scale = invstd.view(shape) if weight is None else (invstd * weight).view(shape)
        grad_x = scale * (grad_out - mean_dy - xhat * mean_dy_xhat)
        # Affine gradients are local; average_gradients combines them like any other parameter.
        grad_weight = local_sum_dy_xhat if weight is not None else None
        grad_bias = local_sum_dy if ctx.has_bias else None
        return grad_x, grad_weight, grad_bias, None


class SyncBatchNorm(nn.SyncBatchNorm):
    """BatchNorm whose training statistics span all ranks, on CPU/gloo as well as CUDA.

    On CUDA it is torch's `nn.SyncBatchNorm`; on CPU it uses a gloo-friendly autograd function;
    on one process (or in eval mode) it is plain batch norm. Accepts (N, C, ...) inputs.
    """

    def forward(self, input: Tensor) -> Tensor:
        if input.is_cuda:
            return super().forward(input)
        if input.dim() < 2:
            raise ValueError(f"SyncBatchNorm expects (N, C, ...) input, got shape {tuple(input.shape)}")
        use_batch_stats = self.training or self.running_mean is None
        momentum = self._momentum_for_step()
        if not use_batch_stats or not is_distributed():
            return F.batch_norm(
                input,
                self.running_mean if not self.training or self.track_running_stats else None,
                self.running_var if not self.training or self.track_running_stats else None,
                self.weight,
                self.bias,
                use_batch_stats,
                momentum,
                self.eps,
            )
        out, mean, unbiased_var = _SyncBatchNormFunction.apply(input, self.weight, self.bias, self.eps)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased_var.detach(), alpha=momentum)
        return out

    def _momentum_for_step(self) -> float:
        """Same bookkeeping as torch's _BatchNorm (cumulative average when momentum is None)."""
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked)
        return momentum


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm{1,2,3}d in `module` by :class:`SyncBatchNorm`, keeping state.

    Returns the converted module (the same object unless `module` itself is a BatchNorm).
    """
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, SyncBatchNorm):
        converted = SyncBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        if module.affine:
            with torch.no_grad():
                converted.weight = module.weight
                converted.bias = module.bias
        converted.running_mean = module.running_mean
        converted.running_var = module.running_var
        converted.num_batches_tracked = module.num_batches_tracked
        converted.train(module.training)
        return converted
    for name, child in module.named_children():
        new_child = convert_sync_batchnorm(child)
        if new_child is not child:
            setattr(module, name, new_child)
    return module
