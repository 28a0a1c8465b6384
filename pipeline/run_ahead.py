"""Iterate a generator in a background thread, one item ahead of its consumer.

What it is for: `pipe.run()` of the DALI view graph costs ~2-3 ms of the calling thread per
batch even when the batch is long prepared (DALI copies the external source's arrays in and the
outputs' descriptions out in Python), time a training loop would wait every step. Called from
this thread it overlaps the step instead (torch releases the GIL in its kernels).

The hand-over is in lockstep: the consumer's part of an item (`finish`, e.g. wrapping DALI's
outputs as torch tensors, which must happen on the consumer's thread for its CUDA stream) runs
before the thread starts on the next item. Both are Python, and a thread that asks for the GIL
while the other holds it waits up to the interpreter's switch interval (5 ms); in lockstep they
never ask at the same time.

Why by hand: the generator driven here must be closed in the thread that iterates it (its
cleanup closes a producer and drops a DALI pipeline that holds batches of an abandoned stream),
also when the consumer stops early; background-generator packages (prefetch_generator and the
like) leave their thread blocked on a full queue then and never close the source.

Invariants: items come back in order, each once; an exception raised by the source is raised
to the consumer after the items before it; when the consumer's generator is closed or exhausted,
the source has been closed in its own thread and the thread has ended before `close()` returns;
the thread holds at most one item the consumer has not taken.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterator, TypeVar

T = TypeVar("T")
_POLL_S = 0.05


def run_ahead(make: Callable[[], Iterator[T]], finish: Callable[[T], Any] = lambda item: item,
              name: str = "viewstream-run-ahead") -> Iterator[Any]:
    """`finish(item)` for each item of `make()`; `make()` is called and iterated in a daemon
    thread, which makes item k + 1 while the consumer uses item k."""
    handoff: queue.Queue = queue.Queue(maxsize=1)
    turn = threading.Semaphore(0)  # released by the consumer once it has finished an item
    stop = threading.Event()

    def put(entry: tuple) -> bool:
        while not stop.is_set():
            try:
                handoff.put(entry, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def wait_for_turn() -> bool:
        while not stop.is_set():
            if turn.acquire(timeout=_POLL_S):
                return True
        return False

    def work() -> None:
        try:
            source = make()
        except BaseException as err:  # handed to the consumer, which raises it
            put(("error", err))
            return
        try:
            for item in source:
                if not put(("item", item)) or not wait_for_turn():
                    return
            put(("end", None))
        except BaseException as err:
            put(("error", err))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=work, name=name, daemon=True)
    thread.start()
    try:
        while True:
            try:
                kind, value = handoff.get(timeout=_POLL_S)
            except queue.Empty:
                if not thread.is_alive() and handoff.empty():
                    raise RuntimeError(f"{name}: the background thread ended without a result")
                continue
            if kind == "end":
                return
            if kind == "error":
                raise value
            finished = finish(value)
            turn.release()
            yield finished
    finally:
        stop.set()
        while thread.is_alive():
            try:
                handoff.get_nowait()
            except queue.Empty:
                pass
            thread.join(timeout=_POLL_S)
