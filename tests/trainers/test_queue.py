"""EmbeddingQueue: ring and newest-first order, host-side fill state, resume of pointer and fill."""
from __future__ import annotations

import pytest
import torch

from trainers.methods.queue import EmbeddingQueue
from viewstream.errors import UsageError


def test_ring_overwrites_the_oldest_rows_and_wraps():
    q = EmbeddingQueue(6, 2, order="ring")
    for i in range(4):
        q.enqueue(torch.full((2, 2), float(i + 1)))
    assert q.features[:, 0].tolist() == [4.0, 4.0, 2.0, 2.0, 3.0, 3.0]
    assert int(q.pointer) == 2 and q.is_full


def test_newest_first_shifts_back_by_one_batch():
    q = EmbeddingQueue(4, 1, slots=2, order="newest_first")
    q.enqueue(torch.tensor([[[1.0], [2.0]], [[5.0], [6.0]]]))
    assert not q.is_full
    q.enqueue(torch.tensor([[[3.0], [4.0]], [[7.0], [8.0]]]))
    assert q.features[..., 0].tolist() == [[3.0, 4.0, 1.0, 2.0], [7.0, 8.0, 5.0, 6.0]]
    assert q.is_full


def test_unit_normal_rows_are_normalised():
    q = EmbeddingQueue(5, 3, init="unit_normal")
    torch.testing.assert_close(q.features.norm(dim=1), torch.ones(5))


def test_a_batch_that_does_not_divide_the_queue_is_a_usage_error():
    with pytest.raises(UsageError, match="moco_v2 queue_size=5 is not divisible by the global batch 2"):
        EmbeddingQueue(5, 3, owner="moco_v2").enqueue(torch.zeros(2, 3))


def test_load_state_dict_restores_pointer_and_fill_on_the_host():
    q = EmbeddingQueue(4, 1)
    q.enqueue(torch.ones(2, 1))
    resumed = EmbeddingQueue(4, 1)
    resumed.load_state_dict(q.state_dict())
    assert not resumed.is_full
    resumed.enqueue(torch.full((2, 1), 2.0))
    assert resumed.is_full and resumed.features[:, 0].tolist() == [1.0, 1.0, 2.0, 2.0] and int(resumed.pointer) == 0
