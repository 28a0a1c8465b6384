"""Every storage backend keeps the same contract: read, ranged read, list, atomic write and
remove (where supported), and a missing object is FileNotFoundError naming the URI. Real servers: a folder,
moto's S3 on 127.0.0.1, Python's http.server on 127.0.0.1."""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.helpers.http_server import http_folder_server
from tests.helpers.s3_server import moto_s3_server

from groundfloor.storage import Storage, join
from groundfloor.storage.s3 import S3Backend
from groundfloor.errors import UsageError

FILES = {"a.bin": bytes(range(256)) * 4, "a/b.txt": b"hello", "a/c/d.txt": b"deep", "a-x": b"dash", "b": b""}


@dataclass
class Case:
    name: str
    storage: Storage
    root: str
    writable: bool
    listable: bool


def _write_local(root: Path) -> None:
    for rel, data in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


@pytest.fixture(params=["local", "s3", "http"])
def case(request, tmp_path) -> Iterator[Case]:
    if request.param == "local":
        _write_local(tmp_path)
        yield Case("local", Storage(), str(tmp_path), True, True)
    elif request.param == "s3":
        with moto_s3_server() as endpoint:
            storage = Storage(endpoint)
            storage.s3.create_bucket(Bucket="conf")
            for rel, data in FILES.items():
                storage.s3.put_object(Bucket="conf", Key=f"root/{rel}", Body=data)
            yield Case("s3", storage, "s3://conf/root", True, True)
    else:
        _write_local(tmp_path)
        with http_folder_server(tmp_path) as url:
            yield Case("http", Storage(), url, False, False)


def test_read_whole_and_range(case):
    storage = case.storage
    assert storage.read_bytes(join(case.root, "a/b.txt")) == b"hello"
    assert storage.read_bytes(join(case.root, "b")) == b""
    data = FILES["a.bin"]
    assert storage.read_range(join(case.root, "a.bin"), 250, 10) == data[250:260]
    assert storage.read_range(join(case.root, "a.bin"), 0, 0) == b""
    with storage.open_read(join(case.root, "a/c/d.txt")) as f:
        assert f.read() == b"deep"
    stream = storage.open_stream(join(case.root, "a.bin"), 64)
    try:
        assert stream.read() == data
    finally:
        stream.close()
    assert storage.size(join(case.root, "a.bin")) == len(data)
    assert storage.exists(join(case.root, "a/b.txt"))
    assert not storage.exists(join(case.root, "nope.txt"))


def test_missing_object_is_file_not_found_naming_the_uri(case):
    missing = join(case.root, "missing/thing.jpg")
    for call in (lambda: case.storage.read_bytes(missing),
                 lambda: case.storage.read_range(missing, 0, 4),
                 lambda: case.storage.size(missing)):
        with pytest.raises(FileNotFoundError) as err:
            call()
        assert "missing/thing.jpg" in str(err.value)


def test_listing_is_sorted_by_relative_path_or_refused(case):
    if not case.listable:
        assert not case.storage.is_folder(case.root)
        with pytest.raises(UsageError, match="cannot be listed"):
            case.storage.list_files(case.root)
        return
    entries = case.storage.list_files(case.root)
    assert [e.relpath for e in entries] == sorted(FILES)
    assert {e.relpath: e.size for e in entries} == {k: len(v) for k, v in FILES.items()}
    assert all(case.storage.read_bytes(e.uri) == FILES[e.relpath] for e in entries)
    assert case.storage.list_files(join(case.root, "absent")) == []


def test_atomic_write_visible_only_on_success(case):
    target = join(case.root, "out/new.bin")
    if not case.writable:
        with pytest.raises(UsageError, match="read-only"):
            case.storage.write_bytes(target, b"x")
        return
    with pytest.raises(RuntimeError):
        with case.storage.open_atomic_write(target) as f:
            f.write(b"partial")
            raise RuntimeError("killed mid-write")
    assert not case.storage.exists(target)
    case.storage.write_bytes(target, b"complete")
    assert case.storage.read_bytes(target) == b"complete"
    assert case.storage.remove_unfinished_writes(case.root, ("out",)) == 0


def test_remove_one_object_and_a_missing_one_is_a_no_op(case):
    if not case.writable:
        with pytest.raises(UsageError, match="read-only"):
            case.storage.remove(join(case.root, "a/b.txt"))
        assert case.storage.read_bytes(join(case.root, "a/b.txt")) == b"hello"
        return
    folder = join(case.root, "rm")
    for name in ("x.bin", "y.bin"):
        case.storage.write_bytes(join(folder, name), name.encode())
    case.storage.remove(join(folder, "x.bin"))
    assert not case.storage.exists(join(folder, "x.bin"))
    case.storage.remove(join(folder, "x.bin"))  # again: already gone, nothing to do
    case.storage.remove(join(case.root, "never/there.bin"))
    assert [e.relpath for e in case.storage.list_files(folder)] == ["y.bin"]
    assert case.storage.read_bytes(join(folder, "y.bin")) == b"y.bin"


def test_storage_survives_pickling(case):
    clone = pickle.loads(pickle.dumps(case.storage))
    assert clone.read_bytes(join(case.root, "a/b.txt")) == b"hello"
    assert clone.endpoint_url == case.storage.endpoint_url


def test_unknown_scheme_is_a_usage_error():
    with pytest.raises(UsageError, match="unsupported storage scheme gs://"):
        Storage().read_bytes("gs://bucket/key")


def test_s3_listing_streams_page_by_page(monkeypatch):
    """iter_files asks for the next page only when the caller gets there."""
    monkeypatch.setattr(S3Backend, "LIST_PAGE_SIZE", 2)
    with moto_s3_server() as endpoint:
        storage = Storage(endpoint)
        storage.s3.create_bucket(Bucket="pages")
        for i in range(7):
            storage.s3.put_object(Bucket="pages", Key=f"p/{i:02d}", Body=b"x")
        calls = []
        storage.s3.meta.events.register("before-call.s3.ListObjectsV2", lambda **kw: calls.append(1))
        it = storage.iter_files("s3://pages/p")
        first = [next(it).relpath, next(it).relpath]
        assert first == ["00", "01"] and len(calls) == 1
        rest = [e.relpath for e in it]
        assert rest == ["02", "03", "04", "05", "06"] and len(calls) == 4


def test_endpoint_precedence_flag_config_env(monkeypatch):
    from groundfloor.storage import resolve_endpoint

    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://env")
    assert resolve_endpoint("http://flag", "http://config") == "http://flag"
    assert resolve_endpoint(None, "http://config") == "http://config"
    assert resolve_endpoint(None, None) == "http://env"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://env-s3")
    assert resolve_endpoint() == "http://env-s3"
    assert Storage().endpoint_url == "http://env-s3"
