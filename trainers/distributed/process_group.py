"""This process's place in the process group: rank, world size, and the backend string.

Invariant: every helper degrades to one process when torch.distributed is not initialised
(rank 0 of 1, nothing distributed), so the same code runs in tests, on one GPU and on N ranks.
See ARCHITECTURE.md section 3.
"""
from __future__ import annotations

import torch.distributed as dist

__all__ = ["force_collectives", "is_distributed", "process_group_backend", "rank", "world_size"]

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


def process_group_backend(use_gpu: bool) -> str:
    """The backend string Ray Train's ``TorchConfig(backend=...)`` gets (trainers/runner.py).

    On GPUs ``cpu:gloo,cuda:nccl``: NCCL takes CUDA tensors only, and with a backend per device
    type any CPU collective (checkpoint bookkeeping, the online monitor, a helper called on CPU
    values) still works instead of raising "No backend type associated with device type cpu".
    The per-step path still sends no CPU tensor: a gloo CPU collective costs a host sync and a
    TCP round trip, so logs and batch fingerprints are reduced on the training device at log
    steps only (:func:`~trainers.distributed.collectives.reduce_logs`).
    """
    # torch dispatches each collective by the tensor's device to the backend registered for it
    # (torch/distributed/distributed_c10d.py init_process_group, Backend.backend_list). Ray Train
    # takes the string: ray/train/torch/config.py _is_backend_nccl checks the "cuda:" entry, so
    # TORCH_NCCL_ASYNC_ERROR_HANDLING is still set.
    return "cpu:gloo,cuda:nccl" if use_gpu else "gloo"
