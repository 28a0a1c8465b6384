"""Drive the DALI view graph over a `BatchProducer`'s prepared batches, surviving decode aborts.

The one loop that both the training loader (`pipeline.loader.ViewLoader`) and the per-shard
embedding reader (`evaluation.shard_reader.ShardReader`) run: the DALI source callback pulls the
next non-empty prepared batch, `pipe.run()` makes its views, and each prepared batch is handed
back in order with its DALI outputs (None for an empty batch, which DALI never sees). When DALI
still aborts on a photo the pre-checks let through, the batches in flight are re-checked, the
undecodable samples dropped, the pipeline rebuilt and the batches replayed (`pipeline.recovery`).
The pipeline is kept across epochs (or shards) and rebuilt only after an abort or an iterator
closed early, since DALI then holds batches of the old stream.

The loop runs in a thread of its own, one batch ahead of the consumer (`pipeline.run_ahead`):
``pipe.run()`` spends ~2-3 ms of its calling thread per batch, which the training step would
otherwise wait for. While a `run` is open only that thread uses the pipeline (it is built there
too), and a later `run` starts after the earlier one's thread has ended: one thread at a time.
On a GPU (argued from the DALI sources, not run here): the pipeline's dynamic executor
(``exec_dynamic``; dali/pipeline/executor/executor2/exec2.cc, ``Executor2::Impl``) builds under
a ``DeviceGuard`` for the pipeline's ``device_id`` and runs the graph on its own worker threads,
so the calling thread needs no CUDA state of its own; its ``PopOutputs`` waits on the
iteration's CUDA event on the host (``cudaEventSynchronize``) before ``pipe.run()`` returns,
a wait that now falls on this thread instead of the training step. No torch call is made in
this thread: outputs become tensors in the consumer's thread (`run`'s `convert`).
"""
from __future__ import annotations

import logging
from collections import deque
from typing import Callable, Iterator, Optional, TypeVar

from pipeline.dali_graph import build_view_pipeline
from pipeline.producer import BatchProducer, PreparedBatch
from pipeline.recovery import recheck_batch
from pipeline.run_ahead import run_ahead
from pipeline.samples import ReadStats
from pipeline.spec import ViewSpec

log = logging.getLogger(__name__)
T = TypeVar("T")


class DaliDriver:
    """One DALI view pipeline, fed by one producer at a time (`run`)."""

    def __init__(self, spec: ViewSpec, stats: ReadStats, *, device: str, batch_size: int,
                 num_threads: int, prefetch: int, device_id: int) -> None:
        self.spec, self.stats = spec, stats
        self._build = dict(device=device, batch_size=batch_size, num_threads=num_threads,
                           prefetch=prefetch, device_id=device_id)
        self._pipe = None
        self._producer: Optional[BatchProducer] = None
        self._pending: deque[PreparedBatch] = deque()  # fed to DALI, not yet handed back
        self._replay: deque[PreparedBatch] = deque()   # to feed again after a DALI abort

    @property
    def busy(self) -> bool:
        """True while a `run` iterator is open (one producer at a time)."""
        return self._producer is not None

    def run(self, producer: BatchProducer, convert: Callable[[PreparedBatch, Optional[list]], T]) -> Iterator[T]:
        """`convert(item, outputs)` for every prepared batch of `producer`, in order (outputs None:
        an empty batch, which DALI never sees).

        ``pipe.run()`` runs in a background thread one batch ahead; `convert` runs in the
        caller's thread (where torch's current CUDA stream is the one the batch is used on,
        `pipeline.loader.dali_to_torch`) before the next batch is made.
        """
        if self._producer is not None:
            raise RuntimeError("DaliDriver.run: another run is still open")
        return run_ahead(lambda: self._run(producer), lambda pair: convert(*pair), name="viewstream-dali")

    def _run(self, producer: BatchProducer) -> Iterator[tuple[PreparedBatch, Optional[list]]]:
        self._producer, self._pending, self._replay = producer, deque(), deque()
        finished = False
        try:
            pipe = self._pipeline()
            while True:
                try:
                    outputs = pipe.run()
                except StopIteration:
                    break
                except Exception:
                    if not self._recover():
                        raise
                    pipe = self._pipeline()
                    continue
                while self._pending[0].feed is None:
                    yield self._pending.popleft(), None
                yield self._pending.popleft(), outputs
            pipe.reset()
            while self._pending:  # empty batches after the last full one
                yield self._pending.popleft(), None
            finished = True
        finally:
            producer.close()
            self._producer = None
            if not finished:  # DALI has batches of this stream in flight: start afresh next time
                self._pipe = None

    def _recover(self) -> bool:
        """After DALI aborted: drop undecodable samples from the batches in flight and replay
        them on a fresh pipeline. False when no photo is to blame (the error is re-raised)."""
        seed, epoch = self._producer.seed, self._producer.epoch
        fill = self._producer.fill_holes
        rechecked = [recheck_batch(item, self.spec, self.stats, seed, epoch, fill) for item in self._pending]
        if not any(dropped for _, dropped in rechecked):
            return False
        log.warning("DALI aborted a batch; dropped the undecodable samples and rebuilt the pipeline")
        self._replay = deque(item for item, _ in rechecked)
        self._pending = deque()
        self._pipe = None
        return True

    def _next_feed(self) -> tuple:
        """The DALI source callback: the next non-empty batch (empty ones are only noted)."""
        while True:
            if self._replay:
                item = self._replay.popleft()
            else:
                item = self._producer.get() if self._producer else None
            if item is None:
                raise StopIteration
            self._pending.append(item)
            if item.feed is not None:
                return item.feed

    def _pipeline(self):
        if self._pipe is None:
            self._pipe = build_view_pipeline(self.spec, self._next_feed, **self._build)
        return self._pipe
