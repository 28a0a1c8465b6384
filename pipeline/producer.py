"""The background half of a loader: read, check and draw one rank's batches ahead of DALI.

Two daemon threads per epoch: a *reader* streams the rank's shards in stream order
(`RankEpoch.stream_rows`) and hands over complete shuffle blocks (one block queued while the
next is being read, so S3 latency overlaps the work on the previous block); a *preparer* turns
each batch of the consumption order into DALI inputs (encoded photos + drawn parameters) plus
the batch's metadata. The DALI callback only takes ready batches from a small queue.

Every rank's batch keeps its planned size whatever is skipped: a sample that fails its checks
leaves a hole that `params.fill_sources` fills by repeating another good sample of the same
batch (as DALI's readers pad a shard with `pad_last_batch`); a batch with no good sample at all
repeats the last good sample this rank prepared. See ARCHITECTURE.md section 2.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import numpy as np

from pipeline.epochs import RankEpoch
from pipeline.params import draw_batch, fill_sources
from pipeline.samples import LoadedSample, ReadStats, SampleRef
from pipeline.spec import ViewSpec

_END = object()


@dataclass
class PreparedBatch:
    """A batch ready for DALI: metadata and the external source's arrays (None when empty)."""

    batch: int
    rows: list[int]
    view_sources: np.ndarray  # [b, num_views] int64
    feed: Optional[tuple]
    keys: list[str] = field(default_factory=list)
    group_ids: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)


class _Handoff:
    """A bounded queue between two threads that gives up when `stop` is set (no deadlock)."""

    def __init__(self, depth: int, stop: threading.Event):
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = stop

    def put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def get(self):
        """The next item; _END at the end; re-raises an exception the other side handed over."""
        while True:
            try:
                item = self.queue.get(timeout=0.1)
            except queue.Empty:
                if self.stop.is_set():
                    return _END
                continue
            if isinstance(item, BaseException):
                raise item
            return item

    def drain(self) -> None:
        while True:
            try:
                self.queue.get_nowait()
            except queue.Empty:
                return


