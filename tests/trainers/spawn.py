"""Run a function in N real gloo processes on 127.0.0.1 and collect what each rank returns.

The function must be importable (module level) and return tensors / numbers / containers of
them (results travel through torch.save / torch.load(weights_only=True)).
"""
from __future__ import annotations

import os
import socket
import tempfile
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from testbed.rank_exit import leave_rank_process


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn: Callable, world_size: int, port: int, out_dir: str, args: tuple) -> None:
    torch.set_num_threads(1)
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        result = fn(*args)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
    leave_rank_process()  # gloo's threads may still hold Python objects: testbed/rank_exit.py


def run_distributed(fn: Callable, *args: Any, world_size: int = 2) -> list[Any]:
    """fn(*args) on `world_size` gloo ranks; returns the results in rank order."""
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_entry, args=(fn, world_size, _free_port(), out_dir, args), nprocs=world_size, join=True)
        return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=True) for r in range(world_size)]
