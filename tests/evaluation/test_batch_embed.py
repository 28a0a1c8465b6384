"""`embed --ray` on a real 127.0.0.1 Ray cluster: equal to single-process `embed`, resumable."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

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
    """An existing 2-CPU Ray cluster on 127.0.0.1 (no auth: this process joins it too)."""
    import ray

    with LocalRayCluster(head_cpus=2, worker_nodes=0, auth=False) as c:
        ray.init(address=c.address, configure_logging=False)
        yield c
        ray.shutdown()


@pytest.fixture(scope="module")
def single(tmp_path_factory, ckpt, two_roots) -> str:
    out = str(tmp_path_factory.mktemp("single") / "emb.parquet")
    assert main(["embed", "--checkpoint", ckpt, "--dataset", *two_roots, "--out", out, "--batch-size", "5"]) == 0
    return out


def _by_row(path: str) -> dict:
    """(dataset, key) -> (vector, label): keys repeat across roots built from alike folders."""
    emb = read_embeddings(path)
    datasets = [d for f in embedding_files(path) for d in pq.read_table(f, columns=["dataset"]).column(0).to_pylist()]
    return {(d, k): (v, l) for d, k, v, l in zip(datasets, emb.keys, emb.vectors, emb.labels)}


def test_ray_two_workers_equals_single_process(cluster, ckpt, two_roots, single, tmp_path):
    out = str(tmp_path / "ray_out")
    assert main(["embed", "--ray", "--workers", "2", "--checkpoint", ckpt, "--dataset", *two_roots,
                 "--out", out, "--batch-size", "3"]) == 0
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
    from evaluation.batch_embed import EmbedJob, embed_on_ray
    job_meta = read_embeddings_metadata(files[0])
    identity = {k: v for k, v in job_meta.items() if k not in ("shard", "dataset", "dim", "format")}
    report = embed_on_ray(EmbedJob(ckpt, 32, 1.0, 3, out, identity, tuple(identity["label_vocabulary"])),
                          two_roots, workers=2, progress=False)
    assert (report.embedded_shards, report.skipped_shards) == (0, 4)
    assert {f: os.stat(f).st_mtime_ns for f in embedding_files(out)} == mtimes


def test_ray_refuses_to_mix_checkpoints_in_one_folder(cluster, ckpt, two_roots, tmp_path, capsys):
    out = str(tmp_path / "mixed")
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "_embed.json").write_text('{"weights_sha256": "0000"}')
    assert main(["embed", "--ray", "--workers", "1", "--checkpoint", ckpt, "--dataset", two_roots[0],
                 "--out", out]) == 2
    err = capsys.readouterr().err
    assert "made differently" in err and "weights_sha256" in err


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


def test_killed_run_resumes_without_recomputing_finished_shards(cluster, ckpt, tmp_path_factory, tmp_path):
    many = build_dataset(tmp_path_factory.mktemp("many"), num_groups=48, labelled=False, min_views=1,
                         max_views=1, seed=7)  # 6 shards
    out = tmp_path / "killed"
    argv = [sys.executable, "-m", "viewstream", "embed", "--ray", "--workers", "1", "--address", cluster.address,
            "--checkpoint", ckpt, "--dataset", many, "--out", str(out), "--batch-size", "2"]
    env = cluster.env | {"PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen(argv, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if out.is_dir() and len([p for p in out.glob("*.parquet") if not p.name.startswith(".")]) >= 2:
            break
        time.sleep(0.01)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    actors = _embed_actor_pids(cluster)
    assert actors  # the wait below is not vacuous: the actor runs in the cluster
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
    finished = {p: p.stat().st_mtime_ns for p in out.glob("*.parquet") if not p.name.startswith(".")}
    assert 2 <= len(finished) < 6
    result = subprocess.run(argv + ["--json", str(tmp_path / "report.json")], env=env, capture_output=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    import json

    report = json.loads((tmp_path / "report.json").read_text())
    assert report["skipped_shards"] == len(finished)
    assert report["embedded_shards"] == 6 - len(finished)
    for p, mtime in finished.items():
        assert p.stat().st_mtime_ns == mtime  # not recomputed
    assert len(embedding_files(str(out))) == 6 and len(read_embeddings(str(out))) == 48
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]


def test_ray_reads_an_s3_root_and_writes_s3_output_equal_to_local(cluster, s3_endpoint, ckpt, two_roots, single,
                                                                  tmp_path):
    from groundfloor.storage import Storage

    storage = Storage(s3_endpoint)
    for entry in storage.list_files(two_roots[1]):
        storage.s3.upload_file(entry.uri, "cat", f"b/{entry.relpath}")
    out = "s3://cat/emb"
    assert main(["embed", "--ray", "--workers", "2", "--checkpoint", ckpt, "--dataset", two_roots[0], "s3://cat/b",
                 "--out", out, "--endpoint-url", s3_endpoint, "--batch-size", "4"]) == 0
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
