"""`ViewLoader`: one rank's stream of `ViewBatch`es from a dataset folder or s3:// prefix.

It composes the parts: the exact epoch plan (`epochs`), a background producer that reads,
checks and draws ahead (`producer`, `samples`, `params`), and the DALI graph (`dali_graph`).
Resuming is `iter_epoch(position.epoch, position.batch)`: the plan, the photos and every
random number are functions of (seed, epoch, sample), so the batches are bit-identical to an
uninterrupted run.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Iterator, Optional

import numpy as np
import pyarrow.compute as pc
import torch

from sharding.dataset import read_index_part, shard_uri
from groundfloor.storage import Storage
from pipeline.batch import ViewBatch
from pipeline.dali_driver import DaliDriver
from pipeline.dali_graph import feed_arrays
from pipeline.epochs import DataPosition, RankEpoch, batches_per_epoch, check_arguments, plan_rank_epoch
from pipeline.producer import BatchProducer, PreparedBatch
from pipeline.params import pick_photos, pick_uniforms
from pipeline.roots import load_mixture
from pipeline.samples import ReadStats, SampleRef, read_samples
from pipeline.spec import ViewSpec
from groundfloor.errors import UsageError

DEVICES = ("cpu", "cuda")
VERIFY = ("sha256", "none")
S3_STREAMS = 6  # shard streams in flight per rank on S3: hides ~20-30 ms first-byte latency
LOCAL_STREAMS = 1  # local disk: one stream is fastest (more only contend for the GIL)


class ViewLoader:
    """Batches of views for one rank of a data-parallel run (see ARCHITECTURE.md section 2).

    `dataset` is a dataset root (folder or s3:// prefix, `endpoint_url` for non-AWS S3) or a
    list of roots read as one, each optionally ``{"root": ..., "repeat" | "choose" |
    "proportion": ...}`` (`pipeline.roots`; `epoch_size` for proportions).
    `device` "cpu" runs DALI without a GPU; "cuda" decodes on the GPU (nvJPEG, ``mixed``).
    `num_threads` DALI threads in all, split among `pipelines` DALI pipelines fed in turn
    (default: one single-threaded pipeline per thread on the CPU, one on a GPU:
    `pipeline.dali_driver`); the batches do not depend on either.
    `batch_size` is per rank; the global batch (batch_size x world_size) is what the plan
    shuffles and cuts, so global batches do not depend on world_size (`pipeline.epochs`).
    `shuffle_block` is the global block of stream positions shuffled together (rounded up to
    whole global batches); a rank holds about two blocks' share of it (block / world_size).
    `drop_last=True` (SSL training): every rank yields N // (world_size * batch_size) full
    batches. `drop_last=False`: every sample exactly once per epoch, the same number of batches
    on every rank, only the last global batch short (split evenly; empty on some ranks).
    A skipped sample (unreadable, undecodable) leaves a hole filled by repeating a good sample of
    the same batch, so batches keep their planned size (`stats` counts skips and fills);
    `fill_holes=False` (evaluation: every sample at most once) lets the batch shrink. One `iter_epoch`
    iterator may be open at a time. `streams` shard streams are read at once (default: 6 when
    a root is on S3, else 1); `verify`
    "sha256" checks every photo against its recorded digest, "none" skips that.
    `natural_views=False` makes every photo its own sample (the usual single-image SSL setting,
    to compare with natural views on the same data): the plan counts photos per shard, each
    epoch sees every photo once, and both views are augmentations of that one photo.
    `read_ahead=True` (training, which goes on from one epoch to the next): once the last batch
    of an epoch is prepared, the next epoch's reading and preparing starts in the background, so
    `iter_epoch(epoch + 1)` finds its first batches ready instead of waiting for the first shuffle
    block to be read (held until a call with other arguments or `close()`; its memory, one block's
    share and `prefetch + 2` batches, overlaps only the epoch's last batches). Evaluation leaves
    it off: it reads one epoch.

    Construction reads only shard-level metadata (manifest.json, shards.parquet); the index
    part of a shard is read when this rank reads that shard (memory O(shards + own samples)).
    """

    def __init__(self, dataset, spec: ViewSpec, batch_size: int, *, rank: int = 0,
                 world_size: int = 1, seed: int = 0, device: str = "cpu", num_threads: int = 2,
                 drop_last: bool = False, shuffle_block: int = 1024, prefetch: int = 2,
                 endpoint_url: Optional[str] = None, device_id: Optional[int] = None,
                 epoch_size: Optional[int] = None, streams: Optional[int] = None,
                 verify: str = "sha256", natural_views: bool = True, fill_holes: bool = True,
                 read_ahead: bool = False, pipelines: Optional[int] = None):
        if device not in DEVICES:
            raise UsageError(f"device={device!r}: expected one of {list(DEVICES)}")
        if num_threads < 1:
            raise UsageError(f"num_threads={num_threads}: expected an integer >= 1")
        if prefetch < 1:
            raise UsageError(f"prefetch={prefetch}: expected an integer >= 1")
        if pipelines is not None and pipelines < 1:
            raise UsageError(f"pipelines={pipelines}: expected an integer >= 1")
        if streams is not None and streams < 1:
            raise UsageError(f"streams={streams}: expected an integer >= 1")
        if verify not in VERIFY:
            raise UsageError(f"verify={verify!r}: expected one of {list(VERIFY)}")
        check_arguments(rank, world_size, batch_size, shuffle_block)
        self.dataset, self.spec, self.batch_size = dataset, spec, batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.device, self.num_threads, self.drop_last = device, num_threads, drop_last
        self.shuffle_block, self.prefetch = shuffle_block, prefetch
        self.verify, self.natural_views = verify, natural_views
        self.fill_holes, self.read_ahead = fill_holes, read_ahead
        self._ahead: Optional[tuple[int, BatchProducer]] = None  # (epoch, its producer from batch 0)
        self._due: Optional[int] = None  # the epoch to start once the parked producer is taken
        self._ahead_lock = threading.Lock()
        self._closed = False
        self.device_id = device_id if device_id is not None else (
            torch.cuda.current_device() if device == "cuda" else 0)
        self.storage = Storage(endpoint_url)
        self.mixture = load_mixture(dataset, self.storage, epoch_size, natural_views)
        if streams is None:
            remote = any(self.storage.local_path(root) is None for root in self.mixture.roots)
            streams = S3_STREAMS if remote else LOCAL_STREAMS
        self.streams = streams
        self.manifest = self.mixture.manifests[0]
        self.label_vocabulary = self.mixture.label_vocabulary
        self._label_number = {l: i for i, l in enumerate(self.label_vocabulary)}
        self.stats = ReadStats()
        self._parts: OrderedDict = OrderedDict()  # recent index parts (see _index_part)
        self._parts_lock = threading.Lock()
        self._driver = DaliDriver(spec, self.stats, device=device, batch_size=batch_size,
                                  num_threads=num_threads, prefetch=prefetch, device_id=self.device_id,
                                  pipelines=pipelines)

    @property
    def num_samples(self) -> int:
        """Samples (photos when `natural_views` is False) per epoch over all roots (with their
        repeat/choose/proportion)."""
        return self.mixture.table.epoch_samples

    @property
    def batches_per_epoch(self) -> int:
        """Batches every rank yields per epoch (equal across ranks and epochs)."""
        return batches_per_epoch(self.num_samples, self.batch_size, self.world_size, self.drop_last)

    def plan(self, epoch: int) -> RankEpoch:
        """This rank's exact plan for `epoch` (item ids, shards, batch sizes); see `pipeline.epochs`."""
        return plan_rank_epoch(self.mixture.table, seed=self.seed, epoch=epoch, rank=self.rank,
                               world_size=self.world_size, batch_size=self.batch_size,
                               drop_last=self.drop_last, shuffle_block=self.shuffle_block)

    def iter_epoch(self, epoch: int, start_batch: int = 0) -> Iterator[ViewBatch]:
        """Batches `start_batch..` of `epoch` for this rank; resuming gives identical batches."""
        if epoch < 0 or not 0 <= start_batch <= self.batches_per_epoch:
            raise UsageError(f"epoch={epoch}, start_batch={start_batch}: expected epoch >= 0 and "
                             f"0 <= start_batch <= {self.batches_per_epoch}")
        if self._driver.busy:
            raise UsageError("another iter_epoch of this ViewLoader is still open; exhaust or "
                             "close() it first (a loader runs one epoch iterator at a time)")
        producer = self._take_ahead(epoch, start_batch) or self._producer(epoch, start_batch, self.read_ahead)
        convert = lambda item, outputs: (self._empty_batch(item, epoch) if outputs is None  # noqa: E731
                                          else self._batch(item, outputs, epoch))
        yield from self._driver.run(producer, convert)

    def prepared_batches(self, epoch: int) -> Iterator[PreparedBatch]:
        """`epoch`'s batches as the DALI graph is fed them (`PreparedBatch.feed`: photos, decode
        windows, drawn parameters; None for an empty batch), without running DALI: what a
        benchmark replays to time the decoding alone."""
        producer = self._producer(epoch, 0, ahead=False)
        try:
            while (item := producer.get()) is not None:
                yield item
        finally:
            producer.close()

    def close(self) -> None:
        """Stop a read-ahead producer (an open `iter_epoch` iterator closes its own)."""
        with self._ahead_lock:
            self._closed, self._due = True, None
            ahead, self._ahead = self._ahead, None
        if ahead is not None:
            ahead[1].close()

    def _producer(self, epoch: int, start_batch: int, ahead: bool) -> BatchProducer:
        """`epoch`'s producer from `start_batch`; with `ahead`, it starts epoch + 1's when done."""
        plan = self.plan(epoch)
        return BatchProducer(plan, start_batch, self.spec, seed=self.seed, epoch=epoch,
                             read=lambda start: self._read(plan, start), feed=feed_arrays,
                             stats=self.stats, depth=self.prefetch + 2, fill_holes=self.fill_holes,
                             then=(lambda: self._start_ahead(epoch + 1)) if ahead else None)

    def _start_ahead(self, epoch: int) -> None:
        """Start `epoch`'s producer from batch 0 for the next `iter_epoch`; called in the preparer
        thread of epoch - 1's producer once its last batch is prepared. When that producer is itself
        still parked here (an epoch shorter than its queue), the start waits until it is taken:
        one epoch ahead, never a chain of them."""
        with self._ahead_lock:
            if self._ahead is not None:
                self._due = epoch
                return
        producer = self._producer(epoch, 0, ahead=True)
        with self._ahead_lock:
            closed = self._closed
            if not closed:
                self._ahead = (epoch, producer)
        if closed:
            producer.close()

    def _take_ahead(self, epoch: int, start_batch: int) -> Optional[BatchProducer]:
        """The read-ahead producer if it is the one asked for; any other is stopped."""
        with self._ahead_lock:
            self._closed = False
            ahead, self._ahead = self._ahead, None
            due, self._due = self._due, None
        if ahead is None:
            return None
        if ahead[0] == epoch and start_batch == 0:
            if due is not None:  # it was prepared whole while parked
                self._start_ahead(due)
            return ahead[1]
        ahead[1].close()
        return None

    # ---- internals -------------------------------------------------------------------------
    def _runs(self, plan: RankEpoch, start: int) -> Iterator:
        """One callable per run of same-shard samples of the stream from `start` on; each reads
        its shard's index part (in a reader thread) and lists the run's SampleRefs."""
        shards = plan.stream_shards[start:]
        if not len(shards):
            return
        copies = plan.stream_rows[start:] // max(1, self.mixture.table.total_rows)
        change = (np.diff(shards) != 0) | (np.diff(copies) != 0)  # a repeated shard: two runs
        cuts = np.concatenate([[0], np.flatnonzero(change) + 1, [len(shards)]]) + start
        for lo, hi in zip(cuts[:-1].tolist(), cuts[1:].tolist()):
            yield lambda lo=lo, hi=hi: self._run_refs(plan, lo, hi)

    def _run_refs(self, plan: RankEpoch, lo: int, hi: int) -> list[SampleRef]:
        r, name = self.mixture.locate(int(plan.stream_shards[lo]))
        root = self.mixture.roots[r]
        part = self._index_part(root, name)
        positions = plan.stream_positions[lo:hi]
        photos = None
        if not self.natural_views:  # positions count photos: map each to (group row, photo)
            starts = np.concatenate([[0], np.cumsum(pc.list_value_length(part.column("view_exts")).to_numpy())])
            if len(positions) and int(positions.max()) >= int(starts[-1]):  # starts[-1]: the part's photos
                raise UsageError(f"{root!r}: index part of {name} has {int(starts[-1])} "
                                 "photos, shards.parquet says more; the dataset is inconsistent")
            group_rows = np.searchsorted(starts, positions, side="right") - 1
            photos = (positions - starts[group_rows]).tolist()
            positions = group_rows
        elif len(positions) and int(positions.max()) >= part.num_rows:
            raise UsageError(f"{root!r}: index part of {name} has {part.num_rows} rows, "
                             "shards.parquet says more; the dataset is inconsistent")
        part = part.take(positions)
        uri = shard_uri(root, name)
        lookup = self._label_number
        ids = plan.stream_rows[lo:hi]
        pick_u = pick_uniforms(self.seed, plan.epoch, ids, self.spec.num_global).tolist()
        return [SampleRef(int(row), name, key, tuple(exts), uri, group,
                          lookup.get(label, -1) if label is not None else -1, index, tuple(u), photo)
                for index, row, u, key, exts, group, label, photo in zip(
                    range(lo, hi), ids.tolist(), pick_u,
                    part.column("key").to_pylist(), part.column("view_exts").to_pylist(),
                    part.column("group_id").to_pylist(), part.column("label").to_pylist(),
                    photos if photos is not None else [-1] * (hi - lo))]

    def _index_part(self, root: str, name: str):
        """A shard's index columns; the few most recent are kept, since a rank's share of a
        shard can come in several runs (one per global block it spans)."""
        key = (root, name)
        with self._parts_lock:
            if key in self._parts:
                self._parts.move_to_end(key)
                return self._parts[key]
        part = read_index_part(root, name, self.storage).select(["key", "view_exts", "group_id", "label"])
        with self._parts_lock:
            self._parts[key] = part
            while len(self._parts) > self.streams + 2:
                self._parts.popitem(last=False)
        return part

    def _read(self, plan: RankEpoch, start: int):
        num_global = self.spec.num_global
        return read_samples(self.storage, self._runs(plan, start), self.stats,
                            streams=self.streams, verify=self.verify == "sha256",
                            pick=lambda ref, c: pick_photos(num_global, ref.u, c))

    def _position_after(self, epoch: int, batch: int) -> DataPosition:
        if batch + 1 >= self.batches_per_epoch:
            return DataPosition(epoch + 1, 0)
        return DataPosition(epoch, batch + 1)

    def _meta(self, item: PreparedBatch, epoch: int, views: list[torch.Tensor]) -> ViewBatch:
        rows = np.asarray(item.rows, dtype=np.int64)
        labels = (torch.tensor(item.labels, dtype=torch.int64).reshape(len(item.rows))
                  if self.label_vocabulary else None)
        return ViewBatch(
            views=views, keys=list(item.keys), group_ids=list(item.group_ids), labels=labels,
            label_vocabulary=self.label_vocabulary,
            view_sources=torch.from_numpy(item.view_sources), rows=torch.from_numpy(rows),
            epoch=epoch, batch=item.batch, position=self._position_after(epoch, item.batch))

    def _batch(self, item: PreparedBatch, outputs, epoch: int) -> ViewBatch:
        return self._meta(item, epoch, [dali_to_torch(out, self.device) for out in outputs])

    def _empty_batch(self, item: PreparedBatch, epoch: int) -> ViewBatch:
        views = [torch.empty((0, 3, v.size, v.size), dtype=torch.float32, device=self.device)
                 for v in self.spec.views]
        return self._meta(item, epoch, views)


def dali_to_torch(tensor_list, device: str) -> torch.Tensor:
    """A DALI output batch as a torch tensor on `device`: zero-copy through DLPack on both
    backends (`device` only names where the batch already lives).

    Every view output is one dense [B, 3, H, W] float32 batch (crop_mirror_normalize to a fixed
    size), so ``as_tensor()`` is a view of it (installed docstring of ``TensorListCPU`` /
    ``TensorListGPU.as_tensor``: "Returns a tensor that is a view of this TensorList") and
    ``torch.from_dlpack`` wraps that memory. On the CPU this replaces ``as_array()``, a copy of
    every batch (19 MB per 224 px view of 32 samples, ~0.1 ms per sample and view here).

    Buffer lifetime: the pipeline runs DALI's default execution model
    (`pipeline.dali_graph.build_view_pipeline` passes ``exec_dynamic=True``), under which an
    output handed out through DLPack is owned by the capsule and never recycled by a later
    ``pipe.run()`` (``TensorCPU.__dlpack__`` / ``TensorGPU.__dlpack__`` docstrings: only "when
    NOT using the default execution model ... the pipeline outputs may be reused and overwritten
    by DALI after release_outputs"); tests/pipeline/test_batch_fields.py holds batches across
    later runs and checks them.
    GPU (not run on this machine; argued from the DALI and torch sources): `torch.from_dlpack`
    calls ``TensorGPU.__dlpack__(stream=<torch's current stream>)`` (torch/utils/dlpack.py
    passes ``torch.cuda.current_stream().cuda_stream``), and DALI then inserts a wait on the
    output's ready event into THAT stream (DALI's ``__dlpack__`` docstring: "The CUDA stream the
    caller is going to use to access the buffer. A synchronization event might be inserted, if
    necessary, into that stream"). So every kernel torch enqueues on the batch runs after DALI
    has finished writing it, with no host wait. On the CPU the outputs DALI hands back are
    complete (``pipe.run()`` returns finished host buffers).
    """
    out = torch.from_dlpack(tensor_list.as_tensor())
    if out.dtype != torch.float32:
        raise RuntimeError(f"DALI view output has dtype {out.dtype}; expected float32")
    if out.device.type != torch.device(device).type:
        raise RuntimeError(f"DALI view output is on {out.device}; expected {device}")
    return out
