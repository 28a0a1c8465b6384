"""The background half of a loader: read, check and draw one rank's batches ahead of DALI.

A thread walks the rank's stream order (`RankEpoch.stream_rows`), reads each block of
samples from the shards, and turns every batch of the consumption order into DALI inputs
(encoded photos + drawn parameters) plus the batch's metadata. The DALI callback only takes
ready batches from a small queue, so reading, hashing and drawing overlap DALI's work.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import numpy as np

from pipeline.epochs import RankEpoch
from pipeline.params import draw_batch
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


class BatchProducer:
    """Prepares batches `start_batch..` of `plan` on a daemon thread, `depth` batches ahead."""

    def __init__(self, plan: RankEpoch, start_batch: int, spec: ViewSpec, *, seed: int, epoch: int,
                 refs: Callable[[np.ndarray], list[SampleRef]],
                 read: Callable[[list[SampleRef]], Iterator[tuple[SampleRef, Optional[LoadedSample]]]],
                 feed: Callable[..., tuple], stats: ReadStats, depth: int = 4):
        self._plan, self._start, self._spec = plan, start_batch, spec
        self._seed, self._epoch = seed, epoch
        self._refs, self._read, self._feed = refs, read, feed
        self._stats = stats
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="viewstream-producer", daemon=True)
        self._thread.start()

    def get(self):
        """The next PreparedBatch, or None at the end; re-raises a reading failure here."""
        item = self._queue.get()
        if item is _END:
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        """Stop the thread (it may be blocked on a full queue: drain it)."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for prepared in self._batches():
                if not self._put(prepared):
                    return
            self._put(_END)
        except BaseException as err:  # handed to the consumer, which raises it
            self._put(err)

    def _batches(self) -> Iterator[PreparedBatch]:
        plan, block = self._plan, self._plan.block
        num_batches = len(plan.sizes)
        if self._start >= num_batches:
            return
        first_pos = plan.bounds(self._start)[0]
        first_block = first_pos // block
        stream = self._read(self._refs(plan.stream_rows[first_block * block:]))
        loaded: dict[int, Optional[LoadedSample]] = {}
        read_upto = first_block * block  # stream positions [.., read_upto) are in `loaded`
        for b in range(self._start, num_batches):
            lo, hi = plan.bounds(b)
            need_upto = min(len(plan.rows), -(-hi // block) * block) if hi > lo else read_upto
            while read_upto < need_upto:
                ref, sample = next(stream)
                loaded[ref.row] = sample
                read_upto += 1
            rows = [int(r) for r in plan.rows[lo:hi]]
            yield self._prepare(b, rows, loaded)
            for r in rows:
                loaded.pop(r, None)
            if self._stop.is_set():
                return

    def _prepare(self, b: int, rows: list[int], loaded: dict) -> PreparedBatch:
        samples = [loaded[r] for r in rows if loaded.get(r) is not None]
        num_views = len(self._spec.views)
        if not samples:
            return PreparedBatch(b, [], np.zeros((0, num_views), np.int64), None)
        draws = draw_batch(self._spec, self._seed, self._epoch, [s.row for s in samples],
                           [s.sizes for s in samples])
        enc_a, enc_b = [], []
        for sample, draw in zip(samples, draws):
            a = np.frombuffer(sample.photos[draw.photo_a], dtype=np.uint8)
            enc_a.append(a)
            enc_b.append(a if draw.photo_b == draw.photo_a else
                         np.frombuffer(sample.photos[draw.photo_b], dtype=np.uint8))
        same = np.array([d.photo_a == d.photo_b for d in draws])
        params = np.stack([d.params for d in draws])
        return PreparedBatch(b, [s.row for s in samples], params[:, :, 0].astype(np.int64),
                             self._feed(self._spec, enc_a, enc_b, same, params))
