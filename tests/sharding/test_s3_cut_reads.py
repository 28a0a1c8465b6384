"""Every S3 read survives a dropped connection: whole-object and ranged reads resume a body cut
mid-way from the byte where it stopped (botocore's own retries end once the headers arrive)."""
from __future__ import annotations

import pytest

from groundfloor.storage import Storage
from testbed.faulty_proxy import DroppingProxy
from tests.helpers.s3_server import moto_s3_server

pytestmark = pytest.mark.integration
PAYLOAD = bytes(range(256)) * 400  # 102,400 bytes, every offset distinguishable


@pytest.fixture(scope="module")
def s3_port():
    with moto_s3_server() as endpoint:
        storage = Storage(endpoint)
        storage.s3.create_bucket(Bucket="cut")
        storage.s3.put_object(Bucket="cut", Key="blob", Body=PAYLOAD)
        storage.s3.put_object(Bucket="cut", Key="small.json", Body=b'{"a": 1}' * 40)
        storage.s3.put_object(Bucket="cut", Key="empty", Body=b"")
        yield int(endpoint.rsplit(":", 1)[1])


@pytest.fixture
def proxy(s3_port):
    proxy = DroppingProxy(s3_port)
    yield proxy
    proxy.close()


@pytest.mark.parametrize("key", ["blob", "small.json"])
def test_a_whole_object_read_resumes_a_cut_body(proxy, key):
    storage = Storage(proxy.url)
    expected = Storage(f"http://127.0.0.1:{proxy.upstream_port}").read_bytes(f"s3://cut/{key}")
    proxy.cut_bodies(times=2)
    assert storage.read_bytes(f"s3://cut/{key}") == expected
    assert proxy.drops == 2


@pytest.mark.parametrize("start,length", [(0, 100), (5_000, 60_000), (102_300, 100)])
def test_a_ranged_read_resumes_a_cut_body_inside_its_range(proxy, start, length):
    storage = Storage(proxy.url)
    proxy.cut_bodies(times=2)
    assert storage.read_range("s3://cut/blob", start, length) == PAYLOAD[start:start + length]
    assert proxy.drops == 2


def test_open_read_resumes_too(proxy):
    proxy.cut_bodies(times=1)
    with Storage(proxy.url).open_read("s3://cut/blob") as f:
        assert f.read() == PAYLOAD
    assert proxy.drops == 1


def test_an_empty_object_reads_as_empty(s3_port):
    assert Storage(f"http://127.0.0.1:{s3_port}").read_bytes("s3://cut/empty") == b""


def test_a_read_that_never_gets_through_is_one_error_naming_the_uri(proxy):
    proxy.cut_bodies(times=100)
    with pytest.raises(ConnectionError, match=r"s3://cut/small.json: gave up .* failed attempts"):
        Storage(proxy.url).read_bytes("s3://cut/small.json")
