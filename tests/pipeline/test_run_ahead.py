"""pipeline.run_ahead: the source runs in its own thread, one item ahead, in lockstep with finish."""
from __future__ import annotations

import threading
import time

import pytest

from pipeline.run_ahead import run_ahead


def _wait_for(condition, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.005)
    return condition()


def test_items_come_in_order_finished_on_the_consumer_thread_and_made_on_another():
    made_on, finished_on = set(), set()

    def source():
        for k in range(50):
            made_on.add(threading.get_ident())
            yield k

    def finish(k):
        finished_on.add(threading.get_ident())
        return -k

    assert list(run_ahead(source, finish)) == [-k for k in range(50)]
    assert finished_on == {threading.get_ident()} and threading.get_ident() not in made_on


def test_the_next_item_is_made_while_the_consumer_holds_one_but_not_before_it_is_finished():
    events: list[str] = []

    def source():
        for k in range(3):
            events.append(f"make {k}")
            yield k

    def finish(k):
        events.append(f"finish {k}")
        time.sleep(0.05)  # a slow finish: the source must not start item k + 1 meanwhile
        events.append(f"finished {k}")
        return k

    items = run_ahead(source, finish)
    assert next(items) == 0
    assert _wait_for(lambda: "make 1" in events)  # made while the consumer holds item 0
    assert next(items) == 1
    assert list(items) == [2]
    for k in range(2):  # lockstep: item k + 1 is made only after item k is finished
        assert events.index(f"make {k + 1}") > events.index(f"finished {k}")


def test_a_source_error_reaches_the_consumer_after_the_items_before_it():
    def source():
        yield 1
        yield 2
        raise ValueError("bad photo")

    got = []
    with pytest.raises(ValueError, match="bad photo"):
        for item in run_ahead(source):
            got.append(item)
    assert got == [1, 2]


def test_stopping_early_closes_the_source_in_its_own_thread_and_ends_the_thread():
    closed_on: list[int] = []
    before = set(threading.enumerate())

    def source():
        try:
            for k in range(1000):
                yield k
        finally:
            closed_on.append(threading.get_ident())

    items = run_ahead(source, name="test-run-ahead")
    assert [next(items) for _ in range(3)] == [0, 1, 2]
    items.close()
    assert len(closed_on) == 1 and closed_on[0] != threading.get_ident()
    assert not [t for t in set(threading.enumerate()) - before if t.name == "test-run-ahead"]
