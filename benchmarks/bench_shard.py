"""Sharding speed and memory, against `tar -cf` of the same files measured in the same run.

    .venv/bin/python benchmarks/bench_shard.py [--groups 300] [--size 160] [--scale 8]

* vs_tar_ratio: tar's time / viewstream's time to pack the same corpus without re-encoding
  (one process each; 1.0 = as fast as tar; the goal is >= 0.5). viewstream also decodes every
  image to validate it, which tar does not.
* vs_tar_ratio_all_cores: the same with --workers = CPU count (process start-up included).
* reencode_images_per_s: images/s of the same run with --max-side (every image resized and
  re-encoded), one process.
* peak_rss_mb_small / peak_rss_mb_large: peak RSS of a sharding process on the corpus and on
  `scale` times the corpus; streaming keeps them about equal.
The last line of output is one JSON object with these keys (and a few more for context).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sharding.run import shard_dataset  # noqa: E402
from sharding.synthetic import generate_view_corpus  # noqa: E402

OPTIONS = dict(group_by="dir", label_from="parent", shard_bytes=16 * 2**20)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def best_of(n: int, fn) -> float:
    return min(timed(fn) for _ in range(n))


def replicate(corpus: Path, out: Path, times: int) -> None:
    """`times` copies of every group folder under new names (hard links: no extra disk)."""
    for copy in range(times):
        for group in sorted(corpus.glob("*/*")):
            target = out / group.parent.name / f"{group.name}-{copy}"
            target.mkdir(parents=True)
            for image in group.iterdir():
                os.link(image, target / image.name)


def peak_rss_mb(corpus: Path, out: Path) -> float:
    """Peak RSS of a fresh process that shards `corpus` (workers=1)."""
    code = (
        "import resource, sys; from sharding.run import shard_dataset; "
        f"shard_dataset(sys.argv[1], sys.argv[2], progress=False, **{OPTIONS!r}); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    result = subprocess.run([sys.executable, "-c", code, str(corpus), str(out)], check=True,
                             capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    return int(result.stdout.strip().splitlines()[-1]) / 1024.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=300, help="natural-view groups in the corpus")
    parser.add_argument("--size", type=int, default=160, help="image side in pixels")
    parser.add_argument("--scale", type=int, default=8, help="large corpus = scale x the corpus")
    parser.add_argument("--max-side", type=int, default=64, help="resize target of the re-encode run")
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats (best is kept)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_shard_") as tmp:
        tmp = Path(tmp)
        corpus = tmp / "corpus"
        groups = generate_view_corpus(corpus, args.groups, seed=0, size=args.size)
        images = sum(len(g.files) for g in groups)
        corpus_bytes = sum(p.stat().st_size for p in corpus.rglob("*") if p.is_file())
        print(f"corpus: {args.groups} groups, {images} images, {corpus_bytes / 2**20:.1f} MiB, {args.size}px")

        subprocess.run(["tar", "-cf", str(tmp / "warm.tar"), "-C", str(corpus), "."], check=True)  # warm cache

        def run_tar():
            subprocess.run(["tar", "-cf", str(tmp / "plain.tar"), "-C", str(corpus), "."], check=True)

        def run_viewstream(**extra):
            def go():
                out = tmp / "out"
                shutil.rmtree(out, ignore_errors=True)
                shard_dataset(str(corpus), str(out), progress=False, **OPTIONS, **extra)
            return go

        tar_s = best_of(args.repeats, run_tar)
        vs_s = best_of(args.repeats, run_viewstream())
        reencode_s = best_of(args.repeats, run_viewstream(max_side=args.max_side))
        cores = os.cpu_count() or 1
        parallel_s = best_of(args.repeats, run_viewstream(workers=cores))
        print(f"tar -cf: {tar_s:.3f} s ({images / tar_s:.0f} images/s)")
        print(f"viewstream shard (kept bytes, validated): {vs_s:.3f} s ({images / vs_s:.0f} images/s)")
        print(f"viewstream shard --workers {cores}: {parallel_s:.3f} s ({images / parallel_s:.0f} images/s)")
        print(f"viewstream shard --max-side {args.max_side}: {reencode_s:.3f} s ({images / reencode_s:.0f} images/s)")

        large = tmp / "large"
        replicate(corpus, large, args.scale)
        rss_small = peak_rss_mb(corpus, tmp / "rss_small")
        rss_large = peak_rss_mb(large, tmp / "rss_large")
        print(f"peak RSS: {rss_small:.1f} MiB for {images} images, {rss_large:.1f} MiB for {images * args.scale}")

    print(json.dumps({
        "vs_tar_ratio": round(tar_s / vs_s, 3),
        "reencode_images_per_s": round(images / reencode_s, 1),
        "peak_rss_mb_small": round(rss_small, 1),
        "peak_rss_mb_large": round(rss_large, 1),
        "vs_tar_ratio_all_cores": round(tar_s / parallel_s, 3),
        "images": images,
        "images_large": images * args.scale,
        "corpus_mib": round(corpus_bytes / 2**20, 2),
        "tar_images_per_s": round(images / tar_s, 1),
        "viewstream_images_per_s": round(images / vs_s, 1),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }))


if __name__ == "__main__":
    main()
