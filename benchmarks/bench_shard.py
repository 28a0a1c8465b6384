"""Sharding speed against the work it cannot avoid: reading and decode-validating every image.

    .venv/bin/python benchmarks/bench_shard.py [--groups 1000] [--size 320,640] [--repeats 3]

Per image size (default 320 and 640 px; 1,000 groups, 3,499 images, half JPEG, half PNG; 200
groups, 723 images, make runs of about a second, where the start and end of a run, the same on
every corpus, weigh several times more than on a catalogue):
* vs_validate_ratio_{size}: images/s of `viewstream shard --workers CORES` / images/s of a loop
  that only reads and decode-validates the same files (PIL, JPEG draft mode as the sharder uses
  for kept JPEGs, full decode otherwise) in a pool of CORES spawned processes, both measured in
  this run, process start-up included on both sides (each spawned worker of either side imports
  this module, so sharding.run). What is left is the sharder's own overhead: planning, hashing,
  tar writing, indexing, fsyncs, the dedup pass, IPC. Goal >= 0.8 at both sizes.
  (`tar -cf` is no baseline: it only copies bytes, a validating sharder decodes every image.)
* wds_vs_validate_ratio_{size}: the same, with the same images given as WebDataset tars (one
  sample per group, written by `webdataset.ShardWriter`, 4 tars per core, one shard task per
  tar): the sharder streams each tar instead of reading files. Goal >= 0.8 on a quiet machine.
* vs_validate_ratio / wds_vs_validate_ratio: the lowest over the sizes measured.
* reencode_images_per_s: images/s with --max-side (every image resized and re-encoded), one
  process, on the largest size.
The last line of output is one JSON object with these keys, the load average and a few more.

Where the sharder's extra CPU went (issue 26), `benchmarks/profile_shard.py --repeats 5`: CPU
seconds (not wall: the box is shared), best of 5, load 1-1.8, 2 cores; "before" is ee89925.
                                          320 px files   640 px files   320 px tars   640 px tars
  validate pool, 2 processes (getrusage)   1.20 / 1.16    1.81 / 1.84    1.17 / 1.14   1.81 / 1.81
  shard --workers 2 (getrusage)            1.79 / 1.30    2.44 / 1.98    1.74 / 1.30   2.41 / 1.99
    workers' first task (2 workers)        0.45 / 0.14    0.62 / 0.33    0.41 / 0.14   0.54 / 0.28
  in one process: validate loop            0.31 / 0.30    0.93 / 0.95    0.31 / 0.30   0.93 / 0.93
  in one process: shard, of which          0.53 / 0.42    1.27 / 1.10    0.48 / 0.40   1.15 / 1.08
    decode-validate                        0.33 / 0.32    0.97 / 0.95    0.32 / 0.31   0.94 / 0.94
    prefetch threads + hand-off, reads     0.09 / 0.02    0.14 / 0.03    -             -
    read the tar stream (parse, group)     -              -              0.07 / 0.03   0.09 / 0.04
    tar writing + its sha256               0.02 / 0.01    0.03 / 0.03    0.02 / 0.01   0.03 / 0.03
    sha256 of each photo                   0.01 / 0.01    0.02 / 0.01    0.01 / 0.01   0.01 / 0.01
    temp files, fsync, rename (5 a shard)  0.04 / 0.02    0.02 / 0.03    0.02 / 0.02   0.02 / 0.02
    index + quarantine Parquet             0.01 / 0.01    0.01 / 0.01    0.01 / 0.01   0.01 / 0.01
    dedup pass (report)                    0.01 / 0.01    0.01 / 0.01    0.01 / 0.01   0.01 / 0.01
    rows, {key}.json, list, plan, other    0.05 / 0.04    0.07 / 0.05    0.04 / 0.03   0.05 / 0.05
What changed: (1) pyarrow's first `pa.array` imported pandas in every worker (~0.2 CPU s each,
the largest single overhead): workers now start with `sharding.executors.arrow_without_pandas`;
(2) local files are read in the build's thread (the 8-thread prefetch pool, meant for S3
latency, cost more CPU than the reads from the page cache); (3) WebDataset tars are parsed by
`sharding.tar_reader` (tarfile's header parsing was ~70 us a member); (4) a tar sample is
written and hashed as one piece. Outputs are byte-identical. What is left is mostly per shard
(5 atomic, fsynced files, Parquet writers, the dedup pass: ~3 ms a shard, weighty here because
the bench's shards hold 25 groups) and per byte (two sha256 passes, the copy into the tar).
"""
from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sharding.run import shard_dataset  # noqa: E402
from sharding.synthetic import generate_view_corpus  # noqa: E402

OPTIONS = dict(group_by="dir", label_from="parent")  # + shard_samples: ~4 shards per core


