"""The only package that talks to torch.distributed.

Invariant: N ranks x batch B train exactly as 1 rank x batch N*B (losses are local means,
collective backwards sum, the gradient sync averages), and everything degrades to a no-op on
one process. One module per job: `process_group` (rank, world size, backend string),
`collectives` (gathers and all-reduces, with and without gradient; log-step reductions),
`data_parallel` (DDP around the method's step, the flat gradient average), `sync_batchnorm`.
See ARCHITECTURE.md section 3.
"""
from trainers.distributed.collectives import (
    all_reduce_max,
    all_reduce_sum,
    all_reduce_with_grad,
    broadcast_module,
    gather,
    gather_host_bytes,
    gather_ints,
    gather_with_grad,
    reduce_logs,
)
from trainers.distributed.data_parallel import average_gradients, data_parallel, unused_parameter_steps
from trainers.distributed.process_group import (
    force_collectives,
    is_distributed,
    process_group_backend,
    rank,
    world_size,
)
from trainers.distributed.sync_batchnorm import SyncBatchNorm, convert_sync_batchnorm

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
    "gather_host_bytes",
    "gather_ints",
    "process_group_backend",
    "data_parallel",
    "unused_parameter_steps",
    "average_gradients",
    "broadcast_module",
    "SyncBatchNorm",
    "convert_sync_batchnorm",
]
