"""WebDataset tars as input (issue 23): tars written by the real `webdataset` library, plain,
gzipped, as a folder, one tar, a glob, a brace pattern, a manifest of tar uris; every image in a
shard or quarantined with its member named; labels from cls or json; text members in meta;
byte-identical reruns."""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from groundfloor.errors import UsageError
from sharding.run import plan_dataset, shard_dataset

from tests.sharding.conftest import tree_digest
from tests.sharding.wds_corpus import write_wds_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_wds_corpus(tmp_path_factory.mktemp("wds") / "in")


def read_output(root: Path) -> tuple[dict[str, dict], dict[str, bytes], list[dict]]:
    """(key -> {key}.json, source -> stored bytes of that view, quarantine rows) of a dataset."""
    metas, views = {}, {}
    for path in sorted((root / "shards").glob("*.tar")):
        with tarfile.open(path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name, data in members.items():
            if name.endswith(".json"):
                metas[name[: -len(".json")]] = json.loads(data)
        for key, meta in metas.items():
            for i, source in enumerate(meta["sources"]):
                match = [d for n, d in members.items() if n.startswith(f"{key}.{i}.")]
                if match:
                    views[source] = match[0]
    rows = [r for p in sorted((root / "quarantine").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    return metas, views, rows


def test_folder_of_tars_every_image_accounted_for_and_rerun_identical(corpus, tmp_path):
    out = tmp_path / "a"
    summary = shard_dataset(str(corpus.root), str(out), progress=False, label_from="cls", shard_samples=2)
    metas, views, rows = read_output(out)
    # Every decodable image is stored byte for byte; the others are quarantined by member name.
    assert {k: v for k, v in views.items()} == {str(k): v for k, v in corpus.images.items()}
    assert {r["source"] for r in rows} == set(corpus.broken) | set(corpus.no_image)
    assert {r["reason"] for r in rows if r["source"] in corpus.no_image} == {"no_image"}
    assert summary.num_samples == len(corpus.images) and summary.num_quarantined == 2
    # Labels come from cls, captions and the json are kept in meta.
    for meta in metas.values():
        source = meta["sources"][0]
        assert meta["label"] == corpus.labels[source]
        assert meta["meta"][0]["txt"] == corpus.captions[source]
        assert meta["meta"][0]["json"]["label"] == f"class-{meta['label']}"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["labels"] == ["0", "1", "2"]
    again = tmp_path / "b"
    shard_dataset(str(corpus.root), str(again), progress=False, label_from="cls", shard_samples=2)
    assert tree_digest(out) == tree_digest(again)
    assert shard_dataset(str(corpus.root), str(out), progress=False, label_from="cls",
                         shard_samples=2).num_shards_built == 0


def test_one_tar_glob_brace_pattern_and_manifest_of_tars(corpus, tmp_path):
    tars = [corpus.root / "shards-000000.tar", corpus.root / "shards-000001.tar"]
    expected = {s for s in corpus.images if not s.endswith(".gz") and ".tar.gz#" not in s}
    manifest = tmp_path / "tars.csv"
    manifest.write_text("uri\n" + "".join(f"{t}\n" for t in tars))
    inputs = {"brace": str(corpus.root / "shards-{000000..000001}.tar"),
              "glob": str(corpus.root / "shards-*.tar"), "manifest": str(manifest)}
    for name, source in inputs.items():
        out = tmp_path / name
        shard_dataset(source, str(out), progress=False, label_from="json:label")
        metas, views, _ = read_output(out)
        assert set(views) == expected, name
        assert {m["label"] for m in metas.values()} == {"class-0", "class-1", "class-2"}, name
    one = tmp_path / "one"
    shard_dataset(str(tars[0]), str(one), progress=False)
    assert set(read_output(one)[1]) == {s for s in expected if s.startswith(str(tars[0]) + "#")}
    with pytest.raises(UsageError, match="names 3 tars but 2 of them exist"):
        plan_dataset(str(corpus.root / "shards-{000000..000002}.tar"), progress=False)


def test_group_by_json_field_joins_neighbouring_samples(corpus, tmp_path):
    out = tmp_path / "grouped"
    shard_dataset(str(corpus.root), str(out), progress=False, group_by="json:listing")
    metas, _, _ = read_output(out)
    views = {m["group_id"]: len(m["sources"]) for m in metas.values()}
    # L0 = samples 0,1; L1 = 2,3; L2 = 4 (5 is corrupt); L3 = 7 (6 has no image); L50/L51 gzipped
    assert views == {"L0": 2, "L1": 2, "L2": 1, "L3": 1, "L50": 2, "L51": 1}


def test_truncated_tar_keeps_what_came_before_and_quarantines_the_break(corpus, tmp_path):
    source = tmp_path / "cut"
    source.mkdir()
    data = (corpus.root / "shards-000000.tar").read_bytes()
    (source / "cut.tar").write_bytes(data[: len(data) // 2 + 100])
    out = tmp_path / "out"
    summary = shard_dataset(str(source), str(out), progress=False)
    _, views, rows = read_output(out)
    assert 0 < summary.num_samples < 4
    assert [r["reason"] for r in rows] == ["unreadable"]
    assert rows[0]["source"].startswith(str(source / "cut.tar") + "#") and "breaks after member" in rows[0]["detail"]


def test_options_that_do_not_apply_are_refused(corpus, view_corpus, tmp_path):
    with pytest.raises(UsageError, match="--label-from cls does not apply to input .* a folder of images"):
        plan_dataset(str(view_corpus), label_from="cls", progress=False)
    with pytest.raises(UsageError, match="--group-by dir does not apply .* WebDataset tars"):
        plan_dataset(str(corpus.root), group_by="dir", progress=False)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.jpg").write_bytes(b"x")
    (mixed / "b.tar").write_bytes((corpus.root / "shards-000000.tar").read_bytes())
    with pytest.raises(UsageError, match="holds WebDataset tars among images .*'b.tar'"):
        plan_dataset(str(mixed), progress=False)
