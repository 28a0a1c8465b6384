"""Sharding across Ray nodes against local worker processes, on the same corpus, in one run.

    .venv/bin/python benchmarks/bench_deploy.py [--groups 300] [--size 320] [--repeats 2] [--formats jpg]

(a) sharding with 2 local worker processes (`--workers 2`), (b) as Ray tasks (`--ray`) on a local
two-node Ray cluster (head + worker node, 1 CPU each, deploy/local/ray_cluster.py). Both
executors are started before the clock runs (and warmed by an untimed round), so the figures are
the steady-state rate a long run sees, not Python or Ray start-up.
Both use the same 2 CPUs, so the ratio is what Ray's task scheduling, object transfer and
cross-node placement cost; deploy/PLAN.md multiplies the per-CPU rate out to a fleet.

* ray_vs_process_ratio: images/s of (b) / images/s of (a) (1.0 = Ray costs nothing).
* ray_images_per_s, process_images_per_s, images_per_s_per_cpu (of (a), the fleet planning rate).
* cluster_startup_s: starting the two-node cluster (head + worker, token auth).
The run re-executes itself in a loopback-only network namespace (Ray must stay on 127.0.0.1).
The last line of output is one JSON object with these keys.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sharding.executors import ProcessExecutor, RayExecutor  # noqa: E402
from sharding.run import shard_dataset  # noqa: E402
from sharding.synthetic import generate_view_corpus  # noqa: E402
from deploy.local.ray_cluster import LocalRayCluster  # noqa: E402

OPTIONS = dict(group_by="dir", label_from="parent", shard_samples=16, progress=False)


def loopback_only() -> bool:
    return [name for _, name in socket.if_nameindex()] == ["lo"]


def shard(corpus: Path, out: Path, executor) -> float:
    """Seconds to shard `corpus` with an executor that is already up (pool / Ray connection)."""
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    shard_dataset(str(corpus), str(out), executor=executor, **OPTIONS)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=300, help="natural-view groups in the corpus")
    parser.add_argument("--size", type=int, default=320, help="image side in pixels")
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats, interleaved (best is kept)")
    parser.add_argument("--formats", default="jpg", help="comma-separated: jpg (product photos), png")
    args = parser.parse_args()
    if not loopback_only() and os.environ.get("BENCH_DEPLOY_NS") != "1":
        os.environ["BENCH_DEPLOY_NS"] = "1"
        os.execvp("unshare", ["unshare", "-n", "bash", "-c", 'ip link set lo up && exec "$@"', "_",
                              sys.executable, *sys.argv])

    with tempfile.TemporaryDirectory(prefix="bench_deploy_") as tmp:
        tmp = Path(tmp)
        corpus = tmp / "corpus"
        groups = generate_view_corpus(corpus, args.groups, seed=0, size=args.size,
                                      formats=tuple(args.formats.split(",")))
        images = sum(len(g.files) for g in groups)
        mib = sum(p.stat().st_size for p in corpus.rglob("*") if p.is_file()) / 2**20
        print(f"corpus: {args.groups} groups, {images} images, {mib:.1f} MiB, {args.size}px")

        start = time.perf_counter()
        with LocalRayCluster(head_cpus=1, worker_nodes=1, worker_cpus=1) as cluster:
            startup_s = time.perf_counter() - start
            # Ray reads the auth mode at `import ray`, which RayExecutor does: set it first.
            os.environ.update({k: cluster.env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")})
            ray_executor, process_executor = RayExecutor(cluster.address), ProcessExecutor(2)
            process_s, ray_s = [], []
            for _ in range(args.repeats + 1):  # the first round warms both up and is not counted
                process_s.append(shard(corpus, tmp / "local", process_executor))
                ray_s.append(shard(corpus, tmp / "ray", ray_executor))
            process_s, ray_s = process_s[1:], ray_s[1:]
            process_executor.close()
            ray_executor.close()
            import ray

            ray.shutdown()
        process_best, ray_best = min(process_s), min(ray_s)
        print(f"cluster start (head + worker node): {startup_s:.1f} s")
        print(f"shard --workers 2: {process_best:.2f} s ({images / process_best:.0f} images/s)")
        print(f"shard --ray, 2 nodes x 1 CPU: {ray_best:.2f} s ({images / ray_best:.0f} images/s)")

    print(json.dumps({
        "ray_vs_process_ratio": round(process_best / ray_best, 3),
        "ray_images_per_s": round(images / ray_best, 1),
        "process_images_per_s": round(images / process_best, 1),
        "images_per_s_per_cpu": round(images / process_best / 2, 1),
        "cluster_startup_s": round(startup_s, 1),
        "images": images,
        "corpus_mib": round(mib, 1),
        "image_side_px": args.size,
        "formats": args.formats,
        "load_average_1m": round(os.getloadavg()[0], 2),
    }))


if __name__ == "__main__":
    main()
