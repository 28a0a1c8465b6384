"""Training metrics on rank 0: one JSON line per report and the same scalars in TensorBoard.

JSONL is what tools and tests read (plots, the demo report); TensorBoard is for people. On a
resume the log is cut back to the restored step, so the file reads as one uninterrupted run.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class MetricsLogger:
    """Appends metrics records to ``<out_dir>/metrics.jsonl`` and TensorBoard (rank 0 only)."""

    def __init__(self, out_dir: str | Path, *, resume_step: int = 0, enabled: bool = True,
                 progress_board: str | None = None, total_steps: int | None = None) -> None:
        """`progress_board`: the named actor the driver shows progress from (trainers.progress)."""
        from trainers.progress import ProgressPusher

        self.enabled = enabled
        self._progress = ProgressPusher(progress_board if enabled else None, total_steps)
        self.path = Path(out_dir) / METRICS_FILE
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        truncate_after_step(self.path, resume_step)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(Path(out_dir) / TENSORBOARD_DIR), purge_step=resume_step or None)
        except ImportError:  # tensorboard is a dependency; stay useful without it
            self._tb = None

    def log(self, record: dict[str, Any]) -> None:
        """Write one record; it must carry an integer ``step``."""
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        self._progress.push(record)
        if self._tb is not None:
            step = int(record["step"])
            for name, value in record.items():
                if name != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(name, value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics JSONL file, in order."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_after_step(path: Path, step: int) -> None:
    """Drop records past `step`: work a failed attempt did after the checkpoint we resume from."""
    if not path.is_file():
        return
    kept = [r for r in read_metrics(path) if int(r.get("step", 0)) <= step]
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
