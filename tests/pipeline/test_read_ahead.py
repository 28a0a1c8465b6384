"""ViewLoader(read_ahead=True): the next epoch is read while this one ends, and changes nothing.

The promises: the batches are bit-identical to a loader without read-ahead (the producer of
epoch e + 1 is the same pure function of (seed, epoch, sample)); epoch e + 1's reading has
started before `iter_epoch(e + 1)` is called (what removes the epoch-boundary wait); a call
for another epoch or batch gets its own batches, not the read-ahead ones; `close()` leaves no
reader or preparer thread behind.
"""
from __future__ import annotations

import threading
import time

from pipeline import ViewLoader, ViewSpec, dali_driver
from tests.pipeline.epoch_batches import assert_same_batches, epoch_batches

SPEC = ViewSpec.simclr(size=32)
PRODUCER_THREADS = ("viewstream-reader", "viewstream-preparer")


def _wait_for(condition, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def _producer_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name in PRODUCER_THREADS}


def test_read_ahead_starts_the_next_epoch_early_and_gives_the_same_batches(uneven_dataset):
    earlier = _producer_threads()  # another test's, if any: not this test's to judge
    plain = ViewLoader(uneven_dataset, SPEC, 4, seed=3)
    ahead = ViewLoader(uneven_dataset, SPEC, 4, seed=3, read_ahead=True)
    started: list[int] = []  # epochs whose shard reading started, in order
    read = ahead._read
    ahead._read = lambda plan, start: (started.append(plan.epoch), read(plan, start))[1]
    try:
        for epoch in range(3):
            assert_same_batches(epoch_batches(ahead, epoch), epoch_batches(plain, epoch))
            # before anyone asks for epoch + 1, its reading is under way
            assert _wait_for(lambda: started[-1:] == [epoch + 1]), started
        assert started == [0, 1, 2, 3]
        # a call for another epoch or a later batch: its own batches, the read-ahead dropped
        assert_same_batches(epoch_batches(ahead, 5), epoch_batches(plain, 5))
        assert_same_batches(epoch_batches(ahead, 6, 2), epoch_batches(plain, 6, 2))
    finally:
        ahead.close()
    assert _wait_for(lambda: not _producer_threads() - earlier), _producer_threads() - earlier


def test_without_read_ahead_nothing_is_read_past_the_epoch(uneven_dataset):
    earlier = _producer_threads()
    loader = ViewLoader(uneven_dataset, SPEC, 4, seed=3)
    started: list[int] = []
    read = loader._read
    loader._read = lambda plan, start: (started.append(plan.epoch), read(plan, start))[1]
    epoch_batches(loader, 0)
    time.sleep(0.2)
    assert started == [0] and not _producer_threads() - earlier


def test_dali_runs_its_batches_off_the_consumer_thread(uneven_dataset, monkeypatch):
    """The pipelines' schedule_run()/outputs() (~2-3 ms of the caller's thread a batch) overlap
    the training step."""
    runs_on: set[int] = set()
    build = dali_driver.build_view_pipeline

    def noted(method):
        return lambda *args: (runs_on.add(threading.get_ident()), method(*args))[1]

    def pipeline(*args, **kwargs):
        pipe = build(*args, **kwargs)
        pipe.schedule_run, pipe.outputs = noted(pipe.schedule_run), noted(pipe.outputs)
        return pipe

    monkeypatch.setattr(dali_driver, "build_view_pipeline", pipeline)
    loader = ViewLoader(uneven_dataset, SPEC, 4, seed=3)
    assert len(epoch_batches(loader, 0)) == loader.batches_per_epoch
    assert runs_on and threading.get_ident() not in runs_on


def test_a_short_epoch_reads_one_epoch_ahead_not_more(uneven_dataset):
    """An epoch of fewer batches than the producer queues is prepared whole while it waits to be
    taken; that must not start the epoch after it (and that one the next, without end)."""
    earlier = _producer_threads()
    loader = ViewLoader(uneven_dataset, SPEC, 8, seed=3, read_ahead=True)  # 23 groups: 3 batches
    started: list[int] = []
    read = loader._read
    loader._read = lambda plan, start: (started.append(plan.epoch), read(plan, start))[1]
    try:
        epoch_batches(loader, 0)
        assert _wait_for(lambda: started[-1:] == [1]), started
        time.sleep(0.5)  # epoch 1 is prepared whole by now
        assert started == [0, 1]
        assert len(epoch_batches(loader, 1)) == loader.batches_per_epoch
        assert started[:3] == [0, 1, 2]
    finally:
        loader.close()
    assert _wait_for(lambda: not _producer_threads() - earlier), _producer_threads() - earlier
