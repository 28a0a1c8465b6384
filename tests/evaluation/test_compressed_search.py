"""Compressed FAISS indexes built streaming from a Parquet embeddings dataset: bounded memory,
recall against exact search, sharded indexes merged at query time, the CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from evaluation.embeddings import read_embeddings
from evaluation.index_build import BuildConfig, build_index
from evaluation.index_eval import exact_top_k, recall_against
from evaluation.search import SearchIndex
from evaluation.sharded_index import ShardedIndex, load_index
from evaluation.synthetic_vectors import write_clustered_embeddings
from viewstream.cli import main

N, DIM, BATCH = 200_000, 128, 20_000
HOLD_OUT = 500  # queries: 5000 true neighbours measure recall@10 to ~0.005 (exact search over N is the cost)

_BUILD = """
import json, resource, sys, psutil
import faiss, numpy as np
from evaluation.index_build import BuildConfig, build_index, iter_rows
# Warm up: the first Parquet read and FAISS training fault in library code pages (~100 MiB of
# RSS that does not depend on the data); the baseline is taken after them.
first = next(iter_rows(sys.argv[1], 0, 3000, 3000))[1].vectors
faiss.index_factory(first.shape[1], "IVF16,PQ8", faiss.METRIC_INNER_PRODUCT).train(first)
del first
import threading
proc = psutil.Process()
base = proc.memory_info().rss
peak, done = [base], threading.Event()
def sample():  # RSS every 2 ms during the build (ru_maxrss would include the imports' peak)
    while not done.is_set():
        peak[0] = max(peak[0], proc.memory_info().rss)
        done.wait(0.002)
sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
import tracemalloc
tracemalloc.start()  # numpy arrays report here: the float vectors Python-side code holds
report = build_index(sys.argv[1], sys.argv[2], BuildConfig(factory="IVF256,PQ16", train_size={batch},
                     add_batch={batch}, hold_out={hold_out}), progress=False)
