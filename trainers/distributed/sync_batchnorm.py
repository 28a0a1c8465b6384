"""Batch norm whose training statistics span all ranks: one code path for CPU/gloo and CUDA/NCCL.

Invariant: with N ranks of batch B the normalisation, its gradient and the running statistics
equal those of one rank with batch N*B (one all-gather forward, one all-reduce backward), and no
step waits for the device: counts, means and the running-statistics update stay tensors (no
`.item()`, no boolean indexing, no Python float of a device value). torch's own
`nn.SyncBatchNorm` is not used on CUDA: its forward drops empty ranks with `count_all[mask]`, a
host sync per BN layer per forward that also rules out CUDA graphs (torch/nn/modules/
_functions.py, `SyncBatchNorm.forward`: "The lines below force a synchronization between CUDA
and CPU"). Statistics are computed in at least fp32 whatever the autocast dtype. On one process
or in eval mode it is plain batch norm. See ARCHITECTURE.md section 3.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from trainers.distributed.process_group import is_distributed, world_size

__all__ = ["SyncBatchNorm", "convert_sync_batchnorm"]


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
        count = flat.shape[1]  # a shape: known on the host, no sync
        local_mean = flat.sum(dim=1) / max(count, 1)  # an empty rank contributes count 0, mean 0
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
        unbiased_var = var * (total / (total - 1).clamp(min=1))  # tensors only: no host sync
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
        # ranks' upstream gradients (the gradient convention of trainers.distributed.collectives).
        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
        mean_dy = (sums[:channels] / ctx.total).view(shape)
        mean_dy_xhat = (sums[channels:] / ctx.total).view(shape)
        scale = invstd.view(shape) if weight is None else (invstd * weight).view(shape)
        grad_x = scale * (grad_out - mean_dy - xhat * mean_dy_xhat)
        # Affine gradients are local; the gradient sync averages them like any other parameter.
        grad_weight = local_sum_dy_xhat if weight is not None else None
        grad_bias = local_sum_dy if ctx.has_bias else None
        return grad_x, grad_weight, grad_bias, None


class SyncBatchNorm(nn.SyncBatchNorm):
    """BatchNorm whose training statistics span all ranks: the same autograd function on CPU
    and CUDA (see the module docstring); on one process (or in eval mode) plain batch norm.
    Accepts (N, C, ...) inputs; returns the input's dtype."""

    def forward(self, input: Tensor) -> Tensor:
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
                float(momentum),
                self.eps,
            )
        # statistics in at least fp32 under autocast (bf16 sums over N*H*W values lose the mean);
        # float64 stays float64 (the 2-rank equivalence checks compare in it)
        dtype = torch.promote_types(input.dtype, torch.float32)
        with torch.autocast(device_type=input.device.type, enabled=False):
            out, mean, unbiased_var = _SyncBatchNormFunction.apply(
                input.to(dtype), _cast(self.weight, dtype), _cast(self.bias, dtype), self.eps)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():  # momentum may be a device tensor (cumulative average): no sync
                self.running_mean.mul_(1 - momentum).add_(mean.detach() * momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased_var.detach() * momentum)
        return out.to(input.dtype)

    def _momentum_for_step(self) -> float | Tensor:
        """Same bookkeeping as torch's _BatchNorm; the cumulative average (momentum None) is
        1 / num_batches_tracked, kept a tensor on the distributed path (torch reads it with
        `float()`, a host sync, which the plain path below keeps as torch has it)."""
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                momentum = 1.0 / self.num_batches_tracked
        return momentum


def _cast(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return None if t is None else t.to(dtype)


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
