"""`embed --ray`: embed a whole catalogue (one or several dataset roots) on a Ray cluster.

Unit of work = one shard, on a pool of Ray actors (one model copy each, ``num_gpus=1`` per actor
when the cluster has GPUs), not Ray Data's ``map_batches``: what the output must be (one
Parquet file per shard, written atomically, a rerun skipping finished shards) is a per-shard
property, and Ray Data would re-block rows (a shard's samples spread over blocks, files written
per block, no notion of "this shard is done"), need a custom datasource for the shard format
and hold the plan as blocks in the object store. With actors over shards the driver holds only
the list of shards (shard granularity), each actor streams its shard through the pipeline's own
eval pieces (`evaluation.shard_reader`), and each output file is a pure function of its shard,
so the result is the same whatever the number of workers (and equal to single-process `embed`).

Output layout (local folder or s3:// prefix)::

    {out}/_embed.json                  what made it: checkpoint identity, eval recipe, roots
    {out}/{root_id}-{shard}.parquet    one shard's rows: key, group, label, vector, shard, dataset

`root_id` is a short hash of the dataset root, so several roots never clash. Each file's
Parquet metadata repeats the identity plus its dataset and shard. A rerun with another
checkpoint or recipe into the same folder is refused rather than mixing two models' vectors.
"""
from __future__ import annotations

import hashlib
import json
import posixpath
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from groundfloor.errors import UsageError

RUN_FILE = "_embed.json"
IN_FLIGHT_PER_WORKER = 2  # one shard running, one queued: the actor never waits for the driver


@dataclass(frozen=True)
class EmbedJob:
    """Everything an actor needs, picklable: which model, which view, where to write."""

    checkpoint: str
    image_size: int
    crop_fraction: float
    batch_size: int
    out: str
    identity: dict[str, Any]
    label_vocabulary: tuple[str, ...] = ()
    endpoint_url: Optional[str] = None
    num_threads: int = 1


@dataclass
class EmbedReport:
    """What a run did: shards embedded now, shards skipped as already finished, rows written."""

    embedded_shards: int = 0
    skipped_shards: int = 0
    rows: int = 0
    seconds: float = 0.0
    workers: int = 0
    device: str = "cpu"
    read_stats: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def root_id(root: str) -> str:
    """A short stable name for a dataset root (its output files start with it)."""
    return hashlib.sha1(root.rstrip("/").encode()).hexdigest()[:8]


def shard_output_uri(out: str, root: str, shard: str) -> str:
    """Where the embeddings of `shard` of dataset `root` go."""
    stem = shard[: -len(".tar")] if shard.endswith(".tar") else shard
    return posixpath.join(out.rstrip("/"), f"{root_id(root)}-{stem}.parquet")


