"""ViewLoader(pipelines=N): several DALI pipelines fed in turn change nothing of what comes out.

The graph holds no randomness (every draw arrives with the batch), so the batches must be
bit-identical to one pipeline's, in the producer's order, from the epoch's start or a resumed
position, and over epochs (the pipelines are kept and reset between them).
"""
from __future__ import annotations

import pytest

from groundfloor.errors import UsageError
from pipeline import ViewLoader, ViewSpec
from tests.pipeline.epoch_batches import assert_same_batches, epoch_batches

SPEC = ViewSpec.simclr(size=32)


@pytest.mark.parametrize("pipelines", [2, 3])
def test_several_pipelines_give_one_pipelines_batches_in_order(uneven_dataset, pipelines):
    one = ViewLoader(uneven_dataset, SPEC, 2, seed=3, pipelines=1)
    many = ViewLoader(uneven_dataset, SPEC, 2, seed=3, pipelines=pipelines)
    for epoch, start in ((0, 0), (1, 0), (1, 3)):
        want, got = epoch_batches(one, epoch, start), epoch_batches(many, epoch, start)
        assert len(want) == one.batches_per_epoch - start
        assert_same_batches(got, want)


def test_pipelines_below_one_is_a_usage_error(uneven_dataset):
    with pytest.raises(UsageError, match="pipelines=0"):
        ViewLoader(uneven_dataset, SPEC, 2, pipelines=0)


def test_the_cpu_default_is_one_single_threaded_pipeline_per_thread(uneven_dataset):
    driver = ViewLoader(uneven_dataset, SPEC, 2, num_threads=3)._driver
    assert driver.pipelines == 3 and driver._build["num_threads"] == 1
    driver = ViewLoader(uneven_dataset, SPEC, 2, num_threads=4, pipelines=2)._driver
    assert driver.pipelines == 2 and driver._build["num_threads"] == 2
