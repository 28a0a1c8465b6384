"""End a spawned gloo rank's process without the interpreter's finalization.

Why: gloo's worker threads outlive `dist.destroy_process_group()` and can still hold Python
objects, which they release only when the interpreter can no longer give them the GIL.
- Gloo runs each collective on its own worker threads and drops its last reference to a work
  AFTER waking the waiter (torch/csrc/distributed/c10d/ProcessGroupGloo.cpp,
  `ProcessGroupGloo::runLoop`: `AsyncWork::execute(work)`, then `workInProgress_[i].reset()`);
  `destroy_process_group` does not join those threads (gloo has no `shutdown`:
  c10d/Backend.hpp's default is a no-op), only the backend's destructor does.
- A work keeps the `at::ThreadLocalState` of the thread that made it, and every backward stashes
  a Python object there (torch/autograd/graph.py `_engine_run_backward`:
  `torch._C._stash_obj_in_tls("context", contextvars.copy_context())`), so DDP's gradient
  all-reduces hold one. Destroying such a work takes the GIL.
- When a rank returns, `multiprocessing` ends the process with `sys.exit`, and once the
  interpreter is finalizing, a thread that asks for the GIL is ended with `pthread_exit`
  (CPython ceval_gil.h `take_gil`: `PyThread_exit_thread`); its forced unwind through the
  work's noexcept destructor is `std::terminate`: "terminate called without an active
  exception", SIGABRT, and `mp.spawn` reports the rank as failed after it did all its work.
So a rank that has written its result leaves with `os._exit(0)`: there is no finalization for
the threads to meet. Stdout and stderr are flushed first; nothing else of the process's is
needed after its result is on disk.
"""
from __future__ import annotations

import os
import sys
from typing import NoReturn


def leave_rank_process() -> NoReturn:
    """Flush stdout/stderr and end this process with exit code 0, skipping interpreter shutdown."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