traced_peak = tracemalloc.get_traced_memory()[1]
done.set()
sampler.join()
print(json.dumps({{"growth": peak[0] - base, "traced_peak": traced_peak, "report": report.as_dict()}}))
""".format(batch=BATCH, hold_out=HOLD_OUT)


@pytest.fixture(scope="module")
def vectors_200k(tmp_path_factory) -> str:
    return write_clustered_embeddings(tmp_path_factory.mktemp("vec") / "emb", N, DIM, rows_per_file=40_000)


def _build_and_measure(embeddings: str, index_dir) -> dict:
    env = os.environ | {"OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    out = subprocess.run([sys.executable, "-c", _BUILD, embeddings, str(index_dir)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.integration
def test_ivfpq_from_200k_parquet_rows_in_batches_is_memory_bounded_and_recalls(vectors_200k, tmp_path):
    """Peak memory does not grow with the corpus: building from 200k rows costs what building
    from 40k rows costs, plus the extra compressed codes (holding the floats would add 82 MB)."""
    small = tmp_path / "first_40k"
    small.mkdir()
    (small / "part-00000.parquet").symlink_to(os.path.join(vectors_200k, "part-00000.parquet"))
    index_dir = tmp_path / "ivfpq"
    measured_small = _build_and_measure(str(small), tmp_path / "small_index")
    measured = _build_and_measure(vectors_200k, index_dir)
    extra_floats = (N - 40_000) * DIM * 4         # 82 MB more if the builder held the vectors
    extra_codes = (N - 40_000) * (16 + 8)         # 3.8 MB: PQ16 codes + ids the index must hold
    batch_floats = BATCH * DIM * 4                # 10 MB
    growth = measured["growth"] - measured_small["growth"]
    print(f"peak RSS growth {measured['growth'] / 2**20:.1f} MiB (200k rows) vs {measured_small['growth'] / 2**20:.1f} "
          f"MiB (40k rows); numpy peak {measured['traced_peak'] / 2**20:.1f} vs {measured_small['traced_peak'] / 2**20:.1f} "
          f"MiB; one batch {batch_floats / 2**20:.1f} MiB; report {measured['report']}")
    # Arrays held at once: the training sample (one batch of rows), its normalised copy, a batch
    # being added and its copy; the same for 40k and 200k rows.
    assert measured["traced_peak"] < 4 * batch_floats < N * DIM * 4 / 2
    assert abs(measured["traced_peak"] - measured_small["traced_peak"]) < batch_floats / 4
    # RSS: inverted lists grow by doubling (up to 3x the codes' bytes while copying) and the
    # allocators keep back some of what reading more files used (12-60 MB measured here, under
    # load); holding the floats would add 82 MB on top.
    assert growth < extra_floats * 3 / 4
    assert measured["report"]["count"] == N - HOLD_OUT
    assert measured["report"]["bytes_per_vector"] <= 32

    index = ShardedIndex.load(index_dir)
    from evaluation.index_eval import load_queries
    queries = load_queries(index_dir)
    assert queries.shape == (HOLD_OUT, DIM)
    held = json.loads((index_dir / "index.json").read_text())["held_out"]
    assert held == HOLD_OUT
    import pyarrow.parquet as pq
    rows = pq.read_table(index_dir / "queries.parquet").column("row").to_pylist()
    _, exact = exact_top_k(vectors_200k, queries, 10, rows, progress=False)
    index.set_params({"nprobe": 8})
    recall, overlap = recall_against(index.search(queries, 10).indices, exact, 10)
    print(f"recall@10 {recall:.4f} overlap@10 {overlap:.4f} nprobe 8, {index.bytes_per_vector:.1f} B/vector")
    assert recall >= 0.9
    # The CLI reports the same, and picks the nprobe.
    report = tmp_path / "eval.json"
    assert main(["search", "eval", str(index_dir), "--tune-nprobe", "--target", "0.9", "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["result"]["recall"] >= 0.9 and result["bytes_per_vector"] <= 32
    assert result["result"]["params"]["nprobe"] in [t["params"]["nprobe"] for t in result["tried"]]


def test_sharded_index_merges_to_the_same_results_as_one_index(tmp_path):
    emb = write_clustered_embeddings(tmp_path / "emb", 6000, 32, rows_per_file=1000, clusters=50)
    one, three = tmp_path / "one", tmp_path / "three"
    build_index(emb, one, BuildConfig(factory="IVF16,Flat", train_size=2000, add_batch=700), progress=False)
    build_index(emb, three, BuildConfig(factory="IVF16,Flat", train_size=2000, add_batch=700, shards=3), progress=False)
    a, b = load_index(one, params={"nprobe": 16}), load_index(three, params={"nprobe": 16})
    assert len(b.shards) == 3 and len(a) == len(b) == 6000 and a.keys == b.keys
    q = read_embeddings(emb).vectors[:50]
    ra, rb = a.search(q, 10), b.search(q, 10)
    np.testing.assert_allclose(ra.scores, rb.scores, atol=1e-5)
    exact = SearchIndex.build(read_embeddings(emb).vectors).search(q, 10)
    np.testing.assert_array_equal(rb.indices[:, 0], exact.indices[:, 0])  # nprobe = nlist: exact
    assert b.search_keys(q[:1], 3)[0][0][0] == a.keys[int(exact.indices[0, 0])]


def test_factory_strings_opq_and_hnsw_over_ivf_centroids_with_query_params(tmp_path):
    emb = write_clustered_embeddings(tmp_path / "emb", 4000, 32, rows_per_file=1000, clusters=40)
    for factory, params in (("OPQ8,IVF32,PQ8", {"nprobe": 8}), ("IVF32_HNSW16,PQ8", {"nprobe": 8, "quantizer_efSearch": 32}),
                            ("HNSW16", {"efSearch": 64})):
        out = tmp_path / factory.replace(",", "_")
        assert main(["search", "build", emb, str(out), "--index", factory, "--train-size", "2000",
                     "--hold-out", "100", "--add-batch", "500"]) == 0
        index = load_index(out, params=params)
        assert len(index) == 3900 and index.params == params
        assert main(["search", "eval", str(out), "--k", "10", *sum((["--param", f"{k}={v}"] for k, v in params.items()), [])]) == 0


def test_bad_factory_and_bad_params_are_one_line_errors(tmp_path, capsys):
    emb = write_clustered_embeddings(tmp_path / "emb", 500, 16, rows_per_file=500, clusters=5)
    assert main(["search", "build", emb, str(tmp_path / "x"), "--index", "IVF16,Bogus9"]) == 2
    assert "not a FAISS factory string" in capsys.readouterr().err
    assert main(["search", "build", emb, str(tmp_path / "y"), "--index", "IVF4,Flat", "--train-size", "400"]) == 0
    capsys.readouterr()
    assert main(["search", "query", str(tmp_path / "y"), "--key", "v000000001", "--param", "nprobe"]) == 2
    assert "NAME=NUMBER" in capsys.readouterr().err
    assert main(["search", "query", str(tmp_path / "y"), "--key", "v000000001", "--ef-search", "8"]) == 2
    assert "does not apply" in capsys.readouterr().err
    assert main(["search", "query", str(tmp_path / "y"), "--key", "v000000001", "--nprobe", "4", "--device", "cuda"]) == 0
    out = capsys.readouterr().out
    assert "searching on the CPU" in out and "v000000000" in out  # its group-mate comes first
