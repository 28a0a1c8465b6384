"""Embedding throughput (single process vs `embed --ray`, 2 workers) and compressed search
(IVF-PQ vs exact flat) on this box's CPUs.

Part 1 shards a synthetic two-root catalogue, makes an untrained ResNet-18 checkpoint and
embeds it twice: in this process (what `viewstream embed` does) and on a local 127.0.0.1 Ray
with 2 one-CPU actors (`viewstream embed --ray --workers 2`); images/s each, and the Ray run's
speed-up. Part 2 writes `--vectors` random-but-clustered `--dim`-d vectors as a Parquet
embeddings dataset, builds `--factory` (IVF-PQ) and `Flat` from it with the streaming builder,
tunes nprobe (powers of two) to recall@10 >= `--target` on 1,000 held-out queries against the
flat index's exact results, and reports build s, query ms, bytes per vector and recall@10
(FAISS's 1-recall@10; overlap@10 too).

    .venv/bin/python benchmarks/bench_embed.py [--groups 96] [--vectors 1000000] [--dim 256]

Last output line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.embeddings import write_embeddings  # noqa: E402
from evaluation.features import iter_features  # noqa: E402


def _checkpoint(path: Path, dataset: str, size: int) -> str:
    import torch

    from trainers.checkpoint import Progress, save_checkpoint
    from trainers.config import TrainConfig
    from trainers.methods import build_method

    config = TrainConfig.model_validate({
        "data": {"dataset": dataset, "recipe": "simclr", "recipe_options": {"size": size}},
        "method": {"name": "simclr", "backbone": {"name": "resnet18", "small_images": True}},
        "batch_size": 8, "scaling": {"num_workers": 1},
        "monitor": {"train_dataset": dataset, "test_dataset": dataset, "image_size": size, "crop_fraction": 1.0}})
    model = build_method(config.method_config(), seed=0)
    save_checkpoint(path, {"method": model.state_dict(), "optimizer": {}, "progress": Progress(1, 0, 1).as_dict()},
                    config=config.model_dump(mode="json"))
    return str(path)


def bench_embedding(work: Path, groups: int, size: int, batch: int) -> dict:
    import torch

    from evaluation.batch_embed import EmbedJob, embed_identity, embed_on_ray, union_vocabulary
    from evaluation.sources import eval_loader, load_checkpoint_backbone
    from sharding.run import shard_dataset
    from sharding.synthetic import generate_view_corpus

    roots = []
    for r in range(2):
        generate_view_corpus(work / f"images{r}", groups // 2, seed=r, size=size, min_views=1, max_views=2)
        roots.append(str(work / f"dataset{r}"))
        shard_dataset(str(work / f"images{r}"), roots[-1], group_by="dir", shard_samples=8, progress=False)
    ckpt = _checkpoint(work / "ckpt" / "checkpoint_000001", roots[0], size)
    backbone, info = load_checkpoint_backbone(ckpt)
    torch.set_num_threads(2)
    start = time.perf_counter()

    def batches():
        for root in roots:
            yield from iter_features(backbone, eval_loader(root, size, batch, crop_fraction=1.0).iter_epoch(0))

    rows = write_embeddings(work / "single.parquet", batches(), progress=False)
    single_s = time.perf_counter() - start
    identity = embed_identity(info, backbone, size, 1.0, union_vocabulary(roots), roots)
    job = EmbedJob(ckpt, size, 1.0, batch, str(work / "ray_out"), identity, ())
    from trainers.runner import connect_ray

    connect_ray(None, num_cpus=2)
    start = time.perf_counter()
    report = embed_on_ray(job, roots, workers=2, cpus_per_worker=1, device="cpu", progress=False)
    ray_wall = time.perf_counter() - start
    import ray

    ray.shutdown()
    assert report.rows == rows, (report.rows, rows)
    return {"embed_images": rows, "embed_single_images_per_s": rows / single_s,
            "embed_ray2_images_per_s": rows / ray_wall, "embed_ray2_images_per_s_steady": rows / report.seconds,
            "embed_ray2_speedup": single_s / ray_wall, "embed_ray2_wall_s": ray_wall, "embed_single_s": single_s}


def bench_search(work: Path, num: int, dim: int, factory: str, target: float, train: int) -> dict:
    from evaluation.index_build import BuildConfig, build_index
    from evaluation.index_eval import evaluate, load_queries, recall_against, tune_nprobe
    from evaluation.sharded_index import ShardedIndex
    from evaluation.synthetic_vectors import write_clustered_embeddings

    # photo_noise 0.5: a listing's photos are not near-copies, so one IVF list rarely suffices.
    emb = write_clustered_embeddings(work / "vectors", num, dim, clusters=max(100, num // 1000), photo_noise=0.5, seed=0)
    out = {}
    indexes = {}
    for name, fac in (("ivfpq", factory), ("flat", "Flat")):
        start = time.perf_counter()
        report = build_index(emb, work / name, BuildConfig(factory=fac, train_size=train, hold_out=1000), progress=False)
        out[f"{name}_build_s"] = time.perf_counter() - start
        out[f"{name}_bytes_per_vector"] = report.bytes_per_vector
        indexes[name] = ShardedIndex.load(work / name, with_rows=False)
    queries = load_queries(work / "ivfpq")
    start = time.perf_counter()
    exact = indexes["flat"].search(queries, 10).indices
    out["flat_query_ms"] = 1000 * (time.perf_counter() - start) / len(queries)
    out["flat_recall_at_10"] = recall_against(exact, exact, 10)[0]
    chosen, tried = tune_nprobe(indexes["ivfpq"], queries, exact, 10, target)
    best = chosen or tried[-1]
    best = evaluate(indexes["ivfpq"], queries, exact, 10, best.params)  # timed again, warm
    out |= {"ivfpq_factory": factory, "ivfpq_nprobe": best.params["nprobe"], "ivfpq_query_ms": best.query_ms,
            "ivfpq_recall_at_10": best.recall, "ivfpq_overlap_at_10": best.overlap,
            "ivfpq_reaches_target": chosen is not None, "vectors": num, "dim": dim,
            "nprobe_tried": {t.params["nprobe"]: round(t.recall, 4) for t in tried}}
    out["ivfpq_query_speedup_vs_flat"] = out["flat_query_ms"] / best.query_ms
    out["ivfpq_bytes_ratio_vs_flat"] = out["ivfpq_bytes_per_vector"] / out["flat_bytes_per_vector"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=96, help="groups over the two roots (part 1)")
    parser.add_argument("--px", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--factory", default="IVF1024,PQ32")
    parser.add_argument("--train", type=int, default=50_000)
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--skip-embed", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TQDM_DISABLE", "1")
    result = {}
    with tempfile.TemporaryDirectory(prefix="bench_embed_") as tmp:
        work = Path(tmp)
        if not args.skip_embed:
            result |= bench_embedding(work, args.groups, args.px, args.batch)
            print(json.dumps({k: v for k, v in result.items()}), flush=True)
        result |= bench_search(work, args.vectors, args.dim, args.factory, args.target, args.train)
    result["load_average_1m"] = os.getloadavg()[0]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
