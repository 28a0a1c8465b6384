"""Acceptance 2: every method, 2 gloo processes x batch B == 1 process x batch 2B.

One spawn runs all methods for two full steps (forward, backward, gradient averaging, SGD
step, EMA update); each is compared here with the same steps on one process.
"""
from __future__ import annotations

import pytest
import torch

from tests.trainers.spawn import run_distributed
from tests.trainers.tiny import GLOBAL_BATCH, TINY_CONFIGS, TINY_STEPS, run_all_methods, run_method

NAMES = list(TINY_CONFIGS)


@pytest.fixture(scope="module")
def distributed_runs() -> list[dict]:
    return run_distributed(run_all_methods, NAMES, world_size=2)


def close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.dtype in (torch.long, torch.int64, torch.bool):
        assert torch.equal(a, b), what
    else:
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=lambda m: f"{what}: {m}")


@pytest.mark.integration
@pytest.mark.parametrize("name", NAMES)
def test_two_processes_equal_one_process_with_double_batch(distributed_runs, name):
    single = run_method(TINY_CONFIGS[name], steps=TINY_STEPS.get(name, 2))
    for rank, runs in enumerate(distributed_runs):
        assert len(runs[name]) == len(single) == TINY_STEPS.get(name, 2)
        for step, (dist_rec, ref) in enumerate(zip(runs[name], single)):
            where = f"{name} rank {rank} step {step}"
            close(dist_rec["loss"], ref["loss"], f"{where} loss")
            assert dist_rec["without_grad"] == ref["without_grad"], where
            assert dist_rec["grads"].keys() == ref["grads"].keys(), where
            for key, grad in ref["grads"].items():
                close(dist_rec["grads"][key], grad, f"{where} grad {key}")
            assert dist_rec["state"].keys() == ref["state"].keys(), where
            for key, value in ref["state"].items():
                close(dist_rec["state"][key], value, f"{where} state {key}")


@pytest.mark.integration
def test_the_comparison_covers_state_updates(distributed_runs):
    """Guards against a vacuous pass: the state the test compares really moved."""
    runs = distributed_runs[0]
    moco = [r["state"] for r in runs["moco_v2"]]
    assert [int(s["queue.pointer"]) for s in moco] == [8, 16, 0, 8]  # 24 keys, batches of 8: wraps after step 2
    b = GLOBAL_BATCH
    assert not torch.equal(moco[3]["queue.features"][:b], moco[2]["queue.features"][:b])  # step 3 overwrote the oldest keys
    assert torch.equal(moco[3]["queue.features"][b:], moco[2]["queue.features"][b:])     # and nothing else
    swav = runs["swav"]
    assert [float(r["logs"]["queue_in_use"]) for r in swav] == [0.0, 0.0, 1.0, 1.0]  # used once 2 batches are in
    for step in range(1, len(swav)):  # newest first: every step shifts the previous batch back by one
        before, after = swav[step - 1]["state"]["queue.features"], swav[step]["state"]["queue.features"]
        assert torch.equal(after[:, b:], before[:, :b]) and not torch.equal(after[:, :b], before[:, :b])
    assert "prototypes.weight" in swav[0]["without_grad"] and "prototypes.weight" in swav[1]["grads"]
    dino = runs["dino"]
    assert "head.last_layer.weight" in dino[0]["without_grad"] and "head.last_layer.weight" in dino[1]["grads"]
    assert dino[-1]["state"]["center"].abs().sum() > 0
    assert dino[0]["logs"]["teacher_temperature"] < dino[1]["logs"]["teacher_temperature"]
    byol = runs["byol"]
    assert not torch.equal(byol[0]["state"]["target_projector.0.weight"], byol[1]["state"]["target_projector.0.weight"])
    bn_means = [k for k in runs["simclr"][0]["state"] if k.endswith("running_mean")]
    assert bn_means and all(runs["simclr"][0]["state"][k].abs().sum() > 0 for k in bn_means)


@pytest.mark.integration
def test_moby_queues_wrap_at_one_pointer_and_each_holds_its_views_keys(distributed_runs):
    moby = [r["state"] for r in distributed_runs[0]["moby"]]
    assert [int(s["queue.pointer"]) for s in moby] == [8, 16, 0, 8]
    b = GLOBAL_BATCH
    for slot in (0, 1):  # step 3 overwrote the oldest keys of BOTH queues, and nothing else
        assert not torch.equal(moby[3]["queue.features"][slot, :b], moby[2]["queue.features"][slot, :b])
        assert torch.equal(moby[3]["queue.features"][slot, b:], moby[2]["queue.features"][slot, b:])
    assert not torch.equal(moby[0]["queue.features"][0, :b], moby[0]["queue.features"][1, :b])  # two views, two queues
    assert not torch.equal(moby[0]["momentum_projector.0.weight"], moby[1]["momentum_projector.0.weight"])


@pytest.mark.integration
def test_ibot_comparison_covers_masks_centres_and_the_frozen_last_layer(distributed_runs):
    ibot = distributed_runs[0]["ibot"]
    assert all(float(r["logs"]["masked_fraction"]) > 0.1 for r in ibot)  # masks drawn per sample, on both ranks
    assert "mask_token" in ibot[0]["grads"] and ibot[0]["grads"]["mask_token"].abs().sum() > 0
    assert ibot[-1]["state"]["center"].abs().sum() > 0 and ibot[-1]["state"]["patch_center"].abs().sum() > 0
    assert "head.last_layer.weight" in ibot[0]["without_grad"] and "head.last_layer.weight" in ibot[1]["grads"]
    assert ibot[0]["logs"]["teacher_patch_temperature"] < ibot[1]["logs"]["teacher_patch_temperature"]
    separate = distributed_runs[0]["ibot_separate_heads"]
    assert {"head.last_layer2.weight", "head.last_layer_scale", "head.last_layer2_scale"} <= set(separate[0]["grads"])
    assert float(separate[0]["logs"]["patch_loss"]) > 0
