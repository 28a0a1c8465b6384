"""The README's recipes for reading viewstream shards without viewstream (issue 23): plain
`webdataset` and DALI's `fn.readers.webdataset` (CPU, device_id=None) over our .idx files, on
groups of one and two views (members ``{key}.{i}.{ext}``, so a group of one view has no
``1.jpg``: DALI needs ``missing_component_behavior="empty"``)."""
from __future__ import annotations

import io
import json
from glob import glob

import numpy as np
import pytest
from PIL import Image

from sharding.dataset import read_index
from sharding.run import shard_dataset

from tests.sharding.wds_corpus import write_wds_corpus


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("readable")
    write_wds_corpus(root / "in")
    shard_dataset(str(root / "in"), str(root / "ds"), progress=False, label_from="cls",
                  group_by="json:listing", shard_bytes=1)
    index = {row["key"]: row for row in read_index(str(root / "ds")).to_pylist()}
    return root / "ds", index


def test_plain_webdataset_recipe(dataset):
    import webdataset as wds

    root, index = dataset
    # --- the README recipe ---
    tars = sorted(glob(f"{root}/shards/*.tar"))
    samples = wds.WebDataset(tars, shardshuffle=False).decode("pil").to_tuple("__key__", "0.jpg;0.png", "json")
    seen = {}
    for key, first_view, meta in samples:
        label = meta["label"]                   # the label lives in {key}.json
        seen[key] = (first_view.size, label)
    # ---
    assert seen == {k: ((24, 24), row["label"]) for k, row in index.items()}
    views = {}
    for sample in wds.WebDataset(tars, shardshuffle=False):   # every view, undecoded
        views[sample["__key__"]] = sorted(k for k in sample if k[0].isdigit())
    assert views == {k: [f"{i}.{e}" for i, e in enumerate(r["view_exts"])] for k, r in index.items()}


def test_dali_webdataset_recipe_cpu(dataset):
    from nvidia.dali import fn, pipeline_def, types

    root, index = dataset
    # --- the README recipe ---
    tars = sorted(glob(f"{root}/shards/*.tar"))

    @pipeline_def(batch_size=2, num_threads=1, device_id=None)   # device_id=0 and "mixed" on a GPU
    def two_views():
        first, second, meta = fn.readers.webdataset(
            paths=tars, index_paths=[t[: -len(".tar")] + ".idx" for t in tars],
            ext=["0.jpg;0.png", "1.jpg;1.png", "json"], dtypes=[types.UINT8] * 3,
            missing_component_behavior="empty")  # a group of one view has no 1.jpg
        return fn.decoders.image(first, device="cpu"), second, meta
    # ---
    pipe = two_views()
    pipe.build()
    got = {}
    for _ in range(len(index) // 2):
        first, second, meta = pipe.run()
        for i in range(len(first)):
            info = json.loads(np.array(meta[i]).tobytes())
            second_bytes = np.array(second[i]).tobytes()
            got[info["group_id"]] = (np.array(first[i]).shape, len(second_bytes), info["label"])
            if second_bytes:
                assert Image.open(io.BytesIO(second_bytes)).size == (24, 24)
    expected = {}
    for row in index.values():
        second = row["bytes"] - _first_bytes(root, row) if row["num_views"] == 2 else 0
        expected[row["group_id"]] = ((24, 24, 3), second, row["label"])
    assert got == expected


def _first_bytes(root, row) -> int:
    from sharding.dataset import read_sample

    return len(read_sample(str(root), row["shard"], row["key"])[f"0.{row['view_exts'][0]}"])