def weights_digest(backbone) -> str:
    """sha256 over the backbone's state (names, shapes, bytes): the checkpoint's identity,
    whatever path it was loaded from."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(backbone.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update((t.float() if t.dtype == torch.bfloat16 else t).numpy().tobytes())
    return h.hexdigest()


def union_vocabulary(roots: Sequence[str], storage=None) -> list[str]:
    """Sorted labels of all roots: one numbering for the whole output (as single-process embed)."""
    from evaluation.dataset_parts import label_vocabulary

    return sorted({label for root in roots for label in label_vocabulary(root, storage)})


def embed_shard(backbone, reader, job: EmbedJob, root: str, shard: str, storage, device: str = "cpu") -> int:
    """Embed one shard and write its file atomically; the number of rows written."""
    from evaluation.dataset_parts import shard_rows
    from evaluation.embeddings import embedding_table, write_embedding_table
    from evaluation.features import iter_features

    rows = shard_rows(root, shard, storage)
    lookup = {name: i for i, name in enumerate(job.label_vocabulary)}
    labels = (np.array([lookup.get(l, -1) for l in rows.column("label").to_pylist()], dtype=np.int64)
              if job.label_vocabulary else None)
    vectors, keys, groups, out_labels = [], [], [], []
    for fb in iter_features(backbone, reader.iter_shard(root, shard, rows, labels), device=device):
        vectors.append(fb.features.numpy())
        keys += fb.keys
        groups += fb.group_ids
        if fb.labels is not None:
            out_labels.append(fb.labels.numpy())
    dim = vectors[0].shape[1] if vectors else _feature_dim(backbone, job, device)
    matrix = np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32)
    label_array = np.concatenate(out_labels) if out_labels else (np.zeros(0, np.int64) if labels is not None else None)
    meta = job.identity | {"dataset": root, "shard": shard}
    table = embedding_table(matrix, keys, groups, label_array, metadata=meta, shard=shard, dataset=root)
    write_embedding_table(shard_output_uri(job.out, root, shard), table, storage)
    return len(keys)


def _feature_dim(backbone, job: EmbedJob, device: str) -> int:
    """The feature size, from one blank image (a shard whose samples were all bad is still a file)."""
    import torch

    with torch.no_grad():
        return int(backbone.eval()(torch.zeros(1, 3, job.image_size, job.image_size, device=device)).flatten(1).shape[1])


class ShardEmbedWorker:
    """A Ray actor body: loads the model once, then embeds the shards it is given."""

    def __init__(self, job: EmbedJob, device: str = "cpu"):
        import torch

        from evaluation.shard_reader import ShardReader
        from evaluation.sources import eval_spec, load_checkpoint_backbone
        from groundfloor.storage import Storage

        torch.set_num_threads(max(1, job.num_threads))
        self.job, self.device = job, device
        self.storage = Storage(job.endpoint_url)
        # the model the identity names: backbone, or backbone + head (`CheckpointInfo.producer`)
        backbone, _ = load_checkpoint_backbone(job.checkpoint, embedding=job.identity.get("embedding", "backbone"))
        self.backbone = backbone.to(device)
        self.reader = ShardReader(eval_spec(job.image_size, job.crop_fraction), job.batch_size, device=device,
                                  num_threads=max(1, job.num_threads), storage=self.storage)

    def embed(self, root: str, shard: str) -> dict[str, Any]:
        start = time.perf_counter()
        stats = self.reader.stats
        before = (stats.bad_photos, stats.skipped_samples)
        rows = embed_shard(self.backbone, self.reader, self.job, root, shard, self.storage, self.device)
        return {"root": root, "shard": shard, "rows": rows, "seconds": time.perf_counter() - start,
                "read_stats": {"bad_photos": stats.bad_photos - before[0],
                               "skipped_samples": stats.skipped_samples - before[1]}}


def check_run_identity(out: str, identity: dict[str, Any], storage) -> None:
    """Write `{out}/_embed.json`, or check that the one there says the same (else UsageError)."""
    uri = posixpath.join(out.rstrip("/"), RUN_FILE)
    text = json.dumps(identity, indent=2, sort_keys=True) + "\n"
    if storage.exists(uri):
        found = json.loads(storage.read_bytes(uri))
        if found != json.loads(text):
            diff = sorted(k for k in set(found) | set(identity) if found.get(k) != identity.get(k))
            raise UsageError(f"{out!r} holds embeddings made differently ({', '.join(diff)} differ); "
                             "write to a new --out folder")
        return
    storage.write_bytes(uri, text.encode())


def plan_shards(roots: Sequence[str], out: str, storage) -> tuple[list[tuple[str, str]], int]:
    """(shards still to embed as (root, shard), number already finished) for `roots`."""
    from evaluation.dataset_parts import shard_names

    try:
        finished = {e.relpath for e in storage.list_files(out)}
    except FileNotFoundError:
        finished = set()
    todo, done = [], 0
    for root in roots:
        for shard in shard_names(root, storage):
            if posixpath.basename(shard_output_uri(out, root, shard)) in finished:
                done += 1
            else:
                todo.append((root, shard))
    return todo, done


def cluster_device(device: Optional[str]) -> str:
    """"cuda" when asked, or when "auto"/None and the Ray cluster has GPUs; else "cpu"."""
    import ray

    if device in (None, "auto"):
        return "cuda" if ray.cluster_resources().get("GPU", 0) >= 1 else "cpu"
    if device not in ("cpu", "cuda"):
        raise UsageError(f"--device {device!r}: expected cpu, cuda or auto")
    return device


def embed_on_ray(job: EmbedJob, roots: Sequence[str], *, workers: Optional[int] = None,
                 cpus_per_worker: float = 1.0, device: Optional[str] = "auto", address: Optional[str] = None,
                 progress: bool = True) -> EmbedReport:
    """Embed every unfinished shard of `roots` into `job.out` with a pool of Ray actors.

    Joins the Ray cluster at `address` (or RAY_ADDRESS; a local 127.0.0.1 one if neither).
    `workers` defaults to the cluster's GPUs (cuda) or CPUs // cpus_per_worker.
    """
    import ray
    from tqdm.auto import tqdm

    from groundfloor.storage import Storage
    from groundfloor.ray_connect import connect_ray

    storage = Storage(job.endpoint_url)
    started = connect_ray(address)
    pool: list = []
    try:
        device = cluster_device(device)
        resources = ray.cluster_resources()
        if workers is None:
            workers = int(resources.get("GPU", 0)) if device == "cuda" else int(resources.get("CPU", 1) // cpus_per_worker)
        if workers < 1:
            raise UsageError(f"--workers {workers}: expected at least 1 (the cluster has {resources.get('CPU', 0):g} CPUs, "
                             f"{resources.get('GPU', 0):g} GPUs)")
        check_run_identity(job.out, job.identity, storage)  # also creates a local folder
        storage.remove_unfinished_writes(job.out)  # what a killed run left half-written
        todo, done = plan_shards(roots, job.out, storage)
        report = EmbedReport(skipped_shards=done, device=device)
        if not todo:
            return report
        workers = min(workers, len(todo))
        report.workers = workers
        actor_cls = ray.remote(ShardEmbedWorker).options(
            num_cpus=cpus_per_worker, num_gpus=1 if device == "cuda" else 0,
            max_restarts=2, max_task_retries=2)
        job = EmbedJob(**(asdict(job) | {"num_threads": max(1, int(cpus_per_worker))}))
        pool = [actor_cls.remote(job, device) for _ in range(workers)]
        queue, pending = deque(todo), {}
        start = time.perf_counter()

        def submit(actor) -> None:
            root, shard = queue.popleft()
            pending[actor.embed.remote(root, shard)] = actor

        for _ in range(IN_FLIGHT_PER_WORKER):
            for actor in pool:
                if queue:
                    submit(actor)
        bad = {"bad_photos": 0, "skipped_samples": 0}
        with tqdm(total=len(todo), desc="embed", unit="shard", disable=not progress) as bar:
            while pending:
                [ref], _ = ray.wait(list(pending), num_returns=1)
                actor = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayTaskError as err:  # bad input on a worker: one line, not a trace
                    if isinstance(err.cause, UsageError):
                        raise err.cause from None
                    raise
                report.embedded_shards += 1
                report.rows += result["rows"]
                bad = {k: bad[k] + v for k, v in result["read_stats"].items()}
                bar.update(1)
                bar.set_postfix(images=report.rows, images_per_s=f"{report.rows / (time.perf_counter() - start):.1f}")
                if queue:
                    submit(actor)
        report.seconds = time.perf_counter() - start
        report.read_stats = bad
        return report
    finally:
        for actor in pool:
            ray.kill(actor)
        if started:
            ray.shutdown()


def embed_identity(info, backbone, image_size: int, crop_fraction: float, vocabulary: Sequence[str],
                   roots: Sequence[str]) -> dict[str, Any]:
    """The metadata every embeddings file of a run carries: the model (its producer fields and a
    digest of its weights), the eval view and the label numbering."""
    return info.producer() | {"weights_sha256": weights_digest(backbone), "image_size": int(image_size),
                              "crop_fraction": float(crop_fraction), "recipe": "eval",
                              "label_vocabulary": list(vocabulary), "datasets": list(roots)}