def validate_files(paths: list[str]) -> int:
    """Read and decode every file (the baseline's work); returns how many decoded."""
    from PIL import Image

    ok = 0
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        with Image.open(io.BytesIO(data)) as image:
            if image.format == "JPEG":
                image.draft(image.mode, (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
            ok += 1
    return ok


def baseline(files: list[str], cores: int) -> None:
    chunks = [files[i::cores * 4] for i in range(cores * 4)]
    with ProcessPoolExecutor(cores, mp_context=multiprocessing.get_context("spawn")) as pool:
        assert sum(pool.map(validate_files, chunks)) == len(files)


def write_tars(corpus: Path, out: Path, tars: int) -> None:
    """Every group folder of `corpus` as one WebDataset sample (views as members 0.jpg, 1.png,
    ...), spread over `tars` tars by webdataset's own ShardWriter."""
    import webdataset as wds

    out.mkdir()
    groups = sorted({p.parent for p in corpus.rglob("*") if p.is_file()})
    per_tar = max(1, -(-len(groups) // tars))
    with wds.ShardWriter(str(out / "shards-%06d.tar"), maxcount=per_tar, verbose=0) as sink:
        for n, folder in enumerate(groups):
            views = sorted(p for p in folder.iterdir() if p.is_file())
            sample = {"__key__": f"{n:08d}", "cls": n % 10}
            sample.update({f"{i}{p.suffix}": p.read_bytes() for i, p in enumerate(views)})
            sink.write(sample)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def best_of(n: int, fn) -> float:
    return min(timed(fn) for _ in range(n))


def measure_size(size: int, args, cores: int, tmp: Path) -> dict:
    """Both ratios (and the re-encode speed when asked) on a corpus of `size` px images."""
    corpus = tmp / f"corpus-{size}"
    groups = generate_view_corpus(corpus, args.groups, seed=0, size=size)
    files = sorted(str(p) for p in corpus.rglob("*") if p.is_file())
    images = len(files)
    corpus_bytes = sum(os.path.getsize(p) for p in files)
    print(f"corpus: {len(groups)} groups, {images} images, {corpus_bytes / 2**20:.1f} MiB, {size}px; {cores} cores")
    validate_files(files)  # warm the page cache

    def run_viewstream(workers: int, **extra):
        def go():
            out = tmp / "out"
            shutil.rmtree(out, ignore_errors=True)
            summary = shard_dataset(str(corpus), str(out), workers=workers, progress=False,
                                    shard_samples=max(1, args.groups // (4 * cores)), **OPTIONS, **extra)
            assert summary.num_views == images
        return go

    tars = tmp / f"tars-{size}"
    write_tars(corpus, tars, 4 * cores)

    def run_tars():
        out = tmp / "out-wds"
        shutil.rmtree(out, ignore_errors=True)
        summary = shard_dataset(str(tars), str(out), workers=cores, progress=False, label_from="cls",
                                shard_bytes=1)
        assert summary.num_views == images

    # Alternated, best of each: a load change on the shared machine hits both sides alike.
    triples = [(timed(lambda: baseline(files, cores)), timed(run_viewstream(cores)), timed(run_tars))
               for _ in range(args.repeats)]
    base_s, vs_s, wds_s = (min(p[i] for p in triples) for i in range(3))
    print(f"  read + decode-validate, {cores} processes: {base_s:.3f} s ({images / base_s:.0f} images/s)")
    print(f"  viewstream shard --workers {cores}: {vs_s:.3f} s ({images / vs_s:.0f} images/s)")
    print(f"  viewstream shard of WebDataset tars --workers {cores}: {wds_s:.3f} s ({images / wds_s:.0f} images/s)")
    result = {
        f"vs_validate_ratio_{size}": round(base_s / vs_s, 3),
        f"wds_vs_validate_ratio_{size}": round(base_s / wds_s, 3),
        f"validate_images_per_s_{size}": round(images / base_s, 1),
        f"viewstream_images_per_s_{size}": round(images / vs_s, 1),
        f"images_{size}": images,
        f"corpus_mib_{size}": round(corpus_bytes / 2**20, 2),
    }
    if args.reencode:
        reencode_s = best_of(args.repeats, run_viewstream(1, max_side=args.max_side))
        print(f"  viewstream shard --max-side {args.max_side} (1 process): {reencode_s:.3f} s "
              f"({images / reencode_s:.0f} images/s)")
        result["reencode_images_per_s"] = round(images / reencode_s, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=1000, help="natural-view groups in the corpus")
    parser.add_argument("--size", default="320,640",
                        help="image sides in pixels, comma separated (640: PLAN.md's M1; at 320 the images "
                             "are ~7 KB and the sharder's fixed per-image cost weighs more)")
    parser.add_argument("--max-side", type=int, default=128, help="resize target of the re-encode run")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (best is kept)")
    args = parser.parse_args()
    sizes = [int(size) for size in args.size.split(",")]
    cores = os.cpu_count() or 1

    result: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench_shard_") as tmp:
        for size in sizes:
            args.reencode = size == max(sizes)  # the re-encode speed once, on the largest images
            result.update(measure_size(size, args, cores, Path(tmp)))
    print(json.dumps({
        "vs_validate_ratio": min(result[f"vs_validate_ratio_{size}"] for size in sizes),
        "wds_vs_validate_ratio": min(result[f"wds_vs_validate_ratio_{size}"] for size in sizes),
        **result,
        "sizes": sizes,
        "cores": cores,
        "load_average": [round(load, 2) for load in os.getloadavg()],
        "load_average_1m": round(os.getloadavg()[0], 2),
    }))


if __name__ == "__main__":
    main()
