"""ViewBatch metadata: labels over the sorted vocabulary (-1 when missing), keys, groups."""
from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq

from pipeline import ViewLoader, ViewSpec
from sharding.dataset import index_part_uri, read_index, read_shards
from sharding.format import INDEX_SCHEMA

SPEC = ViewSpec.eval(size=32)


def rewrite_index(root, table: pa.Table) -> None:
    """Write `table` back as the dataset's index parts, and the label vocabulary it implies."""
    for name in read_shards(str(root)).column("name").to_pylist():
        part = table.filter(pa.compute.equal(table.column("shard"), name))
        pq.write_table(part, index_part_uri(str(root), name))
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["labels"] = sorted({l for l in table.column("label").to_pylist() if l is not None})
    (root / "manifest.json").write_text(json.dumps(manifest))


def test_labels_use_the_sorted_vocabulary_and_minus_one_when_missing(uneven_dataset, tmp_path):
    root = tmp_path / "partly_labelled"
    shutil.copytree(uneven_dataset, root)
    index = read_index(str(root))
    labels = index.column("label").to_pylist()
    unlabelled = set(index.column("key").to_pylist()[::3])
    new_labels = [None if k in unlabelled else l
                  for k, l in zip(index.column("key").to_pylist(), labels)]
    table = index.set_column(INDEX_SCHEMA.get_field_index("label"), INDEX_SCHEMA.field("label"),
                             pa.array(new_labels, pa.string()))
    rewrite_index(root, table)
    loader = ViewLoader(str(root), SPEC, 5)
    vocabulary = sorted({l for l in new_labels if l is not None})
    assert loader.label_vocabulary == vocabulary
    truth = dict(zip(index.column("key").to_pylist(), new_labels))
    groups = dict(zip(index.column("key").to_pylist(), index.column("group_id").to_pylist()))
    for batch in loader.iter_epoch(0):
        for key, group, label in zip(batch.keys, batch.group_ids, batch.labels.tolist()):
            assert group == groups[key]
            assert label == (-1 if truth[key] is None else vocabulary.index(truth[key]))


def test_no_labels_at_all_gives_none(uneven_dataset, tmp_path):
    root = tmp_path / "unlabelled"
    shutil.copytree(uneven_dataset, root)
    index = read_index(str(root))
    table = index.set_column(INDEX_SCHEMA.get_field_index("label"), INDEX_SCHEMA.field("label"),
                             pa.nulls(len(index), pa.string()))
    rewrite_index(root, table)
    batch = next(ViewLoader(str(root), SPEC, 4).iter_epoch(0))
    assert batch.labels is None and batch.label_vocabulary == []


def test_views_held_across_later_batches_keep_their_values(uneven_dataset):
    """The views are DALI's own output buffers (DLPack, no copy: `loader.dali_to_torch`); a
    batch kept while the loader runs on must not be overwritten by later runs."""
    loader = ViewLoader(uneven_dataset, ViewSpec.simclr(size=32), 4, seed=3)
    held = [(batch.views, [v.clone() for v in batch.views]) for batch in loader.iter_epoch(0)]
    for _ in loader.iter_epoch(1):  # more runs of the same pipeline
        pass
    assert len(held) > 2
    for views, copies in held:
        for view, copy in zip(views, copies):
            assert view.dtype == copy.dtype and view.equal(copy)
