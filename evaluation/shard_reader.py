"""The pipeline's eval view of one shard: `ViewBatch`-like batches of a single shard, in tar order.

`ViewLoader` plans an epoch over a whole dataset (it reads the dataset's index and shuffles);
batch inference wants the opposite unit of work, one shard, so that a finished shard is one
output file and a rerun can skip it. This reader is built from the loader's own pieces, so the
pixels are the loader's: `samples.read_samples` (checks, one tar stream), `producer.BatchProducer`
(read-ahead thread, `params.draw_batch` with the eval recipe: first good photo, centre crop, no
randomness), `dali_graph` (the same DALI graph, CPU or mixed) and `recovery.recheck_batch` (a
photo DALI chokes on is dropped, not fatal). One reader keeps its DALI pipeline across shards.
"""
from __future__ import annotations

import logging
from collections import deque
from typing import Iterator, Optional

import numpy as np
import pyarrow as pa
import torch

from pipeline.batch import ViewBatch
from pipeline.dali_graph import build_view_pipeline, feed_arrays
from pipeline.loader import dali_to_torch  # the one DALI -> torch hand-over (GPU: DLPack)
from pipeline.epochs import DataPosition, RankEpoch, batch_sizes
from pipeline.params import pick_photos
from pipeline.producer import BatchProducer, PreparedBatch
from pipeline.recovery import recheck_batch
from pipeline.samples import ReadStats, SampleRef, read_samples
from pipeline.spec import ViewSpec
from sharding.dataset import shard_uri
from sharding.storage import Storage

log = logging.getLogger(__name__)


class ShardReader:
    """Eval batches of one shard at a time (`iter_shard`), on `device` ("cpu" or "cuda")."""

    def __init__(self, spec: ViewSpec, batch_size: int, *, device: str = "cpu", num_threads: int = 2,
                 prefetch: int = 2, storage: Optional[Storage] = None, device_id: int = 0):
        self.spec, self.batch_size, self.device = spec, batch_size, device
        self.num_threads, self.prefetch, self.device_id = num_threads, prefetch, device_id
        self.storage = storage or Storage()
        self.stats = ReadStats()
        self._pipe = None
        self._producer: Optional[BatchProducer] = None
        self._pending: deque[PreparedBatch] = deque()
        self._replay: deque[PreparedBatch] = deque()

    def iter_shard(self, root: str, shard: str, rows: pa.Table,
                   labels: Optional[np.ndarray] = None) -> Iterator[ViewBatch]:
        """Batches of the samples of `rows` (the shard's index rows, tar order).

        `labels` (int64 per row, -1 = none) become the batches' labels; None: no labels.
        """
        keys = rows.column("key").to_pylist()
        groups = rows.column("group_id").to_pylist()
        exts = [tuple(e) for e in rows.column("view_exts").to_pylist()]
        n = len(keys)
        if n == 0:
            return
        order = np.arange(n, dtype=np.int64)
        sizes = batch_sizes(n, -(-n // self.batch_size), self.batch_size)
        plan = RankEpoch(stream_rows=order, stream_shards=np.zeros(n, dtype=np.int32),
                         stream_positions=order.astype(np.int32), rows=order, sizes=sizes,
                         block=self.batch_size, epoch=0)
        uri = shard_uri(root, shard)
        label_of = (lambda i: int(labels[i])) if labels is not None else (lambda i: -1)
        # One run: the whole shard in tar order. The eval recipe draws one global view, the
        # group's first good photo, so the pair uniforms (u) play no part.
        run = lambda lo: [SampleRef(i, shard, keys[i], exts[i], uri, groups[i], label_of(i), i)
                          for i in range(lo, n)]
        num_global = self.spec.num_global
        read = lambda start: read_samples(self.storage, [lambda: run(start)], self.stats,
                                          pick=lambda ref, c: pick_photos(num_global, ref.u, c))
        self._producer = BatchProducer(plan, 0, self.spec, seed=0, epoch=0, read=read,
                                       feed=feed_arrays, stats=self.stats, depth=self.prefetch + 2)
        self._pending, self._replay = deque(), deque()
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
                    self._pending.popleft()
                item = self._pending.popleft()
                yield self._batch(item, outputs, keys, groups, labels)
            pipe.reset()
            finished = True
        finally:
            self._producer.close()
            self._producer = None
            if not finished:
                self._pipe = None

    def _batch(self, item: PreparedBatch, outputs, keys, groups, labels) -> ViewBatch:
        views = [dali_to_torch(out, self.device) for out in outputs]
        rows = np.asarray(item.rows, dtype=np.int64)
        return ViewBatch(views=views, keys=[keys[r] for r in item.rows],
                         group_ids=[groups[r] for r in item.rows],
                         labels=None if labels is None else torch.from_numpy(labels[rows]),
                         label_vocabulary=[], view_sources=torch.from_numpy(item.view_sources),
                         rows=torch.from_numpy(rows), epoch=0, batch=item.batch,
                         position=DataPosition(0, item.batch + 1))

    def _next_feed(self) -> tuple:
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

    def _recover(self) -> bool:
        rechecked = [recheck_batch(item, self.spec, self.stats) for item in self._pending]
        if not any(dropped for _, dropped in rechecked):
            return False
        log.warning("DALI aborted a batch; dropped the undecodable samples and rebuilt the pipeline")
        self._replay = deque(item for item, _ in rechecked)
        self._pending = deque()
        self._pipe = None
        return True

    def _pipeline(self):
        if self._pipe is None:
            self._pipe = build_view_pipeline(self.spec, self._next_feed, device=self.device,
                                             batch_size=self.batch_size, num_threads=self.num_threads,
                                             prefetch=self.prefetch, device_id=self.device_id)
        return self._pipe
