"""The fault-drill hook (`run.fault`): built from the config, it fails its rank once at its step."""
from __future__ import annotations

import pytest

from tests.trainers.tiny import TINY_CONFIGS, make_views, train_config, view_batch
from trainers.config import FaultDrill
from trainers.fault_drill import FaultDrillHook
from trainers.runner import step_hooks
from trainers.trainer import Trainer


def _trainer(hooks, rank=0):
    config = train_config(TINY_CONFIGS["simclr"], 1, 4)
    return Trainer(config, rank, 1, "cpu", steps_per_epoch=4, step_hooks=hooks)


def test_the_runner_builds_the_hook_from_run_fault_only_when_configured(tmp_path):
    assert step_hooks(train_config(TINY_CONFIGS["simclr"])) == []
    marker = str(tmp_path / "m")
    [hook] = step_hooks(train_config(TINY_CONFIGS["simclr"], run={"fault": {"step": 2, "marker": marker}}))
    assert isinstance(hook, FaultDrillHook) and [d.step for d in hook.drills] == [2]


def test_the_drill_fails_its_rank_once_at_its_step(tmp_path):
    marker = tmp_path / "drill" / "fired"
    trainer = _trainer([FaultDrillHook([FaultDrill(step=2, rank=0, marker=str(marker))])])
    views = make_views(TINY_CONFIGS["simclr"], 4)
    for step in range(2):
        trainer.train_step(view_batch(views[step], step))
        assert not marker.exists()
    with pytest.raises(RuntimeError, match="fault drill: rank 0 fails at step 2"):
        trainer.train_step(view_batch(views[2], 2))
    assert trainer.step == 2  # it failed before the step
    assert marker.read_text() == "fault drill fired at step 2 on rank 0 in an attempt resumed from step 0\n"
    trainer.train_step(view_batch(views[2], 2))  # the marker exists: the retried step runs clean
    assert trainer.step == 3


def test_a_drill_for_another_rank_does_not_fire_here(tmp_path):
    marker = tmp_path / "fired"
    trainer = _trainer([FaultDrillHook([FaultDrill(step=1, rank=1, marker=str(marker))])], rank=0)
    for step, views in enumerate(make_views(TINY_CONFIGS["simclr"], 2)):
        trainer.train_step(view_batch(views, step))
    assert trainer.step == 2 and not marker.exists()
