"""`viewstream migrate`: a format-version-1 dataset rewritten in place as version 2 reads as before."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from sharding.dataset import load_manifest, read_index, read_quarantine, read_sample, read_shards
from sharding.migrate import migrate_dataset
from sharding.run import shard_dataset
from groundfloor.storage import Storage
from sharding.synthetic import generate_view_corpus
from tests.pipeline.v1_layout import downgrade_to_v1
from viewstream.cli import main
from groundfloor.errors import UsageError


@pytest.fixture()
def v1_dataset(tmp_path) -> str:
    generate_view_corpus(tmp_path / "images", 9, seed=3, size=24, min_views=1, max_views=3)
    (tmp_path / "images" / "broken.jpg").write_bytes(b"not an image")  # one quarantined input
    out = str(tmp_path / "dataset")
    shard_dataset(str(tmp_path / "images"), out, group_by="dir", label_from="parent",
                  shard_samples=4, progress=False)
    downgrade_to_v1(out)
    return out


def test_v1_is_refused_with_a_hint_then_migrated_by_one_command(v1_dataset, capsys):
    with pytest.raises(UsageError, match="viewstream migrate"):
        load_manifest(v1_dataset)
    v1_index = pq.read_table(f"{v1_dataset}/index.parquet").to_pylist()
    v1_manifest = json.loads(open(f"{v1_dataset}/manifest.json").read())
    assert main(["migrate", v1_dataset, "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["migrated"] is True
    manifest = load_manifest(v1_dataset)
    assert "shards" not in manifest and manifest["num_shards"] == len(v1_manifest["shards"])
    assert manifest["labels"] == sorted({r["label"] for r in v1_index if r["label"]})
    shards = read_shards(v1_dataset).to_pylist()
    assert [s["name"] for s in shards] == [s["name"] for s in v1_manifest["shards"]]
    assert [s["sha256"] for s in shards] == [s["sha256"] for s in v1_manifest["shards"]]
    rows = read_index(v1_dataset).to_pylist()
    assert [{k: v for k, v in r.items() if k != "view_sha256"} for r in rows] == v1_index
    for row in rows:  # the sha256 column is what each sample's {key}.json records
        meta = json.loads(read_sample(v1_dataset, row["shard"], row["key"])["json"])
        assert row["view_sha256"] == meta["sha256"] and len(row["view_sha256"]) == row["num_views"]
    quarantine = read_quarantine(v1_dataset).to_pylist()
    assert quarantine == pq.read_table(f"{v1_dataset}/quarantine.parquet").to_pylist()
    assert len(quarantine) == 1


def test_migration_is_idempotent_and_a_crash_before_the_manifest_leaves_version_1(v1_dataset):
    class CrashOnManifest(Storage):
        def write_bytes(self, uri: str, data: bytes) -> None:
            if uri.endswith("manifest.json"):
                raise OSError("killed")
            super().write_bytes(uri, data)

    with pytest.raises(OSError):
        migrate_dataset(v1_dataset, progress=False, storage=CrashOnManifest())
    with pytest.raises(UsageError, match="version 1"):
        load_manifest(v1_dataset)
    first = migrate_dataset(v1_dataset, progress=False)
    index = read_index(v1_dataset)
    again = migrate_dataset(v1_dataset, progress=False)
    assert first.from_version == 1 and again.from_version == 2 and again.shards == first.shards
    assert read_index(v1_dataset).equals(index)


def test_migrate_rejects_a_folder_that_is_no_dataset(tmp_path, capsys):
    assert main(["migrate", str(tmp_path)]) == 2
    assert "not a viewstream dataset" in capsys.readouterr().err


def test_a_migrated_v1_dataset_reads_every_sample_with_its_metadata(v1_dataset):
    from pipeline import ViewLoader, ViewSpec

    v1_index = pq.read_table(f"{v1_dataset}/index.parquet").to_pylist()
    migrate_dataset(v1_dataset, progress=False)
    truth = {r["key"]: r for r in v1_index}
    vocabulary = sorted({r["label"] for r in v1_index if r["label"]})
    seen = []
    for rank in range(2):
        loader = ViewLoader(v1_dataset, ViewSpec.simclr(size=24), 3, rank=rank, world_size=2)
        assert loader.label_vocabulary == vocabulary and loader.num_samples == len(v1_index)
        for batch in loader.iter_epoch(0):
            for key, group, label in zip(batch.keys, batch.group_ids, batch.labels.tolist()):
                assert group == truth[key]["group_id"]
                assert vocabulary[label] == truth[key]["label"]
                seen.append(key)
    assert sorted(seen) == sorted(truth)


def test_inspect_checks_a_migrated_dataset(v1_dataset):
    from sharding.inspect import inspect_dataset

    migrate_dataset(v1_dataset, progress=False)
    report = inspect_dataset(v1_dataset)
    assert report.ok and report.verified == len(read_shards(v1_dataset)) >= 2
