"""Elastic training, fast: `scaling.num_workers: [min, max]`, the ScalingConfig Ray Train gets,
the global batch digest that does not depend on the split, checkpoints that record the worker
count, every rank's CPU and CUDA RNG states, and a bit-identical resume with drop-path.
(On Ray: tests/trainers/test_train_elastic_ray.py.)"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from groundfloor.errors import UsageError
from groundfloor.config_files import validate
from tests.trainers.small_configs import small_config
from tests.trainers.spawn import run_distributed
from tests.trainers.tiny import TINY_CONFIGS, make_trainer, make_views, view_batch
from trainers.checkpoint import TorchRNG, load_meta, load_state
from trainers.config import TrainConfig
from trainers.runner import _shortfall, scaling_config, worker_bundles
from trainers.train_loop import sample_set_digest


def _config(tmp_path, **overrides) -> TrainConfig:
    return validate(TrainConfig, small_config("unused", tmp_path, "elastic", **overrides))


# ---------------------------------------------------------------- [min, max] workers
def test_a_worker_range_reaches_ray_train_as_an_elastic_scaling_config(tmp_path):
    config = _config(tmp_path, batch_size=12, scaling={"num_workers": [2, 4], "cpus_per_worker": 1})
    ray_scaling = scaling_config(config)
    assert ray_scaling.num_workers == (2, 4) and ray_scaling.elasticity_enabled
    assert (ray_scaling.min_workers, ray_scaling.max_workers) == (2, 4)
    assert ray_scaling._resources_per_worker_not_none == {"CPU": 1}
    fixed = scaling_config(_config(tmp_path, batch_size=12, scaling={"num_workers": 3}))
    assert fixed.num_workers == 3 and not fixed.elasticity_enabled
    # the cluster check needs room for min; the autoscaler is asked for max
    assert _shortfall(config, {"CPU": 2}) is None and "needs 2 CPUs" in _shortfall(config, {"CPU": 1})
    assert len(worker_bundles(config)) == 4


def test_a_batch_some_worker_count_in_the_range_does_not_divide_is_refused_naming_the_counts_that_work(tmp_path):
    with pytest.raises(UsageError, match=r"does not split evenly over 3 workers; counts up to 4 that work: 1, 2, 4$"):
        _config(tmp_path, batch_size=32, scaling={"num_workers": [2, 4]})
    with pytest.raises(UsageError, match="gradient_accumulation_steps=4 over 2 workers; counts up to 3 that work: 1, 3"):
        _config(tmp_path, batch_size=12, gradient_accumulation_steps=4, scaling={"num_workers": [1, 3]})
    with pytest.raises(UsageError, match="min <= max"):
        _config(tmp_path, scaling={"num_workers": [3, 2]})
    config = _config(tmp_path, batch_size=12, scaling={"num_workers": [1, 4]})
    assert [config.per_worker_batch(w) for w in config.scaling.worker_counts()] == [12, 6, 4, 3]
    with pytest.raises(ValueError, match="actual world size"):
        config.per_worker_batch()
    assert TrainConfig.model_validate(config.model_dump(mode="json")).scaling.num_workers == (1, 4)  # to workers


# ---------------------------------------------------------------- the global batch's digest
def test_the_digest_of_a_global_batch_is_the_same_however_it_is_split():
    rows = np.random.default_rng(0).permutation(10_000)[:12]
    whole = sample_set_digest(rows)
    for world in (2, 3, 4, 6):
        parts = np.split(rows, world)
        assert sum(sample_set_digest(p) for p in parts) % (1 << 56) == whole
    assert sample_set_digest(np.concatenate([rows, rows[:2]])) == whole  # fills repeat: same set
    assert sample_set_digest(rows[1:]) != whole and sample_set_digest(rows + 1) != whole


# ---------------------------------------------------------------- RNG state of every rank
def test_the_rng_state_covers_every_cuda_device_when_cuda_is_present(monkeypatch):
    """The collection and the restore, without a GPU: torch.cuda's RNG functions substituted."""
    devices = [torch.arange(16, dtype=torch.uint8) + d for d in range(2)]
    put_back = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [d.clone() for d in devices])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: put_back.append([s.clone() for s in states]))
    torch.manual_seed(5)
    state = TorchRNG().state_dict()
    assert sorted(state) == ["cpu", "cuda"] and state["cuda"].shape == (1, 2, 16)
    assert torch.equal(state["cuda"][0, 1], devices[1])
    expected = torch.rand(3)
    monkeypatch.setattr(torch, "manual_seed", lambda s: pytest.fail("a rank with a saved row is not reseeded"))
    TorchRNG(rank=0).load_state_dict(state)
    assert torch.equal(torch.rand(3), expected)
    assert len(put_back) == 1 and all(torch.equal(a, b) for a, b in zip(put_back[0], devices))


