"""Drive the DALI view graph over a `BatchProducer`'s prepared batches, surviving decode aborts.

The one loop that both the training loader (`pipeline.loader.ViewLoader`) and the per-shard
embedding reader (`evaluation.shard_reader.ShardReader`) run: a pipeline's DALI source callback
pulls the next non-empty prepared batch when ``pipe.schedule_run()`` asks for one,
``pipe.outputs()`` returns its views, and each prepared batch is handed back in order with its
DALI outputs (None for an empty batch, which DALI never sees). When DALI
still aborts on a photo the pre-checks let through, the batches in flight are re-checked, the
undecodable samples dropped, the pipeline rebuilt and the batches replayed (`pipeline.recovery`).
The pipelines are kept across epochs (or shards) and rebuilt only after an abort or an iterator
closed early, since DALI then holds batches of the old stream.

The loop runs in a thread of its own, one batch ahead of the consumer (`pipeline.run_ahead`):
scheduling and taking a batch spends ~2-3 ms of the calling thread, which the training step
would otherwise wait for. While a `run` is open only that thread uses the pipelines (they are
built there too), and a later `run` starts after the earlier one's thread has ended: one thread
at a time. ``schedule_run``/``outputs`` are what ``pipe.run()`` calls, in that order (the
installed DALI 2.4 ``Pipeline.run``), split so that several pipelines can be fed in turn.
On a GPU (argued from the DALI sources, not run here): the pipeline's dynamic executor
(``exec_dynamic``; dali/pipeline/executor/executor2/exec2.cc, ``Executor2::Impl``) builds under
a ``DeviceGuard`` for the pipeline's ``device_id`` and runs the graph on its own worker threads,
so the calling thread needs no CUDA state of its own; its ``PopOutputs`` waits on the
iteration's CUDA event on the host (``cudaEventSynchronize``) before ``pipe.outputs()`` returns,
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


def default_pipelines(device: str, num_threads: int) -> int:
    """On the CPU, one single-threaded pipeline per DALI thread (measured on a 2-core box,
    224 px two-view: 2 x 1 thread 286 samples/s vs 1 x 2 threads 261); on a GPU, one: there the
    decode and augmentations run on the device, and every pipeline holds GPU buffers of its own
    (not measured on a GPU)."""
    return num_threads if device == "cpu" else 1


class DaliDriver:
    """`pipelines` DALI view pipelines, fed in turn by one producer at a time (`run`); the
    `num_threads` DALI threads are split among them (at least one each).

    With more than one, each pipeline's source callback pulls the producer's next batch when that
    pipeline schedules an iteration, and outputs are taken from the pipeline holding the oldest
    batch pulled: batches come back in the producer's order, while every pipeline keeps its
    `prefetch` batches in flight. Why several: a pipeline runs its graph operator by operator,
    each over the whole batch on its thread pool, and its threads idle at every operator's end;
    independent pipelines fill each other's gaps on the CPU.
    """

    def __init__(self, spec: ViewSpec, stats: ReadStats, *, device: str, batch_size: int,
                 num_threads: int, prefetch: int, device_id: int,
                 pipelines: Optional[int] = None) -> None:
        pipelines = default_pipelines(device, num_threads) if pipelines is None else pipelines
        if pipelines < 1:
            raise ValueError(f"pipelines={pipelines}: expected an integer >= 1")
        self.spec, self.stats = spec, stats
        self._build = dict(device=device, batch_size=batch_size,
                           num_threads=max(1, num_threads // pipelines), prefetch=prefetch, device_id=device_id)
        self.pipelines = pipelines
        self._pipes: Optional[list] = None
        self._producer: Optional[BatchProducer] = None
        self._pulled = 0  # batches pulled from the producer in this run: their order
        self._fifos: list[deque[tuple[int, list[PreparedBatch]]]] = []  # per pipeline: pulled, not handed back
        self._tail: list[PreparedBatch] = []  # empty batches after the last full one
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
        self._producer, self._replay = producer, deque()
        finished = False
        try:
            pipes = self._start()
            while True:
                waiting = [i for i, fifo in enumerate(self._fifos) if fifo]
                if not waiting:
                    break
                i = min(waiting, key=lambda i: self._fifos[i][0][0])  # the oldest batch pulled
                try:
                    pipes[i].schedule_run()  # pulls the next batch, if any (as pipe.run() does, first)
                    outputs = pipes[i].outputs()  # the oldest batch of pipeline i: its FIFO's head
                except Exception:
                    if not self._recover():
                        raise
                    pipes = self._start()
                    continue
                *empties, item = self._fifos[i].popleft()[1]
                for empty in empties:
                    yield empty, None
                yield item, outputs
            for pipe in pipes:
                pipe.reset()
            for empty in self._tail:  # empty batches after the last full one
                yield empty, None
            finished = True
        finally:
            producer.close()
            self._producer = None
            if not finished:  # DALI has batches of this stream in flight: start afresh next time
                self._pipes = None

    def _start(self) -> list:
        """The pipelines (built if needed), each with its first `prefetch` batches scheduled."""
        if self._pipes is None:
            self._pipes = [build_view_pipeline(self.spec, self._source(i), **self._build)
                           for i in range(self.pipelines)]
        self._pulled, self._fifos, self._tail = 0, [deque() for _ in self._pipes], []
        for pipe in self._pipes:
            pipe.schedule_run()
        return self._pipes

    def _recover(self) -> bool:
        """After DALI aborted: drop undecodable samples from the batches in flight and replay
        them, in order, on fresh pipelines. False when no photo is to blame (the error is re-raised)."""
        seed, epoch = self._producer.seed, self._producer.epoch
        fill = self._producer.fill_holes
        in_flight = sorted((entry for fifo in self._fifos for entry in fifo), key=lambda entry: entry[0])
        pending = [item for _, items in in_flight for item in items] + self._tail
        rechecked = [recheck_batch(item, self.spec, self.stats, seed, epoch, fill) for item in pending]
        if not any(dropped for _, dropped in rechecked):
            return False
        log.warning("DALI aborted a batch; dropped the undecodable samples and rebuilt the pipeline")
        self._replay = deque(item for item, _ in rechecked)
        self._pipes = None
        return True

    def _source(self, index: int) -> Callable[[], tuple]:
        """Pipeline `index`'s DALI source callback: the next non-empty batch (the empty ones
        before it are kept with it, to be handed back in order)."""
        def next_feed() -> tuple:
            items: list[PreparedBatch] = []
            while True:
                if self._replay:
                    item = self._replay.popleft()
                else:
                    item = self._producer.get() if self._producer else None
                if item is None:
                    self._tail.extend(items)
                    raise StopIteration
                items.append(item)
                if item.feed is not None:
                    self._fifos[index].append((self._pulled, items))
                    self._pulled += 1
                    return item.feed
        return next_feed
