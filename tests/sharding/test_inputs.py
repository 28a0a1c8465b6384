"""Inputs: a folder grouped by file or folder with labels from the parent, manifests (csv, jsonl,
parquet), and the one-line errors of a bad manifest."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from groundfloor.errors import UsageError
from groundfloor.storage import Storage
from sharding.inputs import discover_inputs


def make_folder(root):
    for rel in ("cats/c1/0.jpg", "cats/c1/1.jpg", "dogs/d1/0.jpg", "top.jpg"):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"img")


def test_folder_inputs_group_and_label(tmp_path):
    make_folder(tmp_path)
    storage = Storage()
    per_file = discover_inputs(str(tmp_path), storage, "file", "parent")
    assert [(r.group_id, r.label) for r in per_file] == [
        ("cats/c1/0.jpg", "c1"), ("cats/c1/1.jpg", "c1"), ("dogs/d1/0.jpg", "d1"), ("top.jpg", None)]
    per_dir = discover_inputs(str(tmp_path), storage, "dir", "parent")
    assert [(r.group_id, r.label) for r in per_dir] == [
        ("cats/c1", "cats"), ("cats/c1", "cats"), ("dogs/d1", "dogs"), ("top.jpg", None)]
    assert all(r.size == 3 for r in per_dir)


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet"])
def test_manifest_inputs(tmp_path, kind):
    rows = [{"uri": "imgs/a.jpg", "group": "g1", "label": "x"}, {"uri": "/abs/b.jpg", "group": "", "label": None}]
    path = tmp_path / f"list.{kind}"
    if kind == "csv":
        path.write_text("uri,group,label\nimgs/a.jpg,g1,x\n/abs/b.jpg,,\n")
    elif kind == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    records = discover_inputs(str(path), Storage())
    assert [(r.group_id, r.uri, r.label) for r in records] == [
        ("/abs/b.jpg", "/abs/b.jpg", None), ("g1", str(tmp_path / "imgs/a.jpg"), "x")]


def test_manifest_without_uri_and_bad_jsonl(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"path": "a.jpg"}\n')
    with pytest.raises(UsageError, match="no 'uri' column"):
        discover_inputs(str(path), Storage())
    path.write_text("{not json\n")
    with pytest.raises(UsageError, match="cannot be parsed"):
        discover_inputs(str(path), Storage())