def _gathered_rng_state() -> dict:
    from trainers import distributed

    torch.manual_seed(100 + distributed.rank())
    rng = TorchRNG(distributed.rank())
    mine = torch.get_rng_state()
    rng.gather_state()  # the collective every rank runs at a checkpoint step
    return {"mine": mine, "saved": rng.state_dict()}


@pytest.mark.integration
def test_a_checkpoint_holds_every_ranks_rng_and_each_rank_gets_its_own_back():
    ranks = run_distributed(_gathered_rng_state, world_size=2)
    saved = ranks[0]["saved"]
    assert saved["cpu"].shape[0] == 2 and all(torch.equal(saved["cpu"][r], ranks[r]["mine"]) for r in range(2))
    draws = []
    for rank in range(3):  # resumed on 3 workers: rank 2 has no row and gets a seed of its own
        torch.manual_seed(0)
        TorchRNG(rank).load_state_dict(saved)
        draws.append(torch.rand(4))
    torch.set_rng_state(ranks[1]["mine"])
    assert torch.equal(draws[1], torch.rand(4))
    assert not torch.equal(draws[2], draws[0]) and not torch.equal(draws[2], draws[1])
    torch.manual_seed(0)
    TorchRNG(2).load_state_dict(saved)
    assert torch.equal(torch.rand(4), draws[2])  # and the same seed on every rerun


def test_old_checkpoints_with_a_bare_cpu_state_still_restore():
    torch.manual_seed(3)
    old = torch.get_rng_state()
    expected = torch.rand(2)
    TorchRNG(rank=1).load_state_dict(old)
    assert torch.equal(torch.rand(2), expected)


# ---------------------------------------------------------------- resume
VIT_DROP_PATH = {**TINY_CONFIGS["moco_v3_vit"],
                 "backbone": {**TINY_CONFIGS["moco_v3_vit"]["backbone"], "drop_path_rate": 0.3}}


def _steps(trainer, views, first: int) -> None:
    for s, v in enumerate(views):
        trainer.train_step(view_batch(v, first + s))


def test_resume_with_drop_path_is_bit_identical_and_records_the_worker_count(tmp_path):
    views = make_views(VIT_DROP_PATH, 4)
    torch.manual_seed(7)
    straight = make_trainer(VIT_DROP_PATH, 4)
    _steps(straight, views, 0)

    torch.manual_seed(7)
    first = make_trainer(VIT_DROP_PATH, 4)
    _steps(first, views[:2], 0)
    first.save(str(tmp_path))
    assert load_meta(tmp_path)["progress"] == {"step": 2, "epoch": 0, "batch": 2, "world_size": 1}
    assert load_state(tmp_path)["torch_rng"]["cpu"].shape[0] == 1

    def resumed(restore_rng: bool) -> dict:
        torch.manual_seed(99)  # another process: its generator is wherever it is
        trainer = make_trainer(VIT_DROP_PATH, 4)
        if not restore_rng:
            del trainer.checkpoint.states["torch_rng"]
        trainer.restore(str(tmp_path))
        _steps(trainer, views[2:], 2)
        return trainer.method.state_dict()

    expected = straight.method.state_dict()
    got = resumed(restore_rng=True)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    # drop-path draws from the generator: without its state the resumed run is another run
    other = resumed(restore_rng=False)
    assert not all(torch.equal(other[k], expected[k]) for k in expected)
