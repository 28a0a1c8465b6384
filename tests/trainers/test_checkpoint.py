"""Checkpoints: safe loading, and finding the newest complete one in a run's storage."""
from __future__ import annotations

import pytest
import torch

from trainers.checkpoint import Progress, find_latest_checkpoint, load_state, resolve_checkpoint, save_checkpoint
from groundfloor.errors import UsageError


def _save(directory, step):
    save_checkpoint(directory, {"method": {"w": torch.full((3,), float(step))}, "optimizer": {"state": {}},
                                "progress": Progress(step, 0, step).as_dict()}, config={"step": step})


def test_round_trip_is_weights_only(tmp_path):
    _save(tmp_path / "c", 5)
    state = load_state(tmp_path / "c")
    assert torch.equal(state["method"]["w"], torch.full((3,), 5.0))
    assert state["progress"] == {"step": 5, "epoch": 0, "batch": 5}


def test_newest_complete_checkpoint_wins_and_partial_ones_are_passed_over(tmp_path):
    run = tmp_path / "run"
    for step in (3, 7, 11):
        _save(run / f"checkpoint_{step:09d}", step)
    (run / "checkpoint_000000011" / "state.pt").write_bytes(b"truncated")  # a copy cut short
    found = find_latest_checkpoint(str(tmp_path), "run")
    assert found == run / "checkpoint_000000007"
    assert resolve_checkpoint(str(run)) == found
    assert find_latest_checkpoint(str(tmp_path), "other") is None


def test_a_folder_that_is_not_a_checkpoint_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="no viewstream checkpoint"):
        resolve_checkpoint(str(tmp_path))
    with pytest.raises(UsageError, match="does not exist"):
        resolve_checkpoint(str(tmp_path / "missing"))


# ---------------------------------------------------------------- the Trainer's stateful parts
class _Counter:
    """A stateful part the Trainer does not know about."""

    def __init__(self, value: int) -> None:
        self.value = value

    def state_dict(self) -> dict:
        return {"value": torch.tensor(self.value)}

    def load_state_dict(self, state: dict) -> None:
        self.value = int(state["value"])


def test_the_trainer_keeps_the_on_disk_keys_of_old_checkpoints(tmp_path):
    from tests.trainers.tiny import TINY_CONFIGS, make_trainer

    make_trainer(TINY_CONFIGS["simclr"], 3).save(str(tmp_path))
    assert sorted(load_state(tmp_path)) == ["grad_scaler", "method", "optimizer", "progress", "torch_rng"]


def test_the_fp16_loss_scale_survives_a_resume(tmp_path):
    """A resumed fp16 run that restarted at the initial scale would overflow and skip steps."""
    from tests.trainers.tiny import TINY_CONFIGS, make_trainer

    trainer = make_trainer(TINY_CONFIGS["simclr"], 3, precision="fp16")
    assert trainer.scaler.is_enabled()
    trainer.scaler.scale(torch.ones(()))  # the scale exists from the first scaled loss on
    trainer.scaler.update(new_scale=512.0)  # as after backing off from overflows
    trainer.save(str(tmp_path))
    resumed = make_trainer(TINY_CONFIGS["simclr"], 3, precision="fp16")
    assert resumed.scaler.get_scale() != 512.0
    resumed.restore(str(tmp_path))
    assert resumed.scaler.get_scale() == 512.0


def test_checkpoints_without_a_loss_scale_resume_with_or_without_fp16(tmp_path):
    """Written before the part existed, or by an fp32/bf16 run ({}): the scaler stays as built."""
    from tests.trainers.tiny import TINY_CONFIGS, make_trainer

    make_trainer(TINY_CONFIGS["simclr"], 3).save(str(tmp_path / "fp32"))
    state = load_state(tmp_path / "fp32")
    assert state["grad_scaler"] == {}
    del state["grad_scaler"]
    save_checkpoint(tmp_path / "old", state, config={})
    for written in ("fp32", "old"):
        resumed = make_trainer(TINY_CONFIGS["simclr"], 3, precision="fp16")
        resumed.restore(str(tmp_path / written))
        assert resumed.scaler.get_scale() == 65536.0
        assert resumed.step == 0


def test_a_new_stateful_part_is_saved_and_restored_without_touching_save_or_restore(tmp_path):
    from tests.trainers.tiny import TINY_CONFIGS, make_trainer

    trainer = make_trainer(TINY_CONFIGS["simclr"], 3)
    trainer.checkpoint.states["counter"] = _Counter(7)
    trainer.save(str(tmp_path))
    assert int(load_state(tmp_path)["counter"]["value"]) == 7

    resumed = make_trainer(TINY_CONFIGS["simclr"], 3)
    resumed.checkpoint.states["counter"] = counter = _Counter(0)
    resumed.restore(str(tmp_path))
    assert counter.value == 7


def test_a_checkpoint_without_a_part_is_a_usage_error_naming_it(tmp_path):
    from tests.trainers.tiny import TINY_CONFIGS, make_trainer

    make_trainer(TINY_CONFIGS["simclr"], 3).save(str(tmp_path))
    resumed = make_trainer(TINY_CONFIGS["simclr"], 3)
    resumed.checkpoint.states["counter"] = _Counter(0)
    with pytest.raises(UsageError, match="has no counter state"):
        resumed.restore(str(tmp_path))
