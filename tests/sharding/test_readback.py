"""Acceptance 1: Fashion-MNIST and a natural-view corpus shard without error and read back, with
the keys, counts and bytes the index parts promise, through webdataset, DALI (CPU, .idx) and tarfile."""
from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sharding.dataset import idx_uri, load_manifest, read_index, read_quarantine, read_sample, read_shards, shard_uri
from sharding.run import shard_dataset

from tests.sharding.conftest import run_cli


@pytest.fixture(scope="module")
def view_dataset(view_corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("view_ds")
    shard_dataset(str(view_corpus), str(out), group_by="dir", label_from="parent",
                  shard_samples=7, progress=False)
    return out


@pytest.fixture(scope="module")
def fashion_dataset(fashion_corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fmnist_ds")
    result = run_cli("shard", str(fashion_corpus), str(out), "--label-from", "parent",
                     "--shard-bytes", "30KB", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "images/s" in result.stdout and "inputs       150" in result.stdout
    return out


def expected_samples(root: Path) -> list[dict]:
    """Index rows of every shard, in shard order."""
    return read_index(str(root)).to_pylist()


def tar_samples(root: Path) -> dict[str, dict[str, bytes]]:
    """key -> {ext: bytes} read with Python's tarfile."""
    samples: dict[str, dict[str, bytes]] = {}
    for shard in read_shards(str(root)).to_pylist():
        with tarfile.open(shard_uri(str(root), shard["name"])) as tar:
            for info in tar:
                assert info.isfile() and info.mtime == 0 and info.uid == 0 and info.mode == 0o644
                key, _, ext = info.name.partition(".")
                samples.setdefault(key, {})[ext] = tar.extractfile(info).read()
    return samples


def check_against_index(root: Path, samples: dict[str, dict[str, bytes]]) -> None:
    rows = expected_samples(root)
    assert [r["key"] for r in rows] == list(samples)
    for row in rows:
        members = samples[row["key"]]
        views = [members[f"{i}.{ext}"] for i, ext in enumerate(row["view_exts"])]
        assert set(members) == {f"{i}.{ext}" for i, ext in enumerate(row["view_exts"])} | {"json"}
        assert len(views) == row["num_views"]
        assert sum(len(v) for v in views) == row["bytes"]
        meta = json.loads(members["json"])
        assert meta["group_id"] == row["group_id"] and meta["label"] == row["label"]
        import hashlib
        assert meta["sha256"] == [hashlib.sha256(v).hexdigest() for v in views]


@pytest.mark.parametrize("which", ["fashion", "view"])
def test_tarfile_reads_what_index_says(which, request):
    root = request.getfixturevalue(f"{which}_dataset")
    manifest = load_manifest(str(root))
    assert manifest["complete"] and manifest["num_quarantined"] == 0
    assert len(read_shards(str(root))) >= 3  # small shard limits: several shards
    samples = tar_samples(root)
    check_against_index(root, samples)
    assert manifest["num_samples"] == len(samples)
    assert read_quarantine(str(root)).num_rows == 0


def test_fashion_mnist_labels_and_pixels(fashion_dataset, fashion_corpus):
    rows = expected_samples(fashion_dataset)
    assert len(rows) == 150
    assert {r["label"] for r in rows} == {p.name for p in fashion_corpus.iterdir()}
    # Bytes are kept exactly as exported (PNG, grayscale): no re-encode.
    row = rows[0]
    data = read_sample(str(fashion_dataset), row["shard"], row["key"])["0.png"]
    source = fashion_corpus / row["group_id"]
    assert data == source.read_bytes()
    assert Image.open(io.BytesIO(data)).size == (28, 28)


def test_view_corpus_groups(view_dataset, view_corpus):
    rows = expected_samples(view_dataset)
    assert len(rows) == 24
    folders = sorted(str(p.relative_to(view_corpus)) for p in view_corpus.glob("*/*"))
    assert sorted(r["group_id"] for r in rows) == folders
    for row in rows:
        assert row["label"] == row["group_id"].split("/")[0]
        assert row["num_views"] == len(list((view_corpus / row["group_id"]).iterdir()))
        assert "." not in row["key"] and "/" not in row["key"]
    assert max(r["num_views"] for r in rows) > 1


@pytest.mark.parametrize("which", ["fashion", "view"])
def test_webdataset_reads_same_keys_and_bytes(which, request):
    import webdataset as wds

    root = request.getfixturevalue(f"{which}_dataset")
    urls = [shard_uri(str(root), s["name"]) for s in read_shards(str(root)).to_pylist()]
    seen = {}
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        seen[sample["__key__"]] = {k: v for k, v in sample.items() if not k.startswith("__")}
    check_against_index(root, seen)


@pytest.mark.parametrize("which", ["fashion", "view"])
def test_dali_reads_with_idx_files(which, request):
    from nvidia.dali import fn, pipeline_def

    root = request.getfixturevalue(f"{which}_dataset")
    shards = [s["name"] for s in read_shards(str(root)).to_pylist()]
    rows = expected_samples(root)

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def reader():
        first, meta = fn.readers.webdataset(
            paths=[shard_uri(str(root), s) for s in shards],
            index_paths=[idx_uri(str(root), s) for s in shards],
            ext=["0.jpg;0.png", "json"], missing_component_behavior="error", name="r",
        )
        return first, meta, fn.decoders.image(first, device="cpu")

    pipe = reader()
    pipe.build()
    assert pipe.epoch_size("r") == len(rows)
    tars = tar_samples(root)
    for row in rows:
        first, meta, image = (np.array(o[0]) for o in pipe.run())
        ext = f"0.{row['view_exts'][0]}"
        assert first.tobytes() == tars[row["key"]][ext]
        assert json.loads(meta.tobytes())["group_id"] == row["group_id"]
        assert image.ndim == 3 and image.shape[2] == 3


def test_idx_files_match_dali_wds2idx(view_dataset, tmp_path):
    wds2idx = Path(__import__("sys").executable).parent / "wds2idx"
    for shard in read_shards(str(view_dataset)).to_pylist():
        theirs = tmp_path / "theirs.idx"
        subprocess.run([str(wds2idx), shard_uri(str(view_dataset), shard["name"]), str(theirs)],
                       check=True, capture_output=True)
        assert Path(idx_uri(str(view_dataset), shard["name"])).read_bytes() == theirs.read_bytes()


def test_inspect_verifies_and_draws_grid(view_dataset, tmp_path):
    grid = tmp_path / "sheet.png"
    result = run_cli("inspect", str(view_dataset), "--grid", str(grid), "--groups", "5")
    assert result.returncode == 0, result.stderr
    shards = len(read_shards(str(view_dataset)).to_pylist())
    assert f"{shards} sha256 verified" in result.stdout and result.stdout.strip().endswith("ok")
    sheet = Image.open(grid)
    assert sheet.size == (6 * 96, 5 * 96)
    assert np.asarray(sheet).std() > 10  # thumbnails were drawn, not a blank sheet

    # Corrupt one shard: inspect must notice and fail (library call: same code, no start-up cost).
    from sharding.inspect import inspect_dataset

    victim = Path(shard_uri(str(view_dataset), read_shards(str(view_dataset)).to_pylist()[0]["name"]))
    original = victim.read_bytes()
    try:
        victim.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        assert inspect_dataset(str(view_dataset), verify=False).ok
        report = inspect_dataset(str(view_dataset))
        assert not report.ok and "sha256" in report.format() and report.verified == shards - 1
    finally:
        victim.write_bytes(original)
