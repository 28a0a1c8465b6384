"""The parameter-gradient sync: the method's step under torch DDP, or one flat all-reduce.

Invariants: gradients are averaged over ranks (the sum the collectives' backwards make, divided
by the world size; `trainers.distributed.collectives` states the convention), and every rank
issues the same collectives in the same order, which NCCL needs because it matches collectives
by issue order. DDP's bucket all-reduces and the backward collectives of gather_with_grad,
all_reduce_with_grad and SyncBatchNorm are all issued by the device's one autograd engine thread
in the engine's deterministic order, the same on every rank because every rank builds the same
graph. See ARCHITECTURE.md section 3.
"""
from __future__ import annotations

import inspect

from typing import Iterable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from trainers.distributed.process_group import is_distributed, world_size

__all__ = ["UNUSED_PARAMETER_FIELDS", "average_gradients", "data_parallel", "unused_parameter_steps"]


class _StepModule(nn.Module):
    """`forward` = the method's training step, so DDP sees the step as its forward.

    DDP prepares its reducer in ``forward`` (bucket rebuild, the unused-parameter search over
    the outputs); calling ``training_step`` directly would skip that.
    """

    def __init__(self, method: nn.Module) -> None:
        super().__init__()
        self.method = method

    def forward(self, views: list[Tensor], step: int, **kwargs):  # type: ignore[override]
        # torch/nn/parallel/distributed.py _pre_forward / _post_forward wrap exactly this call
        return self.method.training_step(views, step, **kwargs)


def data_parallel(method: nn.Module, device: torch.device | str, bucket_cap_mb: float = 25.0,
                  find_unused_parameters: bool = True) -> nn.Module:
    """The method's step wrapped in torch DDP (gradient all-reduce overlapped with backward).

    Call the result as ``step_module(views, step)`` -> ``(loss, logs)``. Without a process
    group it is the plain step module. Settings and why:
    - ``find_unused_parameters``: needed while a parameter can get no gradient (SwAV's
      prototypes, DINO's last layer in their first steps). A parameter unused on every rank then
      keeps ``grad=None``, so the optimizer skips it as in one process; one unused on some ranks
      only is averaged with zeros. It costs one host sync per step on CUDA (the used-map
      all-reduce is read back when the buckets are finalised) plus a graph traversal after
      forward, so the Trainer turns it on only for the steps that need it and re-wraps without
      it afterwards (trainers/trainer.py).
    - no buffer broadcast (`no_buffer_sync`): BN statistics are synchronised by SyncBatchNorm and queues
      or centres are identical by construction; re-broadcasting them every forward would be one
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
    # Collective order on NCCL: DDP launches its bucket all-reduces from AccumulateGrad post-hooks
    # (torch/csrc/distributed/c10d/reducer.cpp autograd_hook -> mark_variable_ready ->
    # mark_bucket_ready: buckets strictly in index order, then the used-map all-reduce); the
    # engine's ready queue orders by reentrant depth then sequence number
    # (torch/csrc/autograd/engine.h ReadyQueue::CompareNodeTaskTime), so our backward
    # collectives interleave with them identically on every rank. The bucket rebuild after the
    # first iteration broadcasts rank 0's order (_rebuild_buckets, in forward) before any of the
    # method's collectives. Unused parameters: reducer.cpp copy_bucket_to_grad ("If a parameter
    # is globally unused, we keep its grad untouched").
    return _DDP(
        module, device_ids=device_ids, find_unused_parameters=find_unused_parameters,
        bucket_cap_mb=bucket_cap_mb, **no_buffer_sync(_DDP),
    )


def no_buffer_sync(ddp_class: type) -> dict[str, bool]:
    """The DDP keyword that turns off the per-forward buffer broadcast, for the installed torch:
    `forward_sync_buffers` where DDP has it (torch/nn/parallel/distributed.py: "`broadcast_buffers`
    is deprecated. Use `forward_sync_buffers`"), else `broadcast_buffers`, which older torch
    (pyproject's floor included) takes with the same meaning."""
    params = inspect.signature(ddp_class.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}


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

    torch's DDP refuses any ``nn.SyncBatchNorm`` in a CPU module because torch's implementation
    is CUDA-only. Ours subclasses it but runs its own gloo/CPU autograd function on CPU inputs
    (`trainers.distributed.sync_batchnorm`), so the refusal does not apply; on CUDA the check
    passes anyway. This is what keeps the 2-rank equivalence tests on CPU/gloo in CI.
    """

    def _passing_sync_batchnorm_handle(self, module: nn.Module) -> None:
        # overrides torch/nn/parallel/distributed.py _passing_sync_batchnorm_handle (the CPU refusal)
        return None


def _parameters(module_or_params: nn.Module | Iterable[Tensor]) -> list[Tensor]:
    if isinstance(module_or_params, nn.Module):
        return [p for p in module_or_params.parameters() if p.requires_grad]
    return [p for p in module_or_params if p.requires_grad]


@torch.no_grad()
def average_gradients(module_or_params: nn.Module | Iterable[Tensor]) -> None:
    """Average parameter gradients over ranks in ONE all-reduce of a coalesced buffer.

    The sync without DDP: the baseline of `ddp_vs_flat_step_ratio` (benchmarks/) and for code
    that steps without DDP. It cannot overlap backward, allocates a model-sized buffer per step
    and reads one presence flag per parameter on the host (a host sync each). A parameter whose
    gradient is None on every rank stays None (the optimizer then skips it, as in
    single-process training, e.g. frozen SwAV prototypes); one present on only some ranks is
    averaged with zeros for the others, like DDP with unused parameters. A presence flag per
    parameter rides in the same buffer.
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
