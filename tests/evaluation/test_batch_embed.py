"""`embed --ray` on a real 127.0.0.1 Ray cluster: equal to single-process `embed`, resumable."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest

from deploy.local.ray_cluster import LocalRayCluster
from evaluation.embeddings import embedding_files, read_embeddings, read_embeddings_metadata
from tests.evaluation.conftest import build_dataset
from tests.evaluation.test_commands import _checkpoint
from viewstream.cli import main

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def two_roots(tmp_path_factory) -> list[str]:
    """Two datasets (labelled, different label sets; 14 + 10 groups in shards of 8 ... of 4)."""
    a = build_dataset(tmp_path_factory.mktemp("root_a"), num_groups=14, labelled=True, min_views=1, max_views=3, seed=5)
    b = build_dataset(tmp_path_factory.mktemp("root_b"), num_groups=10, labelled=False, min_views=1, max_views=2, seed=6)
    return [a, b]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, two_roots) -> str:
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoint_000003", two_roots[0], "simclr",
                       {"name": "convnet", "width": 0.25, "small_images": True}, seed=0)


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto on 127.0.0.1, started before the cluster so its workers inherit the test credentials."""
    from groundfloor.storage import Storage
    from tests.helpers.s3_server import moto_s3_server

    with moto_s3_server() as endpoint:
        Storage(endpoint).s3.create_bucket(Bucket="cat")
        yield endpoint


@pytest.fixture(scope="module")
def cluster(s3_endpoint):
    """An existing 2-CPU Ray cluster on 127.0.0.1 that `viewstream embed --ray --address` joins.

    Each run's driver is its own process, as a user's is: the test process never joins the
    cluster, so no Ray state of earlier test files in this process can reach these runs.
    """
    with LocalRayCluster(head_cpus=2, worker_nodes=0, auth=False) as c:
        yield c


@pytest.fixture(scope="module")
def single(tmp_path_factory, ckpt, two_roots) -> str:
    out = str(tmp_path_factory.mktemp("single") / "emb.parquet")
    assert main(["embed", "--checkpoint", ckpt, "--dataset", *two_roots, "--out", out, "--batch-size", "5"]) == 0
    return out


def _embed_argv(cluster, ckpt: str, datasets: list[str], out: str, *options: str) -> list[str]:
    return [sys.executable, "-m", "viewstream", "embed", "--ray", "--address", cluster.address,
            "--checkpoint", ckpt, "--dataset", *datasets, "--out", out, *options]


def _driver_env(cluster) -> dict[str, str]:
    return cluster.env | {"PYTHONPATH": os.getcwd()}


def _run_embed(cluster, ckpt: str, datasets: list[str], out: str, *options: str,
               report: Optional[Path] = None) -> subprocess.CompletedProcess:
    argv = _embed_argv(cluster, ckpt, datasets, out, *options) + (["--json", str(report)] if report else [])
    return subprocess.run(argv, env=_driver_env(cluster), capture_output=True, text=True, timeout=300)


def _by_row(path: str) -> dict:
    """(dataset, key) -> (vector, label): keys repeat across roots built from alike folders."""
    emb = read_embeddings(path)
    datasets = [d for f in embedding_files(path) for d in pq.read_table(f, columns=["dataset"]).column(0).to_pylist()]
    return {(d, k): (v, l) for d, k, v, l in zip(datasets, emb.keys, emb.vectors, emb.labels)}


def test_ray_two_workers_equals_single_process(cluster, ckpt, two_roots, single, tmp_path):
    out = str(tmp_path / "ray_out")
    done = _run_embed(cluster, ckpt, two_roots, out, "--workers", "2", "--batch-size", "3",
                      report=tmp_path / "first.json")
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "first.json").read_text())["workers"] == 2
    files = embedding_files(out)
    assert len(files) == 2 + 2  # 14 groups -> 2 shards of 8, 10 groups -> 2 shards
    ray_rows, single_rows = _by_row(out), _by_row(single)
    assert ray_rows.keys() == single_rows.keys() and len(ray_rows) == 24
    for row, (vec, label) in ray_rows.items():
        np.testing.assert_allclose(vec, single_rows[row][0], atol=1e-6)
        assert label == single_rows[row][1]
    meta = read_embeddings_metadata(files[0])
    single_meta = read_embeddings_metadata(single)
    assert meta["weights_sha256"] == single_meta["weights_sha256"] and len(meta["weights_sha256"]) == 64
    assert meta["shard"].endswith(".tar") and meta["dataset"] in two_roots
    table = pq.read_table(files[0])
    assert set(table.column("shard").to_pylist()) == {meta["shard"]}

    # A rerun skips every finished shard and rewrites nothing.
    mtimes = {f: os.stat(f).st_mtime_ns for f in files}
    again = _run_embed(cluster, ckpt, two_roots, out, "--workers", "2", "--batch-size", "3",
                       report=tmp_path / "again.json")
    assert again.returncode == 0, again.stderr[-2000:]
    report = json.loads((tmp_path / "again.json").read_text())
    assert (report["embedded_shards"], report["skipped_shards"]) == (0, 4)
    assert {f: os.stat(f).st_mtime_ns for f in embedding_files(out)} == mtimes