class BatchProducer:
    """Prepares batches `start_batch..` of `plan`, `depth` batches ahead of the consumer.

    `then`, if given, runs in the preparer thread after the last batch is queued and before the
    end is signalled, unless the producer was closed: a consumer that sees the end knows it ran.
    """

    def __init__(self, plan: RankEpoch, start_batch: int, spec: ViewSpec, *, seed: int, epoch: int,
                 read: Callable[[int], Iterator[tuple[SampleRef, Optional[LoadedSample]]]],
                 feed: Callable[..., tuple], stats: ReadStats, depth: int = 4, fill_holes: bool = True,
                 then: Optional[Callable[[], None]] = None):
        self._plan, self._start, self._spec = plan, start_batch, spec
        self._then = then  # called once the last batch is prepared (the next epoch's read-ahead)
        self.fill_holes = fill_holes  # training: keep batch sizes; evaluation: every sample once
        self._seed, self._epoch = seed, epoch
        self._read, self._feed = read, feed
        self._stats = stats
        self._reserve: Optional[LoadedSample] = None  # the last good sample: fills a batch lost whole
        self._stop = threading.Event()
        self._ended = False
        self._batches_out = _Handoff(depth, self._stop)
        self._blocks = _Handoff(1, self._stop)
        num_batches = len(plan.sizes)
        self._first_block = (plan.bounds(start_batch)[0] // plan.block
                             if start_batch < num_batches else 0)
        self._threads = [
            threading.Thread(target=self._guard, args=(self._read_blocks, self._blocks),
                             name="viewstream-reader", daemon=True),
            threading.Thread(target=self._guard, args=(self._prepare_batches, self._batches_out),
                             name="viewstream-preparer", daemon=True),
        ]
        if start_batch >= num_batches:
            self._threads = self._threads[1:]  # nothing to read
        for thread in self._threads:
            thread.start()

    @property
    def seed(self) -> int:
        return self._seed

    @property
    def epoch(self) -> int:
        return self._epoch

    def get(self) -> Optional[PreparedBatch]:
        """The next PreparedBatch, or None at the end (and ever after); re-raises a reading
        failure here."""
        if self._ended:
            return None
        item = self._batches_out.get()
        if item is _END:
            self._ended = True
            return None
        return item

    def close(self) -> None:
        """Stop both threads (they may be blocked on full queues: drain them)."""
        self._stop.set()
        for thread in self._threads:
            while thread.is_alive():
                self._batches_out.drain()
                self._blocks.drain()
                thread.join(timeout=0.05)

    @staticmethod
    def _guard(work: Callable[[], None], out: _Handoff) -> None:
        try:
            work()
            out.put(_END)
        except BaseException as err:  # handed to the consumer, which raises it
            out.put(err)

    def _read_blocks(self) -> None:
        """Read the stream from the first needed block on; hand over each block when complete.

        Within a shard, samples arrive in tar order, so a block is complete when all its rows
        have arrived, not after a fixed count.
        """
        plan, block = self._plan, self._plan.block
        start = self._first_block * block
        counts = np.bincount(np.arange(start, len(plan.stream_rows)) // block)
        missing = {k: int(c) for k, c in enumerate(counts.tolist()) if k >= self._first_block}
        partial: dict[int, dict[int, Optional[LoadedSample]]] = {}
        next_block = self._first_block
        for ref, sample in self._read(start):
            k = ref.index // block
            partial.setdefault(k, {})[ref.row] = sample
            missing[k] -= 1
            while next_block in missing and missing[next_block] == 0:
                if not self._blocks.put(partial.pop(next_block, {})):
                    return
                next_block += 1
            if self._stop.is_set():
                return

    def _prepare_batches(self) -> None:
        plan, block = self._plan, self._plan.block
        loaded: dict[int, Optional[LoadedSample]] = {}
        blocks_in = self._first_block  # blocks [.., blocks_in) are in `loaded`
        for b in range(self._start, len(plan.sizes)):
            lo, hi = plan.bounds(b)
            if hi > lo:
                while blocks_in <= (hi - 1) // block:
                    got = self._blocks.get()
                    if got is _END:
                        raise RuntimeError(f"shard reader ended before block {blocks_in}")
                    loaded.update(got)
                    blocks_in += 1
            rows = [int(r) for r in plan.rows[lo:hi]]
            if not self._batches_out.put(self._prepare(b, rows, loaded)):
                return
            for r in rows:
                loaded.pop(r, None)
        if self._then is not None and not self._stop.is_set():
            self._then()

    def _prepare(self, b: int, rows: list[int], loaded: dict) -> PreparedBatch:
        got = [loaded.get(r) for r in rows]
        ok = [s is not None for s in got]
        if self.fill_holes and got and not any(ok) and self._reserve is not None:
            got, ok = [self._reserve] * len(rows), [True] * len(rows)  # a whole batch lost
        order = fill_sources(self._seed, self._epoch, rows, ok) if self.fill_holes else range(len(rows))
        samples = [got[i] for i in order if got[i] is not None]
        self._stats.add(filled=len(samples) - sum(ok))
        num_views = len(self._spec.views)
        if not samples:
            return PreparedBatch(b, [], np.zeros((0, num_views), np.int64), None)
        self._reserve = samples[-1]
        meta = ([s.key for s in samples], [s.group_id for s in samples], [s.label for s in samples])
        draws = draw_batch(self._spec, self._seed, self._epoch, [s.row for s in samples],
                           [s.sizes for s in samples], [s.candidates for s in samples])
        enc_a, enc_b = [], []
        for sample, draw in zip(samples, draws):
            a = np.frombuffer(sample.photos[draw.photo_a], dtype=np.uint8)
            enc_a.append(a)
            enc_b.append(a if draw.photo_b == draw.photo_a else
                         np.frombuffer(sample.photos[draw.photo_b], dtype=np.uint8))
        same = np.array([d.photo_a == d.photo_b for d in draws])
        params = np.stack([d.params for d in draws])
        more = [[np.frombuffer(sample.photos[draw.photos[g]], dtype=np.uint8) for sample, draw in zip(samples, draws)]
                for g in range(2, self._spec.num_global)]  # global views >= 2 read photos of their own
        feed = self._feed(self._spec, enc_a, enc_b, same, params, enc_more=more)
        return PreparedBatch(b, [s.row for s in samples], params[:, :, 0].astype(np.int64), feed, *meta)
