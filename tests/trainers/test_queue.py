"""EmbeddingQueue: ring and newest-first order, host-side fill state, resume of pointer and fill."""
from __future__ import annotations

import pytest
import torch

from trainers.methods.queue import EmbeddingQueue
from groundfloor.errors import UsageError


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


def test_moco_and_swav_checkpoints_from_before_the_queue_module_still_load():
    from tests.trainers.tiny import TINY_CONFIGS
    from trainers.methods import build_method

    for name, legacy in (("moco_v2", {"queue_pointer": torch.tensor(8)}), ("swav", {"queue_filled": torch.tensor(8)})):
        method = build_method(TINY_CONFIGS[name], seed=0)
        state = {k: v for k, v in method.state_dict().items() if not k.startswith("queue.")}
        old_queue = torch.randn_like(method.queue.features)
        method.load_state_dict({**state, "queue": old_queue, **legacy})  # strict: nothing missing or unexpected
        assert torch.equal(method.queue.features, old_queue)
        assert (method.queue._pointer, method.queue._filled) == ((8, 24) if name == "moco_v2" else (0, 8))
    swav = build_method({**TINY_CONFIGS["swav"], "queue_size": 0}, seed=0)
    state = swav.state_dict()
    swav.load_state_dict({**state, "queue": torch.zeros(2, 0, 16), "queue_filled": torch.tensor(0)})
