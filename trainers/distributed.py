"""The only module that talks to torch.distributed.

Gradient convention (the reason N ranks x batch B equals 1 rank x batch N*B exactly):
every rank's loss is the mean over its *local* samples, every collective's backward *sums*
the gradient contributions of all ranks, and the parameter-gradient sync (:func:`data_parallel`,
torch DDP; or the flat :func:`average_gradients`) divides the summed gradients by the world
size. Together that is the gradient of the mean of the rank losses, which is the
single-process loss on the concatenated batch.

Collectives under NCCL (which in torch 2.x accepts CUDA tensors only). Choice: Ray Train
builds the process group with ``backend="cpu:gloo,cuda:nccl"`` (:func:`process_group_backend`,
passed as ``TorchConfig(backend=...)`` in trainers/runner.py), AND the per-step path sends no
CPU tensor at all. Why the backend string: torch dispatches each collective by the tensor's
device to the backend registered for it (``ProcessGroup`` keeps one backend per device type,
see torch/distributed/distributed_c10d.py ``init_process_group`` / ``Backend.backend_list``),
so any CPU collective that remains or is added later (checkpoint/resume bookkeeping, the
online monitor, a helper called on CPU logs) still works instead of raising "No backend type
associated with device type cpu"; Ray 2.60 supports the string (ray/train/torch/config.py
``_is_backend_nccl`` checks the ``cuda:`` entry, so TORCH_NCCL_ASYNC_ERROR_HANDLING is still
set). Why not gloo for the small per-step tensors: a gloo CPU collective is a device->host
copy (a host sync) plus a TCP round trip per step. So per-step values stay on the training
device: logs are 0-d device tensors reduced in ONE all-reduce on that device at log steps
(:func:`reduce_logs`), batch fingerprints are gathered only at log steps
(:func:`gather_digests`), and everything inside the step (SyncBN, gather_with_grad, DDP
buckets) already works on the activations' device.

Collective order (NCCL matches collectives by issue order, so every rank must issue the same
sequence): DDP launches its bucket all-reduces from autograd hooks (AccumulateGrad post-hooks,
torch/csrc/distributed/c10d/reducer.cpp ``autograd_hook`` -> ``mark_variable_ready`` ->
``mark_bucket_ready``, buckets strictly in index order, then the used-map all-reduce) and the
custom backward collectives here (``_GatherWithGrad``, ``_AllReduceWithGrad``, SyncBN's
backward) run as autograd nodes. Both are issued by the one autograd engine thread of the
device in the engine's deterministic order (the ready queue's ``ReadyQueue::CompareNodeTaskTime`` orders by
reentrant depth then sequence number, torch/csrc/autograd/engine.h), which is the same on every rank
because every rank builds the same graph; so the interleaving is identical everywhere. DDP's
bucket rebuild after the first iteration broadcasts rank 0's order (``_rebuild_buckets``,
called in forward) before any of the method's collectives, also on every rank.

Everything degrades to a no-op on one process (torch.distributed not initialised).
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "is_distributed",
    "force_collectives",
    "rank",
    "world_size",
    "gather",
    "gather_with_grad",
    "all_reduce_sum",
    "all_reduce_max",
    "all_reduce_with_grad",
    "reduce_logs",
    "gather_digests",
    "process_group_backend",
    "data_parallel",
    "unused_parameter_steps",
    "average_gradients",
    "broadcast_module",
    "SyncBatchNorm",
    "convert_sync_batchnorm",
]


_FORCED = False


def force_collectives(on: bool = True) -> None:
    """Treat a 1-rank process group as distributed: every collective (and DDP) really runs.

    For checks on one GPU (benchmarks/gpu_check.py): the NCCL path is then exercised, not
    skipped as the no-op fallback would.
    """
    global _FORCED
    _FORCED = on


def is_distributed() -> bool:
    """True when a process group with more than one rank is active (or forced on one rank)."""
    if not (dist.is_available() and dist.is_initialized()):
        return False
    return dist.get_world_size() > 1 or _FORCED


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


def gather_digests(digest: int, device: torch.device | str = "cpu") -> list[int]:
    """Every rank's batch fingerprint (an int < 2**63), in rank order; call at log steps only.

    The tensor lives on `device` (the training device) so it goes through the same backend
    as the model's collectives.
    """
    if not is_distributed():
        return [digest]
    mine = torch.tensor([digest], dtype=torch.int64, device=device)
    everyone = [torch.zeros_like(mine) for _ in range(world_size())]
    dist.all_gather(everyone, mine)
    return [int(v) for v in torch.cat(everyone).tolist()]


def process_group_backend(use_gpu: bool) -> str:
    """The backend string Ray Train's TorchConfig gets (see the module docstring for why)."""
    return "cpu:gloo,cuda:nccl" if use_gpu else "gloo"


