"""The tar reader gives what tarfile's stream loop gives (members, bytes, the error and where it
happens) on the tars other tools write, cut at every byte and corrupted, and takes its fast
path on the plain ones."""
from __future__ import annotations

import gzip
import io
import posixpath
import tarfile

import pytest

import sharding.tar_reader as tar_reader
from sharding.tar_reader import tar_members
from sharding.tar_writer import TarWriter


def wanted(name: str) -> bool:  # sharding.containers' rule: a field, not hidden
    base = posixpath.basename(name)
    return "." in base and not base.startswith((".", "__"))


def reference(data: bytes) -> tuple[list, str | None]:
    """tarfile's stream loop as the sharder ran it before the fast path: members up to the
    error, and the error."""
    got = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r|*") as tar:
            for info in tar:
                if info.isfile() and wanted(info.name):
                    handle = tar.extractfile(info)
                    got.append((info.name, handle.read() if handle is not None else b""))
            if tar.fileobj.tell() - tar.offset < tarfile.BLOCKSIZE:
                raise tarfile.ReadError("the tar ends without its end-of-archive blocks (cut short)")
    except (tarfile.TarError, EOFError, OSError) as err:
        return got, f"{type(err).__name__}: {err}"
    return got, None


def read(data: bytes) -> tuple[list, str | None]:
    got = []
    try:
        for member in tar_members(io.BytesIO(data), lambda: io.BytesIO(data), wanted):
            got.append(member)
    except (tarfile.TarError, EOFError, OSError) as err:
        return got, f"{type(err).__name__}: {err}"
    return got, None


def tarfile_tar(fmt: int, members, extra=()) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for info in extra:
            tar.addfile(info)
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(payload), 1_700_000_000
            tar.addfile(info, io.BytesIO(payload))
    return out.getvalue()


MEMBERS = [("s1.0.jpg", b"\xff\xd8" + b"a" * 700), ("s1.json", b'{"x": 1}'), ("s1.cls", b"3"),
           ("dir/s2.0.png", b"p" * 512), ("s2.__key__", b"s2"), (".hidden.txt", b"h"), ("noext", b"n"),
           ("s3.0.jpg", b""), ("s\u00e9.0.jpg", b"\xe9" * 3)]


def webdataset_tar() -> bytes:
    import webdataset as wds

    out = io.BytesIO()
    with wds.TarWriter(out) as sink:
        for i in range(2):
            sink.write({"__key__": f"k{i:03d}", "0.jpg": bytes([i]) * (30 + 500 * i), "cls": str(i)})
    return out.getvalue()


def own_tar() -> bytes:
    sink = io.BytesIO()
    writer = TarWriter(sink)
    writer.write_sample("a-1", [("0.jpg", b"x" * 700), ("json", b"{}")])
    writer.write_sample("b-2", [("0.png", b""), ("1.png", b"yz" * 300)])
    writer.close()
    return sink.getvalue()


def folder_and_link(fmt: int) -> bytes:
    folder = tarfile.TarInfo("dir")
    folder.type = tarfile.DIRTYPE
    link = tarfile.TarInfo("dir/link.jpg")
    link.type, link.linkname = tarfile.SYMTYPE, "s1.0.jpg"
    return tarfile_tar(fmt, MEMBERS[:4], extra=(folder, link))


TARS = {
    "webdataset": webdataset_tar,
    "ours": own_tar,
    "pax": lambda: tarfile_tar(tarfile.PAX_FORMAT, MEMBERS),
    "ustar": lambda: tarfile_tar(tarfile.USTAR_FORMAT, MEMBERS),
    "gnu": lambda: tarfile_tar(tarfile.GNU_FORMAT, MEMBERS),
    "long names": lambda: tarfile_tar(tarfile.GNU_FORMAT, [("x" * 150 + ".0.jpg", b"l" * 100)] + MEMBERS[:2]),
    "long pax path": lambda: tarfile_tar(tarfile.PAX_FORMAT, MEMBERS[:2] + [("y" * 150 + ".0.jpg", b"l" * 100)]),
    "ustar prefix": lambda: tarfile_tar(tarfile.USTAR_FORMAT, [("p" * 120 + "/k.0.jpg", b"u" * 10)] + MEMBERS[:2]),
    "folder and link": lambda: folder_and_link(tarfile.USTAR_FORMAT),
    "gzip": lambda: gzip.compress(tarfile_tar(tarfile.PAX_FORMAT, MEMBERS), mtime=0),
    "empty": lambda: tarfile_tar(tarfile.USTAR_FORMAT, []),
}


@pytest.mark.parametrize("kind", sorted(TARS))
def test_whole_tars_read_as_tarfile_reads_them(kind):
    data = TARS[kind]()
    expected = reference(data)
    assert expected[1] is None and read(data) == expected


@pytest.mark.parametrize("kind", ["webdataset", "ours", "pax", "gnu", "long pax path", "folder and link"])
def test_tars_cut_at_every_byte_fail_as_tarfile_fails(kind):
    data = TARS[kind]()
    end = len(data.rstrip(b"\0")) + 2 * tarfile.BLOCKSIZE
    for cut in range(0, min(len(data), end) + 1):
        assert read(data[:cut]) == reference(data[:cut]), cut


@pytest.mark.parametrize("kind", ["webdataset", "ours", "ustar"])
def test_corrupted_tars_fail_as_tarfile_fails(kind):
    data = TARS[kind]()
    for at in range(0, len(data.rstrip(b"\0")), 7):
        for byte in (0, 0x20, 0x37, 0x80, 0xFF):
            bad = data[:at] + bytes([byte]) + data[at + 1:]
            assert read(bad) == reference(bad), (at, byte)


def test_plain_tars_take_the_fast_path(monkeypatch):
    """webdataset's and our own tars never reach tarfile (a gzip does)."""
    tars = {kind: TARS[kind]() for kind in ("webdataset", "ours", "pax", "ustar", "gzip")}
    opened = []
    real = tarfile.open
    monkeypatch.setattr(tar_reader.tarfile, "open", lambda *a, **k: opened.append(1) or real(*a, **k))
    for kind in ("webdataset", "ours", "pax", "ustar"):
        assert read(tars[kind])[0], kind
    assert opened == []
    assert read(tars["gzip"])[0]
    assert opened == [1]
