"""Where `viewstream shard` spends CPU that the read + decode-validate loop of bench_shard does not.

    .venv/bin/python benchmarks/profile_shard.py [--sizes 320,640] [--groups 200] [--repeats 5]

CPU seconds (process_time / thread_time / getrusage, never wall time: the box is shared), the
best of `--repeats` runs, on bench_shard's corpus (200 groups, 723 images, half JPEG, half PNG):

* in process: `shard_dataset(workers=1)` with its parts timed by wrapping the functions that do
  them (each part's own time, nested parts subtracted; "prefetch threads" is the CPU of the
  threads beside the main one), against bench_shard's `validate_files` loop on the same files;
* with processes, as bench_shard runs both sides: `--workers 2` and the 2-process validate pool,
  getrusage of the driver and its reaped workers; and inside each sharding worker its start-up
  (spawn + imports, before its first task), its first task and its other tasks.
The wrappers cost a few microseconds a call; totals are given unwrapped.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import multiprocessing
import os
import resource
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_shard  # noqa: E402
from sharding.synthetic import generate_view_corpus  # noqa: E402


class PartTimer:
    """Exclusive main-thread CPU per part: entering a part charges the time so far to the part
    it interrupts."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.stack: list[str] = ["driver: other"]
        self.mark = time.thread_time()

    def _switch(self):
        now = time.thread_time()
        self.seconds[self.stack[-1]] += now - self.mark
        self.mark = now

    @contextlib.contextmanager
    def part(self, name: str):
        self._switch()
        self.stack.append(name)
        try:
            yield
        finally:
            self._switch()
            self.stack.pop()

    def wrap(self, name: str, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            with self.part(name):
                return fn(*args, **kwargs)
        return timed

    def wrap_cm(self, name: str, fn):
        """A context manager function whose enter and exit are timed as `name`."""
        @functools.wraps(fn)
        @contextlib.contextmanager
        def timed(*args, **kwargs):
            with self.part(name):
                cm = fn(*args, **kwargs)
                value = cm.__enter__()
            try:
                yield value
            except BaseException:
                with self.part(name):
                    if not cm.__exit__(*sys.exc_info()):
                        raise
            else:
                with self.part(name):
                    cm.__exit__(None, None, None)
        return timed

    def wrap_iter(self, name: str, fn):
        """A generator function whose every step is timed as `name`."""
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            it = iter(fn(*args, **kwargs))
            while True:
                with self.part(name):
                    try:
                        item = next(it)
                    except StopIteration:
                        return
                yield item
        return timed


@contextlib.contextmanager
def patched(timer: PartTimer):
    """The sharder's parts wrapped (module globals and class attributes, restored after)."""
    import groundfloor.storage.local as local
    import sharding.build as build
    import sharding.run as run
    from sharding.manifest_writer import ManifestWriter
    from sharding.tar_writer import TarWriter

    real_sha256 = hashlib.sha256
    fake_os = SimpleNamespace(**{k: getattr(os, k) for k in dir(os) if not k.startswith("__")})
    fake_os.fsync = timer.wrap("build: fsync of each file written", os.fsync)
    fake_os.path = os.path
    targets = [
        (run, "_batches", timer.wrap_iter("driver: list inputs", run._batches)),
        (run, "plan_stream", timer.wrap_iter("driver: plan (rank, sort, pack)", run.plan_stream)),
        (run, "parquet_bytes", timer.wrap("driver: plan (rank, sort, pack)", run.parquet_bytes)),
        (run, "shard_fingerprint", timer.wrap("driver: plan (rank, sort, pack)", run.shard_fingerprint)),
        (run, "dedup_across_groups", timer.wrap("dedup pass (report)", run.dedup_across_groups)),
        (run, "write_shards_table", timer.wrap("driver: manifest, shards.parquet, summary", run.write_shards_table)),
        (run, "summarize", timer.wrap("driver: manifest, shards.parquet, summary", run.summarize)),
        (ManifestWriter, "write", timer.wrap("driver: manifest, shards.parquet, summary", ManifestWriter.write)),
        (run, "build_shard", timer.wrap("build: other (input list, rows, records)", run.build_shard)),
        (build, "_units", timer.wrap_iter("build: read files (incl. prefetch hand-off)", build._units)),
        (build, "_prefetched", timer.wrap_iter("build: read files (incl. prefetch hand-off)", build._prefetched)),
        (build, "groups_of", timer.wrap("build: the task's input list", build.groups_of)),
        (build, "container_groups", timer.wrap_iter("build: read tar stream (parse, group samples)",
                                                    build.container_groups)),
        (build, "read_parquet", timer.wrap("build: the task's input list", build.read_parquet)),
        (local.LocalBackend, "open_atomic_write", timer.wrap_cm("build: open temp file, rename",
                                                                local.LocalBackend.open_atomic_write)),
        (build, "validate_image", timer.wrap("build: decode-validate", build.validate_image)),
        (build, "hashlib", SimpleNamespace(sha256=timer.wrap("build: sha256 of each photo", real_sha256))),
        (build, "group_metadata", timer.wrap("build: {key}.json member", build.group_metadata)),
        (build, "parquet_bytes", timer.wrap("build: index + quarantine Parquet", build.parquet_bytes)),
        (build, "pa", SimpleNamespace(Table=SimpleNamespace(
            from_pylist=timer.wrap("build: index + quarantine Parquet", build.pa.Table.from_pylist)))),
        (TarWriter, "write_sample", timer.wrap("build: tar writing (+ tar sha256)", TarWriter.write_sample)),
        (TarWriter, "close", timer.wrap("build: tar writing (+ tar sha256)", TarWriter.close)),
        (local, "os", fake_os),
    ]
    saved = [(owner, name, owner.__dict__[name]) for owner, name, _ in targets]
    try:
        for owner, name, value in targets:
            setattr(owner, name, value)
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


def cpu_of(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def rusage_cpu() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class _TaskClock:
    """Wraps an executor's function: appends (pid, cpu before the task, cpu of the task) per task."""

    def __init__(self, fn, log: str):
        self.fn, self.log = fn, log

    def __call__(self, task):
        before = time.process_time()
        result = self.fn(task)
        with open(self.log, "a") as f:
            f.write(f"{os.getpid()} {before:.4f} {time.process_time() - before:.4f} {'pandas' in sys.modules:d}\n")
        return result


def worker_breakdown(run, log: Path) -> dict:
    """Per sharding worker: start-up CPU (before its first task), first task, other tasks."""
    from sharding.executors import ProcessExecutor

    class Clocked(ProcessExecutor):
        def map_unordered(self, fn, tasks, name=None):
            return super().map_unordered(_TaskClock(fn, str(log)), tasks, name)

    log.unlink(missing_ok=True)
    executor = Clocked(2)
    try:
        run(executor)
    finally:
        executor.close()
    per: dict[str, list] = defaultdict(list)
    for line in log.read_text().split("\n"):
        if line:
            pid, before, took, pandas = line.split()
            per[pid].append((float(before), float(took), pandas == "1"))
    start = first = rest = 0.0
    pandas = False
    for tasks in per.values():
        tasks.sort()
        start += tasks[0][0]
        first += tasks[0][1]
        rest += sum(t for _, t, _ in tasks[1:])
        pandas |= tasks[-1][2]
    return {"start-up": start, "first task": first, "other tasks": rest, "pandas imported": pandas}


def profile_size(size: int, groups: int, repeats: int, tmp: Path, wds: bool) -> None:
    from sharding.run import shard_dataset

    corpus = tmp / f"corpus{size}"
    if not corpus.exists():
        generate_view_corpus(corpus, groups, seed=0, size=size)
    files = sorted(str(p) for p in corpus.rglob("*") if p.is_file())
    out = tmp / "out"
    tars = tmp / f"tars{size}"
    if wds and not tars.exists():
        bench_shard.write_tars(corpus, tars, 8)

    def shard(workers: int = 1, executor=None):
        shutil.rmtree(out, ignore_errors=True)
        if wds:  # bench_shard's wds run: one shard task per tar
            shard_dataset(str(tars), str(out), workers=workers, progress=False, label_from="cls", shard_bytes=1,
                          executor=executor)
        else:
            shard_dataset(str(corpus), str(out), workers=workers, progress=False, shard_samples=max(1, groups // 8),
                          executor=executor, **bench_shard.OPTIONS)

    bench_shard.validate_files(files)
    shard()  # warm: imports, page cache
    validate_s = min(cpu_of(lambda: bench_shard.validate_files(files)) for _ in range(repeats))
    read_s = min(cpu_of(lambda: [Path(f).read_bytes() for f in files]) for _ in range(repeats))
    shard_s = min(cpu_of(shard) for _ in range(repeats))
    best: dict[str, float] | None = None
    for _ in range(repeats):
        timer = PartTimer()
        start_process, start_thread = time.process_time(), time.thread_time()
        with patched(timer):
            with timer.part("driver: other"):
                shard()
        timer._switch()
        parts = dict(timer.seconds)
        parts["prefetch threads (reads)"] = (time.process_time() - start_process) - (time.thread_time() - start_thread)
        if best is None or sum(parts.values()) < sum(best.values()):
            best = parts

    def pooled(fn) -> float:
        before = rusage_cpu()
        fn()
        return rusage_cpu() - before

    pool_validate = min(pooled(lambda: bench_shard.baseline(files, 2)) for _ in range(repeats))
    pool_shard = min(pooled(lambda: shard(2)) for _ in range(repeats))
    workers = [worker_breakdown(lambda ex: shard(2, ex), tmp / "tasks.log") for _ in range(min(3, repeats))]
    worker = min(workers, key=lambda w: w["start-up"] + w["first task"] + w["other tasks"])

    print(f"\n== {size} px, {'WebDataset tars' if wds else 'image files'}: {len(files)} images, {sum(os.path.getsize(f) for f in files) / 2**20:.1f} MiB; "
          f"load {os.getloadavg()[0]:.1f}")
    print(f"{'in process (CPU s, best of ' + str(repeats) + ')':<52}{'validate':>10}{'shard':>10}")
    print(f"{'read files':<52}{read_s:>10.3f}")
    print(f"{'decode-validate (+ the loop)':<52}{validate_s - read_s:>10.3f}")
    for name, seconds in sorted(best.items(), key=lambda kv: -kv[1]):
        print(f"{name:<52}{'':>10}{seconds:>10.3f}")
    print(f"{'total, unwrapped':<52}{validate_s:>10.3f}{shard_s:>10.3f}")
    print(f"{'2 processes, driver + workers (getrusage)':<52}{pool_validate:>10.3f}{pool_shard:>10.3f}")
    print(f"  sharding workers: start-up {worker['start-up']:.3f}, first task {worker['first task']:.3f}, "
          f"other tasks {worker['other tasks']:.3f} (both workers); pandas imported in a worker: "
          f"{worker['pandas imported']}")
    print(f"  CPU ratio validate / shard: in process {validate_s / shard_s:.3f}, "
          f"2 processes {pool_validate / pool_shard:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="320,640", help="image sides in pixels, comma separated")
    parser.add_argument("--groups", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--inputs", default="files,tars", help="files (a folder of images), tars (the same "
                                                               "images as WebDataset tars) or both")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="profile_shard_") as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            for inputs in args.inputs.split(","):
                profile_size(size, args.groups, args.repeats, Path(tmp), wds=inputs == "tars")


if __name__ == "__main__":
    multiprocessing.set_start_method("spawn", force=True)
    main()
