"""The reading half of the loader alone (no DALI): samples/s one process reads, checks and hands
over, for groups of 1, 2 and 4 photos of ~100 KB JPEGs.

    .venv/bin/python benchmarks/bench_reader.py [--groups 300] [--seconds 3]

* local_samples_per_s_{1,2,4}photos: shards on local disk (page-cached after a warm-up).
* s3_latency_samples_per_s_4photos: the 4-photo shards on moto S3 (its own process) behind a
  127.0.0.1 proxy (`testbed.faulty_proxy`) that adds 20 ms to every response's first byte.
* all_photos_checked_samples_per_s_4photos / one_stream_samples_per_s_4photos: the same local
  read checking every photo of a group (the old reader), and with one shard stream: what
  checking only the drawn photos and several streams in flight each bring.
* s3_no_proxy_samples_per_s_4photos: moto S3 without the proxy (the proxy pumps every byte
  through Python threads of this process, so it costs the reader CPU a real network does not).
Each figure is samples over wall time of whole epochs repeated for at least `--seconds`;
`*_samples_per_cpu_s` are the same per CPU second of this process (what load barely moves;
the S3 server's CPU is not counted, as a real object store's would not be).
The last line is one JSON object.
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

from bench_pipeline import start_s3_server  # noqa: E402

from pipeline import ViewLoader, ViewSpec  # noqa: E402
from testbed.faulty_proxy import DroppingProxy  # noqa: E402
from pipeline.samples import read_samples  # noqa: E402
from testbed.scale import write_photo_corpus  # noqa: E402
from sharding.migrate import migrate_dataset  # noqa: E402
from sharding.run import shard_dataset  # noqa: E402
from groundfloor.storage import Storage  # noqa: E402

SPEC = ViewSpec.simclr(size=224)


def build(tmp: str, photos: int, groups: int) -> str:
    images, out = os.path.join(tmp, f"images{photos}"), os.path.join(tmp, f"ds{photos}")
    write_photo_corpus(images, groups, (photos, photos), seed=photos)
    shard_dataset(images, out, group_by="dir", label_from="parent", shard_samples=100,
                  workers=2, progress=False)
    migrate_dataset(out, progress=False)  # a no-op once the sharder writes version 2
    return out


CPU_RATES: dict[str, float] = {}


def rate(loader: ViewLoader, seconds: float, check_all: bool = False, name: str = "") -> float:
    """Samples/s of the loader's reading half over whole epochs (>= `seconds` in all); the
    samples per CPU second of this process (all its threads) go to CPU_RATES[name]."""
    samples, elapsed, cpu, epoch = 0, 0.0, 0.0, 1
    list(reader(loader, 0, check_all))  # warm-up: page cache, connections, imports
    while elapsed < seconds:
        start, start_cpu = time.perf_counter(), time.process_time()
        samples += sum(1 for _, s in reader(loader, epoch, check_all) if s is not None)
        elapsed += time.perf_counter() - start
        cpu += time.process_time() - start_cpu
        epoch += 1
    CPU_RATES[name] = samples / max(cpu, 1e-9)
    return samples / elapsed


def reader(loader: ViewLoader, epoch: int, check_all: bool):
    plan = loader.plan(epoch)
    if not check_all:
        return loader._read(plan, 0)
    return read_samples(loader.storage, loader._runs(plan, 0), loader.stats,
                        streams=loader.streams, verify=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--groups", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    args = parser.parse_args()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_DEFAULT_REGION="us-east-1")
    figures: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench_reader_") as tmp:
        datasets = {p: build(tmp, p, args.groups) for p in (1, 2, 4)}
        for photos, dataset in datasets.items():
            figures[f"local_samples_per_s_{photos}photos"] = rate(
                ViewLoader(dataset, SPEC, 64), args.seconds, name=f"local_{photos}photos")
        four = datasets[4]
        figures["all_photos_checked_samples_per_s_4photos"] = rate(
            ViewLoader(four, SPEC, 64), args.seconds, check_all=True, name="all_photos_checked_4photos")
        figures["one_stream_samples_per_s_4photos"] = rate(
            ViewLoader(four, SPEC, 64, streams=1), args.seconds)
        figures["verify_none_samples_per_s_4photos"] = rate(
            ViewLoader(four, SPEC, 64, verify="none"), args.seconds)
        server, url = start_s3_server()
        try:
            storage = Storage(url)
            storage.s3.create_bucket(Bucket="bench")
            for entry in storage.list_files(four):
                storage.s3.upload_file(entry.uri, "bench", f"ds4/{entry.relpath}")
            figures["s3_no_proxy_samples_per_s_4photos"] = rate(
                ViewLoader("s3://bench/ds4", SPEC, 64, endpoint_url=url), args.seconds,
                name="s3_no_proxy_4photos")
            proxy = DroppingProxy(int(url.rsplit(":", 1)[1]),
                                  first_byte_latency_s=args.latency_ms / 1000)
            try:
                for streams in (1, 6):
                    loader = ViewLoader("s3://bench/ds4", SPEC, 64, endpoint_url=proxy.url,
                                        streams=streams)
                    key = ("s3_latency_samples_per_s_4photos" if streams == 6 else
                           "s3_latency_one_stream_samples_per_s_4photos")
                    figures[key] = rate(loader, args.seconds, name=key.replace("_samples_per_s", ""))
            finally:
                proxy.close()
        finally:
            server.terminate()
            server.wait(timeout=10)
    figures["s3_latency_vs_local_4photos"] = (figures["s3_latency_samples_per_s_4photos"]
                                              / figures["local_samples_per_s_4photos"])
    figures.update({f"{k}_samples_per_cpu_s": v for k, v in CPU_RATES.items() if k})
    figures = {k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}
    figures.update(groups=args.groups, latency_ms=args.latency_ms, cpu_count=os.cpu_count(),
                   load_average_1min=os.getloadavg()[0])
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
