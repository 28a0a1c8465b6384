"""Recovery drills (`run.fault`) as a step hook: a worker fails on purpose so restarts get tested.

Invariant: each drill fires at most once per run. Its marker file is written before the worker
fails, and a drill whose marker exists is skipped, so the restarted attempt runs clean. The
runner builds the hook from the config and hands it to every worker's Trainer, which calls
`before_step` and knows nothing else about drills. See ARCHITECTURE.md section 3.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from trainers.config import FaultDrill, TrainConfig

if TYPE_CHECKING:
    from trainers.trainer import Trainer

__all__ = ["FaultDrillHook"]


class FaultDrillHook:
    """Fails worker `drill.rank` once, before step `drill.step`: raise, or SIGKILL itself."""

    def __init__(self, drills: Sequence[FaultDrill]) -> None:
        self.drills = list(drills)

    @classmethod
    def from_config(cls, config: TrainConfig) -> Optional["FaultDrillHook"]:
        """The hook for `run.fault`, or None when no drill is configured."""
        drills = config.run.fault_drills()
        return cls(drills) if drills else None

    def before_step(self, trainer: "Trainer") -> None:
        for drill in self.drills:
            if drill.step == trainer.step and drill.rank == trainer.rank and not Path(drill.marker).exists():
                self._fire(drill, trainer)

    @staticmethod
    def _fire(drill: FaultDrill, trainer: "Trainer") -> None:
        marker = Path(drill.marker)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"fault drill fired at step {trainer.step} on rank {trainer.rank} "
                          f"in an attempt resumed from step {trainer.resumed_from}\n")
        if drill.kind == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError(f"fault drill: rank {trainer.rank} fails at step {trainer.step}")
