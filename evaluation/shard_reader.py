"""The pipeline's eval view of one shard: `ViewBatch`-like batches of a single shard, in tar order.

`ViewLoader` plans an epoch over a whole dataset (it reads the dataset's index and shuffles);
batch inference wants the opposite unit of work, one shard, so that a finished shard is one
output file and a rerun can skip it. This reader is built from the loader's own pieces, so the
pixels are the loader's: `samples.read_samples` (checks, one tar stream), `producer.BatchProducer`
(read-ahead thread, `params.draw_batch` with the eval recipe: first good photo, centre crop, no
randomness) and `dali_driver.DaliDriver` (the loader's own DALI loop, CPU or mixed, with its
recovery: a photo DALI chokes on is dropped, not fatal). One reader keeps its DALI pipeline
across shards.
"""
from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
import pyarrow as pa
import torch

from pipeline.batch import ViewBatch
from pipeline.dali_driver import DaliDriver
from pipeline.dali_graph import feed_arrays
from pipeline.loader import dali_to_torch  # the one DALI -> torch hand-over (GPU: DLPack)
from pipeline.epochs import DataPosition, RankEpoch, batch_sizes
from pipeline.params import pick_photos
from pipeline.producer import BatchProducer, PreparedBatch
from pipeline.samples import ReadStats, SampleRef, read_samples
from pipeline.spec import ViewSpec
from sharding.dataset import shard_uri
from groundfloor.storage import Storage


class ShardReader:
    """Eval batches of one shard at a time (`iter_shard`), on `device` ("cpu" or "cuda")."""

    def __init__(self, spec: ViewSpec, batch_size: int, *, device: str = "cpu", num_threads: int = 2,
                 prefetch: int = 2, storage: Optional[Storage] = None, device_id: int = 0):
        self.spec, self.batch_size, self.device = spec, batch_size, device
        self.num_threads, self.prefetch, self.device_id = num_threads, prefetch, device_id
        self.storage = storage or Storage()
        self.stats = ReadStats()
        self._driver = DaliDriver(spec, self.stats, device=device, batch_size=batch_size,
                                  num_threads=num_threads, prefetch=prefetch, device_id=device_id)

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
        producer = BatchProducer(plan, 0, self.spec, seed=0, epoch=0, read=read,
                                 feed=feed_arrays, stats=self.stats, depth=self.prefetch + 2,
                                 fill_holes=False)  # an embeddings row per readable sample, once
        convert = lambda item, outputs: (None if outputs is None  # noqa: E731
                                          else self._batch(item, outputs, keys, groups, labels))
        for batch in self._driver.run(producer, convert):
            if batch is not None:  # None: every sample of the batch was bad (counted in stats)
                yield batch

    def _batch(self, item: PreparedBatch, outputs, keys, groups, labels) -> ViewBatch:
        views = [dali_to_torch(out, self.device) for out in outputs]
        rows = np.asarray(item.rows, dtype=np.int64)
        return ViewBatch(views=views, keys=[keys[r] for r in item.rows],
                         group_ids=[groups[r] for r in item.rows],
                         labels=None if labels is None else torch.from_numpy(labels[rows]),
                         label_vocabulary=[], view_sources=torch.from_numpy(item.view_sources),
                         rows=torch.from_numpy(rows), epoch=0, batch=item.batch,
                         position=DataPosition(0, item.batch + 1))