class _StepModule(nn.Module):
    """`forward` = the method's training step, so DDP sees the step as its forward.

    DDP prepares its reducer in ``forward`` (``_pre_forward`` / ``_post_forward`` in
    torch/nn/parallel/distributed.py: bucket rebuild, the unused-parameter search over the
    outputs); calling ``training_step`` directly would skip that.
    """

    def __init__(self, method: nn.Module) -> None:
        super().__init__()
        self.method = method

    def forward(self, views: list[Tensor], step: int, **kwargs: Any):  # type: ignore[override]
        return self.method.training_step(views, step, **kwargs)


def data_parallel(method: nn.Module, device: torch.device | str, bucket_cap_mb: float = 25.0,
                  find_unused_parameters: bool = True) -> nn.Module:
    """The method's step wrapped in torch DDP (gradient all-reduce overlapped with backward).

    Call the result as ``step_module(views, step)`` -> ``(loss, logs)``. Without a process
    group it is the plain step module. Settings and why:
    - ``find_unused_parameters``: needed while a parameter can get no gradient (SwAV's
      prototypes, DINO's last layer in their first steps). A parameter unused on every rank then
      keeps ``grad=None`` (torch/csrc/distributed/c10d/reducer.cpp ``copy_bucket_to_grad``: "If a
      parameter is globally unused, we keep its grad untouched"), so the optimizer skips it as
      in one process; one unused on some ranks only is averaged with zeros, as the flat path
      did. It costs: the used-map all-reduce is issued after the last bucket
      (``mark_variable_ready``) and read back on the host when the buckets are finalised (one
      host sync per step on CUDA) plus a graph traversal after forward. So the Trainer turns it
      on only for the steps that need it and re-wraps without it afterwards (train_loop.py).
    - ``forward_sync_buffers=False`` (formerly ``broadcast_buffers=False``): BN statistics are synchronised by SyncBatchNorm and queues or
      centres are identical by construction; re-broadcasting them every forward would be one
      more collective per step.
    - gradients are averaged (DDP divides by the world size), the convention above.
    DDP's constructor broadcasts rank 0's parameters and buffers once (identical anyway: every
    rank builds the method from the same seed).
    """
    module = _StepModule(method)
    if not is_distributed():
        return module
    device = torch.device(device)
    device_ids = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else None
    return _DDP(
        module, device_ids=device_ids, forward_sync_buffers=False, find_unused_parameters=find_unused_parameters,
        bucket_cap_mb=bucket_cap_mb,
    )


# Method config fields that make parameters gradient-free for their first N steps (DDP must then
# look for unused parameters). A method that leaves a parameter unused without saying so here
# fails loudly at its next step (DDP: "Expected to have finished reduction in the prior
# iteration"), never silently.
UNUSED_PARAMETER_FIELDS = ("freeze_prototypes_steps", "freeze_last_layer_steps")


def unused_parameter_steps(method: nn.Module) -> int:
    """Steps before which some parameter may get no gradient (0: all are always used)."""
    config = getattr(method, "config", None)
    return max([int(getattr(config, f, 0) or 0) for f in UNUSED_PARAMETER_FIELDS] + [0])


class _DDP(nn.parallel.DistributedDataParallel):
    """DDP that accepts our SyncBatchNorm in CPU modules.

    torch's DDP refuses any ``nn.SyncBatchNorm`` in a CPU module
    (``_passing_sync_batchnorm_handle``, torch/nn/parallel/distributed.py) because torch's
    implementation is CUDA-only. Ours subclasses it but runs its own gloo/CPU autograd function
    on CPU inputs (:class:`SyncBatchNorm`), so the refusal does not apply; on CUDA the check
    passes anyway. This is what keeps the 2-rank equivalence tests on CPU/gloo in CI.
    """

    def _passing_sync_batchnorm_handle(self, module: nn.Module) -> None:
        return None


def _parameters(module_or_params: nn.Module | Iterable[Tensor]) -> list[Tensor]:
    if isinstance(module_or_params, nn.Module):
        return [p for p in module_or_params.parameters() if p.requires_grad]
    return [p for p in module_or_params if p.requires_grad]


@torch.no_grad()
def average_gradients(module_or_params: nn.Module | Iterable[Tensor]) -> None:
    """Average parameter gradients over ranks in ONE all-reduce of a coalesced buffer.

    The pre-DDP path, kept as the baseline of `ddp_vs_flat_step_ratio` (benchmarks/) and for
    code that steps without DDP: it cannot overlap backward, allocates a model-sized buffer per
    step and reads one presence flag per parameter on the host (a host sync each). A parameter whose gradient is None on every rank stays None
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
