"""The tar writer: deterministic bytes tarfile reads back, its .idx, its ustar headers, bad keys refused."""
from __future__ import annotations

import hashlib
import io
import tarfile

import pytest

from sharding.tar_writer import TarWriter, ustar_header


def write_tar(samples) -> tuple[bytes, TarWriter]:
    sink = io.BytesIO()
    writer = TarWriter(sink)
    for key, members in samples:
        writer.write_sample(key, members)
    writer.close()
    return sink.getvalue(), writer


def test_tar_writer_is_deterministic_and_readable():
    samples = [("a-1", [("0.jpg", b"x" * 700), ("json", b"{}")]), ("b-2", [("0.png", b""), ("1.png", b"yz")])]
    first, writer = write_tar(samples)
    second, _ = write_tar(samples)
    assert first == second and len(first) % 10240 == 0
    assert writer.size == len(first) and writer.num_samples == 2
    assert writer.sha256 == hashlib.sha256(first).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        names = [(m.name, m.mtime, m.uid, m.gid, m.uname, m.mode) for m in tar]
        assert names == [(n, 0, 0, 0, "", 0o644) for n in ("a-1.0.jpg", "a-1.json", "b-2.0.png", "b-2.1.png")]
        assert tar.extractfile("a-1.0.jpg").read() == b"x" * 700
    lines = writer.index_text().splitlines()
    assert lines[0] == "v1.2 2"
    ext, offset, size, name = lines[1].split()[:4]
    assert (ext, name) == ("0.jpg", "a-1.0.jpg") and first[int(offset):int(offset) + int(size)] == b"x" * 700


@pytest.mark.parametrize("key", ["a.b", "a/b", "a b"])
def test_tar_writer_rejects_bad_keys(key):
    with pytest.raises(ValueError):
        TarWriter(io.BytesIO()).write_sample(key, [("json", b"{}")])


@pytest.mark.parametrize("name,size", [("a-1.0.jpg", 0), ("k" * 57 + ".12.png", 700), ("x-y.json", 8**11 - 1),
                                       ("фото-1.json", 5), ("n" * 100, 1), ("d/" + "n" * 100, 1)])
def test_ustar_header_is_what_tarfile_writes(name, size):
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = size, 0, 0o644, 0, 0, "", ""
    assert ustar_header(name, size) == info.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="strict")
