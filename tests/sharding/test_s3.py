"""Acceptance 5: sharding straight to s3:// (moto's S3 server on 127.0.0.1) gives objects
byte-identical to the local output, and s3:// input (prefix or manifest) works too."""
from __future__ import annotations

import io
import json

import boto3
import pytest

from sharding.dataset import read_index, read_sample, read_shards
from sharding.inspect import inspect_dataset
from sharding.run import shard_dataset
from groundfloor.storage import Storage
from groundfloor.storage.s3 import _S3AtomicWriter

from tests.sharding.conftest import tree_digest

pytestmark = pytest.mark.integration
OPTIONS = dict(group_by="dir", label_from="parent", shard_samples=6)


@pytest.fixture()
def bucket(s3_endpoint, request):
    name = request.node.name.replace("_", "-").lower()[:40]
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


def s3_objects(endpoint: str, bucket: str, prefix: str) -> dict[str, bytes]:
    client = boto3.client("s3", endpoint_url=endpoint)
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for o in page.get("Contents", [])]
    return {k[len(prefix):]: client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def test_s3_output_identical_to_local(view_corpus, tmp_path, s3_endpoint, bucket):
    local = tmp_path / "local"
    shard_dataset(str(view_corpus), str(local), progress=False, **OPTIONS)
    remote = f"s3://{bucket}/datasets/views"
    summary = shard_dataset(str(view_corpus), remote, endpoint_url=s3_endpoint, workers=2, progress=False, **OPTIONS)
    assert summary.num_samples == 24
    objects = s3_objects(s3_endpoint, bucket, "datasets/views/")
    import hashlib
    assert {k: hashlib.sha256(v).hexdigest() for k, v in objects.items()} == tree_digest(local)
    # Readers and inspect work on the S3 dataset (ranged reads for samples).
    storage = Storage(s3_endpoint)
    row = read_index(remote, storage).to_pylist()[0]
    members = read_sample(remote, row["shard"], row["key"], storage)
    assert json.loads(members["json"])["group_id"] == row["group_id"]
    report = inspect_dataset(remote, grid=f"{remote}/sheet.png", grid_groups=3, endpoint_url=s3_endpoint)
    assert report.ok and report.verified == len(read_shards(remote, storage).to_pylist())
    # A rerun against S3 skips every finished shard.
    again = shard_dataset(str(view_corpus), remote, endpoint_url=s3_endpoint, progress=False, **OPTIONS)
    assert again.num_shards_built == 0


def test_s3_input_prefix_and_manifest(view_corpus, tmp_path, s3_endpoint, bucket, monkeypatch):
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    files = sorted(p for p in view_corpus.rglob("*") if p.is_file())
    for path in files:
        client.upload_file(str(path), bucket, f"raw/{path.relative_to(view_corpus)}")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)  # the standard variable, no flag
    local_in = tmp_path / "from_local"
    shard_dataset(str(view_corpus), str(local_in), progress=False, **OPTIONS)
    from_s3 = tmp_path / "from_s3"
    summary = shard_dataset(f"s3://{bucket}/raw", str(from_s3), progress=False, **OPTIONS)
    assert summary.num_inputs == len(files) and summary.num_quarantined == 0
    ours, theirs = read_index(str(from_s3)).to_pylist(), read_index(str(local_in)).to_pylist()
    assert ours == theirs  # same keys, groups, labels, views and bytes
    row = ours[0]
    meta = json.loads(read_sample(str(from_s3), row["shard"], row["key"])["json"])
    assert meta["sources"][0].startswith(f"s3://{bucket}/raw/")
    # A JSONL manifest stored on S3 with s3:// uris and explicit groups.
    lines = [json.dumps({"uri": f"s3://{bucket}/raw/{p.relative_to(view_corpus)}",
                         "group": str(p.parent.relative_to(view_corpus)), "label": p.parent.parent.name})
             for p in files]
    client.put_object(Bucket=bucket, Key="lists/all.jsonl", Body="\n".join(lines).encode())
    via_manifest = tmp_path / "via_manifest"
    shard_dataset(f"s3://{bucket}/lists/all.jsonl", str(via_manifest), progress=False, shard_samples=6)
    assert read_index(str(via_manifest)).to_pylist() == ours


def test_multipart_upload_is_atomic(s3_endpoint, bucket):
    storage = Storage(s3_endpoint)
    uri = f"s3://{bucket}/big.bin"
    data = bytes(range(256)) * (11 * 2**20 // 256)  # 11 MiB: three 5 MiB parts
    with storage.open_atomic_write(uri) as f:
        assert isinstance(f, _S3AtomicWriter)
        f._part_bytes = 5 * 2**20
        for start in range(0, len(data), 2**20):
            f.write(data[start:start + 2**20])
        assert not storage.exists(uri)  # nothing visible before completion
    assert storage.read_bytes(uri) == data
    assert storage.read_range(uri, 5 * 2**20 - 3, 10) == data[5 * 2**20 - 3:5 * 2**20 + 7]
    with pytest.raises(RuntimeError):
        with storage.open_atomic_write(f"s3://{bucket}/failed.bin") as f:
            f._part_bytes = 5 * 2**20
            f.write(data)
            raise RuntimeError("writer died")
    assert not storage.exists(f"s3://{bucket}/failed.bin")
    assert not storage.s3.list_multipart_uploads(Bucket=bucket).get("Uploads")


def test_s3_inventory_is_one_input_equal_to_the_listing(view_corpus, tmp_path, s3_endpoint, bucket):
    """An S3 Inventory (manifest.json + Parquet data files, in another bucket) lists the same
    objects as a LIST of the source bucket: the datasets are identical."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    source = f"{bucket}-src"[:63]
    client.create_bucket(Bucket=source)
    files = sorted(p for p in view_corpus.rglob("*") if p.is_file())
    rows = []
    for path in files:
        key = str(path.relative_to(view_corpus))
        client.upload_file(str(path), source, key)
        rows.append({"bucket": source, "key": key, "size": path.stat().st_size, "is_latest": True})
    rows.append({"bucket": source, "key": "folder/", "size": 0, "is_latest": True})  # a console placeholder
    listed = []
    for number, part in enumerate((rows[1::2], rows[0::2])):  # two data files, rows interleaved
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(part), buffer)
        key = f"inventory/{source}/all/data/part-{number}.parquet"
        client.put_object(Bucket=bucket, Key=key, Body=buffer.getvalue())
        listed.append({"key": key, "size": len(buffer.getvalue()), "MD5checksum": "x"})
    inventory = {"sourceBucket": source, "destinationBucket": f"arn:aws:s3:::{bucket}", "version": "2016-11-30",
                 "fileFormat": "Parquet", "fileSchema": "message s3.inventory { ... }", "files": listed}
    manifest_uri = f"s3://{bucket}/inventory/{source}/all/2026-12-01T01-00Z/manifest.json"
    client.put_object(Bucket=bucket, Key=manifest_uri.split("/", 3)[3], Body=json.dumps(inventory).encode())

    by_listing, by_inventory = tmp_path / "listing", tmp_path / "inventory"
    shard_dataset(f"s3://{source}", str(by_listing), endpoint_url=s3_endpoint, progress=False, **OPTIONS)
    summary = shard_dataset(manifest_uri, str(by_inventory), endpoint_url=s3_endpoint, progress=False, **OPTIONS)
    assert summary.num_inputs == len(files) and summary.num_samples == 24
    ours, theirs = tree_digest(by_inventory), tree_digest(by_listing)
    assert ours.pop("manifest.json") != theirs.pop("manifest.json")  # config.input names the input
    assert ours == theirs
