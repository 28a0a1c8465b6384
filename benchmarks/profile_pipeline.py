"""Where the DALI view pipeline spends CPU beyond decoding: per-op CPU seconds per sample.

    .venv/bin/python benchmarks/profile_pipeline.py [--groups 300] [--repeats 3] [--spec simclr]

CPU seconds (`time.process_time`: every thread of this process, never wall time: the box is
shared), the best of `--repeats` epochs, on bench_pipeline's corpus. One epoch's prepared
batches are held in memory and replayed into graphs that keep the decoders and add the view ops
one at a time (an op left out is replaced by the identity while the graph is built), so each
row's increase over the previous one is that op's cost. "+host" is `ViewLoader.iter_epoch`
end to end (reading, sha256 checks, drawing, DALI, hand-over to torch): its excess over the
full graph is the host side.

SimCLR two views at 224, 200 groups (~2 photos decoded per sample), DALI 2.4 CPU, 2 threads,
ms of CPU per sample, best of 3 epochs on a shared 2-core box (load 4-5: +-0.3 ms per row):

    stage            fn.gaussian_blur + as_array copy    fn.filter blur + DLPack
    decode                         2.34                          2.57
    resize                         2.41                          2.24
    colour twist                   2.35                          1.99
    blur                           2.54                          0.65
    flip+normalize                 0.24 (solarize row -0.42)     0.41 (solarize row -0.22)
    host                           1.16                          0.48
    total                         10.62                          8.12

What is left is DALI's own CPU kernels: decode, the antialiased resize (~1.1 ms per 224 px
view) and the colour map. The colour twist cost ~1.5 ms per view in the tables above, most of it
its float -> uint8 store (1.6 ms with a uint8 output, 0.44 ms with float, one view, quiet box);
it now writes float and the ops after it work on float (`pipeline.colour`).
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import ViewLoader, ViewSpec  # noqa: E402
from pipeline.dali_graph import build_view_pipeline  # noqa: E402
from sharding.run import shard_dataset  # noqa: E402
from testbed.scale import write_photo_corpus  # noqa: E402

# stages added in this order, each with the DALI functions it covers (the blur was
# fn.gaussian_blur before pipeline.blur), each stage keeping the ones before it
STAGES = {"resize": ["resize"], "colour twist": ["color_twist"], "blur": ["gaussian_blur", "filter"],
          "solarize": ["lookup_table"], "flip+normalize": ["crop_mirror_normalize"]}


@contextlib.contextmanager
def identity_ops(names: list[str]):
    """Replace `nvidia.dali.fn.<name>` by the identity while a graph is built."""
    from nvidia.dali import fn

    saved = {n: getattr(fn, n) for n in names if hasattr(fn, n)}
    try:
        for n in saved:
            setattr(fn, n, lambda x, *a, **k: x)
        yield
    finally:
        for n, op in saved.items():
            setattr(fn, n, op)


def replay_cpu(spec: ViewSpec, feeds: list, args, samples: int, *, decode_only: bool = False,
               skip: tuple[str, ...] = ()) -> float:
    """Best CPU seconds per sample of a graph replaying `feeds`."""
    state = {"next": 0}

    def source():
        if state["next"] == len(feeds):
            state["next"] = 0
            raise StopIteration
        state["next"] += 1
        return feeds[state["next"] - 1]

    with warnings.catch_warnings(), identity_ops(list(skip)):
        warnings.filterwarnings("ignore", message="The external source node")
        pipe = build_view_pipeline(spec, source, device="cpu", batch_size=args.batch_size,
                                   num_threads=args.threads, prefetch=2, decode_only=decode_only)
    best = float("inf")
    for epoch in range(args.repeats + 1):
        cpu = time.process_time()
        while True:
            try:
                pipe.run()
            except StopIteration:
                pipe.reset()
                break
        if epoch:
            best = min(best, time.process_time() - cpu)
    del pipe
    return best / samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--groups", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--spec", choices=["simclr", "multicrop"], default="simclr")
    args = parser.parse_args()
    spec = (ViewSpec.simclr(size=224) if args.spec == "simclr"
            else ViewSpec.multicrop(global_size=224, local_size=96, num_local=6))
    with tempfile.TemporaryDirectory(prefix="profile_pipeline_") as tmp:
        images, dataset = Path(tmp) / "images", str(Path(tmp) / "dataset")
        write_photo_corpus(str(images), args.groups, (1, 6))
        shard_dataset(str(images), dataset, group_by="dir", label_from="parent",
                      shard_samples=100, workers=2, progress=False)
        loader = ViewLoader(dataset, spec, args.batch_size, num_threads=args.threads, seed=0)
        feeds = [item.feed for item in loader.prepared_batches(0) if item.feed is not None]
        samples = sum(len(feed[0]) for feed in feeds)
        rows = [("decode", replay_cpu(spec, feeds, args, samples, decode_only=True))]
        names = list(STAGES)
        for k, name in enumerate(names):
            skip = tuple(op for later in names[k + 1:] for op in STAGES[later])
            rows.append((f"+{name}", replay_cpu(spec, feeds, args, samples, skip=skip)))
        best = float("inf")
        for epoch in range(args.repeats + 1):
            cpu = time.process_time()
            for batch in loader.iter_epoch(0):
                pass
            if epoch:
                best = min(best, time.process_time() - cpu)
        rows.append(("+host (ViewLoader)", best / samples))
    previous = 0.0
    print(f"{'stage':28s} {'ms/sample':>10s} {'added':>8s}   ({samples} samples, {args.spec})")
    for name, cpu in rows:
        print(f"{name:28s} {1e3 * cpu:10.2f} {1e3 * (cpu - previous):8.2f}")
        previous = cpu
    return 0


if __name__ == "__main__":
    sys.exit(main())
