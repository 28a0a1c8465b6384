"""A spawned gloo rank that leaves through `testbed.rank_exit.leave_rank_process` exits 0 even
when gloo's worker thread is still waiting to release a Python object as the rank ends.

The race is made certain. Rank 0 stashes a Python object in its thread-local state (as every
backward does), starts an all-reduce that rank 1 joins 1 s later, keeps its process group
alive (as a DDP model does) and holds the GIL without a break (a switch interval of 1,000 s and
a busy loop) while gloo's worker thread, the all-reduce done, waits for the GIL to release that
object. An object whose `__del__` sleeps at module teardown then hands the GIL over while the
interpreter is finalizing. A rank that just returns is killed by SIGABRT (the control case: the
test sees the bug), one that leaves with `leave_rank_process` exits 0.
"""
from __future__ import annotations

import contextvars
import os
import signal
import socket
import sys
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from testbed.rank_exit import leave_rank_process


class _SleepsAtTeardown:
    """Sleeps in `__del__` (module teardown: the interpreter is finalizing), releasing the GIL."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.sleep = seconds, time.sleep

    def __del__(self) -> None:
        self.sleep(self.seconds)


_held: list[object] = []


def _rank(rank: int, port: int, leave: bool) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=30))
    tensor = torch.ones(1)
    if rank == 1:
        time.sleep(1.0)
        dist.all_reduce(tensor)
        leave_rank_process()
    sys.setswitchinterval(1000.0)  # the GIL is not handed over on request from here on
    torch._C._stash_obj_in_tls("context", contextvars.copy_context())  # torch/autograd/graph.py does
    dist.all_reduce(tensor, async_op=True)  # done when rank 1 joins; gloo's thread then releases it
    _held.extend([dist.group.WORLD, _SleepsAtTeardown(1.0)])
    end = time.monotonic() + 2.5
    while time.monotonic() < end:  # rank 1 joins meanwhile; gloo's thread waits for the GIL
        pass
    dist.destroy_process_group()
    if leave:
        leave_rank_process()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("leave, exitcode", [(True, 0), (False, -signal.SIGABRT)],
                         ids=["leaves", "returns"])
def test_a_rank_whose_gloo_work_outlives_it_exits_cleanly_only_when_it_leaves(leave: bool,
                                                                             exitcode: int) -> None:
    context = mp.start_processes(_rank, args=(_free_port(), leave), nprocs=2, join=False, start_method="spawn")
    for process in context.processes:
        process.join(timeout=60)
    assert [p.exitcode for p in context.processes] == [exitcode, 0]
