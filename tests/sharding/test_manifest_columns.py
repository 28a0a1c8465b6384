"""Manifests as other tools write them (issue 23): img2dataset's url list with its columns kept,
columns named for groups and labels, and Hugging Face Parquet with the image bytes inside."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from groundfloor.errors import UsageError
from sharding.run import plan_dataset, shard_dataset

from tests.helpers.http_server import http_folder_server
from tests.sharding.conftest import run_cli, tree_digest
from tests.sharding.test_webdataset import read_output
from tests.sharding.wds_corpus import image_bytes

HF_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


@pytest.mark.integration
def test_img2dataset_list_over_http_with_kept_columns(tmp_path):
    served = tmp_path / "www"
    served.mkdir()
    for i in range(4):
        (served / f"{i}.jpg").write_bytes(image_bytes(i))
    with http_folder_server(served) as url:
        (served / "urls.csv").write_text("url,caption,key,listing\n" + "".join(
            f"{url}/{i}.jpg,caption {i},{i:09d},L{i // 2}\n" for i in range(4)))
        out = tmp_path / "ds"
        result = run_cli("shard", f"{url}/urls.csv", str(out), "--uri-column", "url",
                         "--keep-columns", "caption,key", "--group-by", "column:listing", "--no-progress")
        assert result.returncode == 0, result.stderr
        metas, views, _ = read_output(out)
        assert views == {f"{url}/{i}.jpg": image_bytes(i) for i in range(4)}
        assert sorted((m["group_id"], [v["caption"] for v in m["meta"]]) for m in metas.values()) == [
            ("L0", ["caption 0", "caption 1"]), ("L1", ["caption 2", "caption 3"])]
        assert {v["key"] for m in metas.values() for v in m["meta"]} == {f"{i:09d}" for i in range(4)}
        # Without --uri-column: one line that says how to name the column.
        result = run_cli("shard", f"{url}/urls.csv", str(tmp_path / "no"), "--no-progress")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "--uri-column" in result.stderr


def test_label_and_group_columns_of_a_jsonl_manifest(tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(image_bytes(i, "PNG"))
    rows = [{"path": f"{i}.png", "item": "A" if i < 2 else "B", "kind": f"k{i % 2}", "note": {"n": i}} for i in range(3)]
    (tmp_path / "list.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "ds"
    shard_dataset(str(tmp_path / "list.jsonl"), str(out), progress=False, uri_column="path",
                  group_by="column:item", label_from="column:kind", keep_columns=("note",))
    metas, _, _ = read_output(out)
    assert sorted((m["group_id"], m["label"], len(m["sources"])) for m in metas.values()) == [("A", "k0", 2), ("B", "k0", 1)]
    with pytest.raises(UsageError, match="has no 'species' column"):
        plan_dataset(str(tmp_path / "list.jsonl"), uri_column="path", label_from="column:species", progress=False)


def write_hf_parquet(path, n: int = 7, broken: int = 3) -> dict[int, bytes]:
    """A Hub-style Parquet: image struct<bytes, path> and a label column, 3 rows per row group."""
    images = {i: image_bytes(i, "PNG" if i % 2 else "JPEG") for i in range(n)}
    cells = [{"bytes": b"garbage" if i == broken else images[i], "path": f"img{i}.png"} for i in range(n)]
    table = pa.table({"image": pa.array(cells, HF_IMAGE), "label": pa.array([i % 3 for i in range(n)]),
                      "caption": [f"c{i}" for i in range(n)]})
    pq.write_table(table, path, row_group_size=3)
    return {i: data for i, data in images.items() if i != broken}


def test_parquet_with_embedded_images(tmp_path):
    source = tmp_path / "train-00000-of-00001.parquet"
    images = write_hf_parquet(source)
    out = tmp_path / "ds"
    summary = shard_dataset(str(source), str(out), progress=False, label_from="column:label",
                            keep_columns=("caption",), shard_bytes=1)
    metas, views, rows = read_output(out)
    assert views == {f"{source}#row={i}": data for i, data in images.items()}
    assert [(r["source"], r["reason"]) for r in rows] == [(f"{source}#row=3", "not_an_image")]
    by_row = {int(m["sources"][0].rsplit("=", 1)[1]): m for m in metas.values()}
    assert {i: (m["label"], m["meta"][0]) for i, m in by_row.items()} == {
        i: (str(i % 3), {"caption": f"c{i}", "path": f"img{i}.png"}) for i in images}
    assert summary.num_shards == 3  # one per row group
    again = tmp_path / "again"
    shard_dataset(str(source), str(again), progress=False, label_from="column:label",
                  keep_columns=("caption",), shard_bytes=1)
    assert tree_digest(out) == tree_digest(again)
    plain = tmp_path / "bytes.parquet"
    pq.write_table(pa.table({"jpeg": [images[0]], "uri": ["unused"]}), plain)
    shard_dataset(str(plain), str(tmp_path / "b"), progress=False, bytes_column="jpeg")
    assert list(read_output(tmp_path / "b")[1].values()) == [images[0]]
    with pytest.raises(UsageError, match="column 'caption' .* not binary image bytes"):
        plan_dataset(str(source), bytes_column="caption", progress=False)
