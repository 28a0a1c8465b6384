"""`viewstream dedup`: a photo reused by three listings shows up as three cross-group pairs."""
from __future__ import annotations

import itertools
import shutil

import pyarrow.parquet as pq
import pytest
from PIL import Image

from sharding.run import shard_dataset
from sharding.synthetic import generate_view_corpus
from tests.evaluation.test_commands import _checkpoint
from viewstream.cli import main


@pytest.fixture(scope="module")
def shared_photo_dataset(tmp_path_factory):
    """12 groups; groups 0, 1 and 2 open with the same photo (a stock photo reused by sellers)."""
    base = tmp_path_factory.mktemp("dups")
    images = base / "images"
    groups = generate_view_corpus(images, 12, seed=3, size=32, min_views=1, max_views=2)
    dirs = sorted(p for p in images.glob("*/*") if p.is_dir())
    stock = next(dirs[0].glob("0.*"))
    for d in dirs[1:3]:
        for old in d.glob("0.*"):
            old.unlink()
        shutil.copy(stock, d / stock.name)
    out = str(base / "dataset")
    shard_dataset(str(images), out, group_by="dir", label_from="none", shard_samples=4, progress=False)
    shared = {f"{d.parent.name}/{d.name}" for d in dirs[:3]}
    return out, shared, base


def test_dedup_lists_the_three_groups_sharing_a_photo_and_draws_them(shared_photo_dataset, tmp_path):
    dataset, shared, base = shared_photo_dataset
    ckpt = _checkpoint(base / "ckpt" / "checkpoint_000003", dataset, "simclr",
                       {"name": "convnet", "width": 0.25, "small_images": True}, seed=0)
    emb = str(tmp_path / "emb.parquet")
    assert main(["embed", "--checkpoint", ckpt, "--dataset", dataset, "--out", emb]) == 0
    pairs_path, grid = tmp_path / "pairs.parquet", tmp_path / "pairs.png"
    assert main(["dedup", emb, "--threshold", "1e-4", "--out", str(pairs_path), "--grid", str(grid),
                 "--json", str(tmp_path / "dedup.json")]) == 0
    pairs = pq.read_table(pairs_path).to_pylist()
    found = {frozenset((p["group_a"], p["group_b"])) for p in pairs}
    assert found == {frozenset(c) for c in itertools.combinations(sorted(shared), 2)}
    assert all(p["distance"] <= 1e-4 and p["score"] >= 1 - 1e-4 for p in pairs)
    width, height = Image.open(grid).size
    assert width > 100 and height > 50
    # The same through a prebuilt (streaming, factory-string) index.
    index_dir = tmp_path / "index"
    assert main(["search", "build", emb, str(index_dir), "--index", "Flat"]) == 0
    assert main(["dedup", emb, "--index-dir", str(index_dir), "--threshold", "1e-4",
                 "--out", str(tmp_path / "via_index.parquet")]) == 0
    via_index = pq.read_table(tmp_path / "via_index.parquet").to_pylist()
    assert {frozenset((p["group_a"], p["group_b"])) for p in via_index} == found
    # A looser threshold finds at least those; inside-group pairs only with --same-group.
    assert main(["dedup", emb, "--threshold", "2", "--out", str(tmp_path / "all.parquet"), "--k", "30"]) == 0
    everything = pq.read_table(tmp_path / "all.parquet").to_pylist()
    assert len(everything) == 12 * 11 // 2 and all(p["group_a"] != p["group_b"] for p in everything)


def test_dedup_rejects_a_threshold_that_is_not_a_cosine_distance(shared_photo_dataset, tmp_path, capsys):
    from evaluation.synthetic_vectors import write_clustered_embeddings

    emb = write_clustered_embeddings(tmp_path / "emb", 100, 8, rows_per_file=100, clusters=3)
    assert main(["dedup", emb, "--threshold", "3", "--out", str(tmp_path / "p.parquet")]) == 2
    assert "cosine distance" in capsys.readouterr().err
