"""Acceptance 5 of issue 3: reading from S3 (moto on 127.0.0.1) equals reading from disk, also
when the connection drops in the middle of a shard."""
from __future__ import annotations

import os

import pytest

from tests.helpers.s3_server import moto_s3_server
import torch

from pipeline import ViewLoader, ViewSpec
from pipeline.streams import ResumableS3Stream
from groundfloor.storage import Storage

from testbed.faulty_proxy import DroppingProxy

pytestmark = pytest.mark.integration
SPEC = ViewSpec.multicrop(global_size=32, local_size=16, num_local=2)


@pytest.fixture(scope="module")
def s3_server():
    with moto_s3_server() as endpoint:
        Storage(endpoint).s3.create_bucket(Bucket="data")
        yield int(endpoint.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def s3_dataset(s3_server, uneven_dataset) -> str:
    storage = Storage(f"http://127.0.0.1:{s3_server}")
    for entry in storage.list_files(uneven_dataset):
        storage.s3.upload_file(entry.uri, "data", f"views/{entry.relpath}")
    return "s3://data/views"


def batches(loader: ViewLoader, epoch: int = 0):
    return [(b.keys, b.view_sources, b.views) for b in loader.iter_epoch(epoch)]


def assert_equal_epochs(a, b):
    assert [x[0] for x in a] == [y[0] for y in b]
    for (_, sa, va), (_, sb, vb) in zip(a, b):
        assert torch.equal(sa, sb)
        assert all(torch.equal(x, y) for x, y in zip(va, vb))


def test_s3_epoch_equals_local_epoch(s3_server, s3_dataset, uneven_dataset):
    for rank in range(2):
        local = ViewLoader(uneven_dataset, SPEC, 4, rank=rank, world_size=2, seed=3)
        remote = ViewLoader(s3_dataset, SPEC, 4, rank=rank, world_size=2, seed=3,
                            endpoint_url=f"http://127.0.0.1:{s3_server}")
        assert remote.batches_per_epoch == local.batches_per_epoch
        assert_equal_epochs(batches(remote), batches(local))
        assert remote.stats.s3_resumes == 0


def test_dropped_connection_loses_and_repeats_no_sample(s3_server, s3_dataset, uneven_dataset):
    proxy = DroppingProxy(s3_server, drop_after=20_000)
    try:
        remote = ViewLoader(s3_dataset, SPEC, 4, seed=9, endpoint_url=proxy.url)
        proxy.arm(times=3)  # cut three shard downloads mid-object
        got = batches(remote, epoch=1)
        assert proxy.drops == 3
        assert remote.stats.s3_resumes >= 3
    finally:
        proxy.close()
    expected = batches(ViewLoader(uneven_dataset, SPEC, 4, seed=9), epoch=1)
    keys = [k for b in got for k in b[0]]
    assert len(keys) == len(set(keys)) == 23
    assert_equal_epochs(got, expected)


def test_stream_resumes_with_range_requests_byte_exact(s3_server):
    storage = Storage(f"http://127.0.0.1:{s3_server}")
    payload = os.urandom(300_000)
    storage.s3.put_object(Bucket="data", Key="blob", Body=payload)
    proxy = DroppingProxy(s3_server, drop_after=50_000)
    try:
        client = Storage(proxy.url).s3
        proxy.arm(times=2)
        stream = ResumableS3Stream(client, "data", "blob", backoff_s=0.01)
        chunks = []
        while chunk := stream.read(7_001):
            chunks.append(chunk)
        assert b"".join(chunks) == payload
        assert stream.resumes >= 2 and proxy.drops == 2
    finally:
        proxy.close()


def test_stream_gives_up_with_a_clear_error_when_the_server_is_gone(s3_server):
    storage = Storage(f"http://127.0.0.1:{s3_server}")
    storage.s3.put_object(Bucket="data", Key="blob2", Body=b"x" * 16_000_000)  # > socket buffers
    import boto3
    from botocore.config import Config

    proxy = DroppingProxy(s3_server, drop_after=10_000)
    client = boto3.session.Session().client("s3", endpoint_url=proxy.url,
                                            config=Config(retries={"max_attempts": 1}))
    stream = ResumableS3Stream(client, "data", "blob2", max_retries=2, backoff_s=0.01)
    first = stream.read(1000)
    assert first == b"x" * 1000
    proxy.close()  # connections cut and nothing listens any more: every reconnect fails
    with pytest.raises(ConnectionError, match="gave up"):
        while stream.read(1_000_000):
            pass


def test_half_of_all_bodies_cut_gives_the_batches_of_a_fault_free_run(s3_server, s3_dataset, uneven_dataset):
    """manifest.json, shards.parquet, index parts, .idx files and tars: one response in two is
    cut inside its body, from the loader's construction to the end of the epoch."""
    proxy = DroppingProxy(s3_server)
    try:
        proxy.cut_bodies(times=10_000, every=2)
        remote = ViewLoader(s3_dataset, SPEC, 4, rank=1, world_size=2, seed=5, endpoint_url=proxy.url)
        got = batches(remote, epoch=2)
        assert proxy.drops >= 6
    finally:
        proxy.close()
    expected = batches(ViewLoader(uneven_dataset, SPEC, 4, rank=1, world_size=2, seed=5), epoch=2)
    assert_equal_epochs(got, expected)


def test_latency_proxy_delays_each_response_and_reads_stay_exact(s3_server, s3_dataset, uneven_dataset):
    import time

    proxy = DroppingProxy(s3_server, first_byte_latency_s=0.05)
    try:
        client = Storage(proxy.url).s3
        client.head_bucket(Bucket="data")  # connection made
        start = time.perf_counter()
        for _ in range(3):  # one kept-alive connection, three requests: three delays
            client.head_bucket(Bucket="data")
        assert time.perf_counter() - start >= 0.15
        remote = ViewLoader(s3_dataset, SPEC, 4, seed=3, endpoint_url=proxy.url)
        assert remote.streams == 6  # the S3 default
        assert_equal_epochs(batches(remote), batches(ViewLoader(uneven_dataset, SPEC, 4, seed=3)))
    finally:
        proxy.close()
