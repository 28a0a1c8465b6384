"""Executors run `build_shard` over the planned shards and yield results as they finish.

All of them take the same plan and the same pure function, which is why their output is
byte-identical: the executor only decides *where* a shard is built, never *what* is in it.

  * `InlineExecutor`: in this process (workers=1; simplest to debug).
  * `ProcessExecutor`: a local process pool (workers=N).
  * `RayExecutor`: Ray tasks, on a running cluster (address) or a local one bound to 127.0.0.1.
"""
from __future__ import annotations

import multiprocessing
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Callable, Iterable, Iterator, Protocol, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Executor(Protocol):
    """Runs fn over tasks; yields results in completion order. `name` names the tasks where the
    executor shows them (Ray; default ``_call``: shard builds)."""

    def map_unordered(self, fn: Callable[[T], R], tasks: Iterable[T], name: str | None = None) -> Iterator[R]: ...

    def close(self) -> None: ...


class InlineExecutor:
    """Runs each task in this process, in plan order."""

    def map_unordered(self, fn: Callable[[T], R], tasks: Iterable[T], name: str | None = None) -> Iterator[R]:
        for task in tasks:
            yield fn(task)

    def close(self) -> None:
        pass


class ProcessExecutor:
    """A pool of `workers` local processes.

    Spawned, not forked: no inherited locks or threads, and each worker sees the environment
    as it is now (a forkserver would keep the one of its first use, e.g. stale S3 credentials).
    Each worker starts with `arrow_without_pandas`.
    """

    def __init__(self, workers: int):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def map_unordered(self, fn: Callable[[T], R], tasks: Iterable[T], name: str | None = None) -> Iterator[R]:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=arrow_without_pandas)
        pending = set()
        queue = iter(tasks)
        # Keep a bounded number of shards in flight so huge plans do not pickle all at once.
        for task in queue:
            pending.add(self._pool.submit(fn, task))
            if len(pending) >= 2 * self.workers:
                break
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
                nxt = next(queue, None)
                if nxt is not None:
                    pending.add(self._pool.submit(fn, nxt))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class RayExecutor:
    """Ray tasks (1 CPU each). Connects to `address` (or RAY_ADDRESS) when given; otherwise
    starts a local Ray bound to 127.0.0.1 with `num_cpus` CPUs and stops it on `close()`."""

    def __init__(self, address: str | None = None, num_cpus: int | None = None):
        import ray

        from groundfloor.ray_connect import connect_ray

        self._ray = ray
        self._started_here = connect_ray(address, num_cpus, log_to_driver=False)

    def map_unordered(self, fn: Callable[[T], R], tasks: Iterable[T], name: str | None = None) -> Iterator[R]:
        ray = self._ray
        remote_call = ray.remote(num_cpus=1, max_retries=2)(_call)
        if name is not None:  # how the task shows in Ray's state API and dashboard
            remote_call = remote_call.options(name=name)
        fn_ref = ray.put(fn)  # shipped once, not once per task
        limit = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
        queue = iter(tasks)
        pending = [remote_call.remote(fn_ref, t) for _, t in zip(range(limit), queue)]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                yield ray.get(ref)
                nxt = next(queue, None)
                if nxt is not None:
                    pending.append(remote_call.remote(fn_ref, nxt))

    def close(self) -> None:
        if self._started_here and self._ray.is_initialized():
            self._ray.shutdown()
            self._started_here = False


def arrow_without_pandas() -> None:
    """Make pyarrow's first array conversion skip importing pandas, in a process of ours.

    The first ``pa.array`` / ``Table.from_pylist`` call imports pandas (pyarrow checks whether
    the values are pandas objects), ~0.2 CPU s and ~50 MB per worker that never uses pandas:
    the largest cost a sharding worker had beyond reading and decoding images. pyarrow tries
    that import once and remembers the outcome, so one conversion while ``import pandas``
    fails settles it; APIs that need pandas (``to_pandas``) still import it when called.
    A no-op where pandas is already imported.
    """
    if "pandas" in sys.modules:
        return
    import pyarrow as pa

    sys.meta_path.insert(0, _NoPandas)
    try:
        pa.array([0])
    finally:
        sys.meta_path.remove(_NoPandas)


class _NoPandas:
    """A meta path finder under which ``import pandas`` fails (see `arrow_without_pandas`)."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "pandas":
            raise ModuleNotFoundError("pandas is not imported in sharding workers", name=name)
        return None


def _call(fn: Callable[[T], R], task: T) -> R:
    """Ray task body: `ray.remote` wants a plain function, `fn` may be a functools.partial."""
    return fn(task)


def make_executor(workers: int = 1, ray: bool = False, ray_address: str | None = None) -> Executor:
    """The executor for the CLI flags ``--workers N`` / ``--ray [--address A]``."""
    if ray:
        return RayExecutor(ray_address, num_cpus=workers if workers > 1 else None)
    if workers <= 1:
        return InlineExecutor()
    return ProcessExecutor(workers)