def test_ray_refuses_to_mix_checkpoints_in_one_folder(cluster, ckpt, two_roots, tmp_path):
    out = tmp_path / "mixed"
    out.mkdir()
    (out / "_embed.json").write_text('{"weights_sha256": "0000"}')
    refused = _run_embed(cluster, ckpt, two_roots[:1], str(out), "--workers", "1")
    assert refused.returncode == 2
    assert "made differently" in refused.stderr and "weights_sha256" in refused.stderr
    assert "Traceback" not in refused.stderr


def _embed_actor_pids(cluster) -> list[int]:
    """PIDs of the cluster's processes that host an embed actor (Ray titles them ray::ShardEmbedWorker)."""
    found = []
    for pid in cluster.pids():
        try:
            if "ShardEmbedWorker" in " ".join(psutil.Process(pid).cmdline()):
                found.append(pid)
        except psutil.Error:
            continue
    return found


def _finished(out: Path) -> list[Path]:
    """The run's finished embeddings files so far; unlike `embedding_files`, none is no error."""
    return [p for p in out.glob("*.parquet") if not p.name.startswith(".")]


def test_killed_run_resumes_without_recomputing_finished_shards(cluster, ckpt, tmp_path_factory, tmp_path):
    shards = 12
    many = build_dataset(tmp_path_factory.mktemp("many"), num_groups=8 * shards, labelled=False, min_views=1,
                         max_views=1, seed=7)
    out = tmp_path / "killed"
    argv = _embed_argv(cluster, ckpt, [many], str(out), "--workers", "1", "--batch-size", "2")
    proc = subprocess.Popen(argv, env=_driver_env(cluster), start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    # The actor's PID first (a scan of the cluster's processes is slow), then a tight wait for two
    # finished shards, so that the actor is stopped with most of its shards still to do.
    deadline = time.monotonic() + 240
    actors: list[int] = []
    while time.monotonic() < deadline and proc.poll() is None and not actors:
        actors = _embed_actor_pids(cluster)
        time.sleep(0.05)
    assert actors, proc.stderr.read().decode()[-2000:] if proc.poll() is not None else "no embed actor in 240 s"
    while time.monotonic() < deadline and proc.poll() is None and not (out.is_dir() and len(_finished(out)) >= 2):
        time.sleep(0.002)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    # The actor lives in the cluster, not in the driver's process group. Stopped first, it cannot
    # finish the rest of the shards in the moments before the GCS learns that its owner died;
    # Ray must still kill it, stopped, and a write it was in leaves a temporary file behind.
    for pid in actors:
        os.kill(pid, signal.SIGSTOP)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 60
    while _embed_actor_pids(cluster) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _embed_actor_pids(cluster), "the killed driver's actor outlived it by 60 s"
    finished = {p: p.stat().st_mtime_ns for p in _finished(out)}
    assert 2 <= len(finished) < shards
    result = _run_embed(cluster, ckpt, [many], str(out), "--workers", "1", "--batch-size", "2",
                        report=tmp_path / "report.json")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["skipped_shards"] == len(finished)
    assert report["embedded_shards"] == shards - len(finished)
    for p, mtime in finished.items():
        assert p.stat().st_mtime_ns == mtime  # not recomputed
    assert len(embedding_files(str(out))) == shards and len(read_embeddings(str(out))) == 8 * shards
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]


def test_ray_reads_an_s3_root_and_writes_s3_output_equal_to_local(cluster, s3_endpoint, ckpt, two_roots, single,
                                                                  tmp_path):
    from groundfloor.storage import Storage

    storage = Storage(s3_endpoint)
    for entry in storage.list_files(two_roots[1]):
        storage.s3.upload_file(entry.uri, "cat", f"b/{entry.relpath}")
    out = "s3://cat/emb"
    done = _run_embed(cluster, ckpt, [two_roots[0], "s3://cat/b"], out, "--workers", "2",
                      "--endpoint-url", s3_endpoint, "--batch-size", "4")
    assert done.returncode == 0, done.stderr[-2000:]
    files = [e.relpath for e in storage.list_files(out)]
    assert "_embed.json" in files and len([f for f in files if f.endswith(".parquet")]) == 4
    local = tmp_path / "copy"
    local.mkdir()
    for entry in storage.list_files(out):
        storage.s3.download_file("cat", f"emb/{entry.relpath}", str(local / entry.relpath))
    rows = _by_row(str(local))
    assert {d for d, _ in rows} == {two_roots[0], "s3://cat/b"} and len(rows) == 24
    single_rows = _by_row(single)
    for (root, key), (vec, label) in rows.items():
        reference = single_rows[(two_roots[1] if root == "s3://cat/b" else root, key)]
        np.testing.assert_allclose(vec, reference[0], atol=1e-6)
        assert label == reference[1]
