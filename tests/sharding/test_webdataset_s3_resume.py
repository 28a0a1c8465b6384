"""WebDataset tars on moto S3 (plain and gzipped, a prefix and a brace pattern), and a tar build
SIGKILLed mid-shard that resumes to the bytes of a run that never stopped (issue 23)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import boto3
import pytest

from sharding.run import shard_dataset

from tests.sharding.conftest import REPO, tree_digest
from tests.sharding.test_webdataset import read_output
from tests.sharding.wds_corpus import write_wds_corpus

pytestmark = pytest.mark.integration

CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import sharding.tar_writer
    from sharding.run import shard_dataset
    original = sharding.tar_writer.TarWriter.write_sample
    calls = {"n": 0}
    def write_sample(self, key, members):
        calls["n"] += 1
        if calls["n"] == int(sys.argv[3]):
            self._write(b"partial"); self._sink.flush(); os.kill(os.getpid(), signal.SIGKILL)
        return original(self, key, members)
    sharding.tar_writer.TarWriter.write_sample = write_sample
    shard_dataset(sys.argv[1], sys.argv[2], progress=False, label_from="cls", shard_bytes=1)
    """
)


def test_tar_build_killed_mid_shard_resumes_to_the_same_bytes(tmp_path):
    corpus = write_wds_corpus(tmp_path / "in")
    clean = tmp_path / "clean"
    shard_dataset(str(corpus.root), str(clean), progress=False, label_from="cls", shard_bytes=1)
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(corpus.root), str(killed), "6"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    manifest = killed / "manifest.json"
    assert not manifest.exists() or not json.loads(manifest.read_text())["complete"]
    summary = shard_dataset(str(corpus.root), str(killed), progress=False, label_from="cls", shard_bytes=1)
    assert summary.num_shards_skipped >= 1 and summary.num_shards_built >= 1
    assert tree_digest(killed) == tree_digest(clean)


def test_tars_on_s3_prefix_and_brace_pattern(tmp_path, s3_endpoint):
    corpus = write_wds_corpus(tmp_path / "in")
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket="wds-input")
    for path in sorted(corpus.root.iterdir()):
        client.upload_file(str(path), "wds-input", f"laion/{path.name}")
    client.put_object(Bucket="wds-input", Key="laion/00000_stats.json", Body=b"{}")  # img2dataset's sidecar
    remote = {str(corpus.root / name): f"s3://wds-input/laion/{name}"
              for name in ("shards-000000.tar", "shards-000001.tar", "extra-000000.tar.gz")}

    def as_s3(source: str) -> str:
        tar, member = source.split("#", 1)
        return f"{remote[tar]}#{member}"

    out = tmp_path / "from-prefix"
    summary = shard_dataset("s3://wds-input/laion", str(out), endpoint_url=s3_endpoint, progress=False,
                            label_from="cls")
    metas, views, rows = read_output(out)
    assert views == {as_s3(s): data for s, data in corpus.images.items()}
    assert {r["source"] for r in rows} == {as_s3(s) for s in corpus.broken + corpus.no_image}
    assert {m["label"] for m in metas.values()} == {"0", "1", "2"} and summary.num_quarantined == 2
    out = tmp_path / "from-pattern"
    shard_dataset("s3://wds-input/laion/shards-{000000..000001}.tar", str(out), endpoint_url=s3_endpoint,
                  progress=False)
    assert set(read_output(out)[1]) == {as_s3(s) for s in corpus.images if ".tar.gz#" not in s}
