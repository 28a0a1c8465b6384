"""The run's live progress line on the driver, fed by rank 0 through a small named Ray actor.

On a real cluster the driver (a laptop, a head node, a Ray Job) is not on rank 0's node, so a
local file cannot carry progress; Ray Train's own ``report`` only reaches the driver at
checkpoints. Rank 0 therefore pushes each metrics record (every ``run.log_every_steps``) to a
`ProgressBoard` actor the driver created (0 CPUs, named per run), fire-and-forget: a push is one
small async actor call that the training step never waits on. The driver polls the board and
redraws one line:

    step 120/400  epoch 2  loss 3.1234  512.3 samples/s  data-wait 4.2%  ETA 0:01:10
"""
from __future__ import annotations

import sys
import threading
import time
import uuid
from typing import Any, Optional, TextIO

PROGRESS_NAMESPACE = "viewstream"
POLL_S = 0.5
PLAIN_EVERY_S = 5.0  # without a terminal, a new line at most this often (and the last one)


class ProgressBoard:
    """The Ray actor body: holds the newest record pushed by rank 0."""

    def __init__(self, total_steps: Optional[int] = None) -> None:
        self.record: dict[str, Any] = {}
        self.total_steps = total_steps

    def push(self, record: dict[str, Any]) -> None:
        self.record = {**self.record, **record}  # a kNN record keeps the last loss and rate

    def latest(self) -> dict[str, Any]:
        return self.record


def board_name() -> str:
    """A name no other run on the cluster uses."""
    return f"viewstream-progress-{uuid.uuid4().hex[:12]}"


def create_board(name: str):
    """Create the board actor on the cluster (0 CPUs: it must never hold back a worker)."""
    import ray

    return ray.remote(num_cpus=0)(ProgressBoard).options(
        name=name, namespace=PROGRESS_NAMESPACE, lifetime=None).remote()


class ProgressPusher:
    """Rank 0's side: push records to the named board, never blocking and never failing a run."""

    def __init__(self, name: Optional[str], total_steps: Optional[int] = None) -> None:
        self.name, self.total_steps, self._board = name, total_steps, None
        self._gave_up = name is None

    def push(self, record: dict[str, Any]) -> None:
        if self._gave_up:
            return
        try:
            if self._board is None:
                import ray

                self._board = ray.get_actor(self.name, namespace=PROGRESS_NAMESPACE)
            payload = {k: v for k, v in record.items() if isinstance(v, (int, float, str))}
            if self.total_steps:
                payload["total_steps"] = self.total_steps
            self._board.push.remote(payload)  # fire and forget
        except Exception:  # no board (driver gone, Ray Client): progress is only cosmetic
            self._gave_up = True


def format_progress(record: dict[str, Any], global_batch: Optional[int] = None) -> str:
    """One line from a metrics record: step/total, epoch, loss, samples/s, data-wait %, ETA."""
    step, total = record.get("step"), record.get("total_steps")
    parts = [f"step {step}/{total if total else '?'}"]
    if "epoch" in record:
        parts.append(f"epoch {record['epoch']}")
    if isinstance(record.get("loss"), (int, float)):
        parts.append(f"loss {record['loss']:.4f}")
    rate = record.get("samples_per_s")
    if isinstance(rate, (int, float)):
        parts.append(f"{rate:.1f} samples/s")
    if isinstance(record.get("data_wait_fraction"), (int, float)):
        parts.append(f"data-wait {100 * record['data_wait_fraction']:.1f}%")
    step_s = record.get("step_s")
    if total and isinstance(step, int) and isinstance(step_s, (int, float)):
        parts.append(f"ETA {_clock(max(0, total - step) * step_s)}")
    return "  ".join(parts)


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class ProgressLine:
    """The driver's side: a thread that polls the board and redraws one line on `stream`.

    On a terminal the line is redrawn in place (``\\r``); otherwise (a log, a captured test) a
    new line is written when the step changed, at most every PLAIN_EVERY_S, plus the last one.
    """

    def __init__(self, board, stream: TextIO = sys.stdout) -> None:
        self.board, self.stream = board, stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="viewstream-progress", daemon=True)
        self._shown_step: Any = None
        self._shown_at = 0.0
        self.lines_written = 0

    def __enter__(self) -> "ProgressLine":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._poll(final=True)
        if self.tty and self.lines_written:
            self.stream.write("\n")
            self.stream.flush()

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            self._poll()

    def _poll(self, final: bool = False) -> None:
        import ray

        try:
            record = ray.get(self.board.latest.remote(), timeout=10)
        except Exception:  # the board is gone or busy: try again next time
            return
        if not record or record.get("step") == self._shown_step:
            return
        now = time.monotonic()
        if not self.tty and not final and now - self._shown_at < PLAIN_EVERY_S and self._shown_step is not None:
            return
        line = format_progress(record)
        if self.tty:
            self.stream.write("\r\x1b[2K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self._shown_step, self._shown_at = record.get("step"), now
        self.lines_written += 1
