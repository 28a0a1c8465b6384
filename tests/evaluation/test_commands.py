"""The CLI end to end on tiny shards: eval knn/linear/retrieval, embed, search, export, bad input."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from sharding.dataset import read_index
from trainers.checkpoint import Progress, save_checkpoint
from trainers.config import TrainConfig
from trainers.methods import build_method
from viewstream.cli import main


def _checkpoint(path, dataset: str, method: str, backbone: dict, seed: int) -> str:
    """A real checkpoint (untrained weights, BN statistics made non-trivial) of `method`."""
    config = TrainConfig.model_validate({
        "seed": seed, "data": {"dataset": dataset, "recipe": "simclr", "recipe_options": {"size": 32}},
        "method": {"name": method, "backbone": backbone}, "batch_size": 8, "scaling": {"num_workers": 1},
        "monitor": {"train_dataset": dataset, "test_dataset": dataset, "image_size": 32, "crop_fraction": 1.0}})
    model = build_method(config.method_config(), seed=seed)
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
    save_checkpoint(path, {"method": model.state_dict(), "optimizer": {}, "progress": Progress(3, 0, 3).as_dict()},
                    config=config.model_dump(mode="json"))
    return str(path)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, labelled_groups) -> str:
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoint_000003", labelled_groups, "simclr",
                       {"name": "convnet", "width": 0.25, "small_images": True}, seed=0)


@pytest.fixture(scope="module")
def other_ckpt(tmp_path_factory, labelled_groups) -> str:
    return _checkpoint(tmp_path_factory.mktemp("other") / "checkpoint_000003", labelled_groups, "byol",
                       {"name": "resnet18", "width": 0.125, "small_images": True}, seed=1)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory, ckpt, labelled_groups, labelled_test_groups) -> dict:
    out = tmp_path_factory.mktemp("emb")
    paths = {"train": str(out / "train.parquet"), "test": str(out / "test.parquet")}
    for split, ds in (("train", labelled_groups), ("test", labelled_test_groups)):
        assert main(["embed", "--checkpoint", ckpt, "--dataset", ds, "--out", paths[split], "--batch-size", "7"]) == 0
    return paths


def _one_line_error(capsys, argv: list[str], match: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err, err
    return err


def test_embed_rows_are_samples_and_vectors_equal_a_direct_forward_pass(embedded, ckpt, labelled_groups):
    from pipeline import ViewLoader, ViewSpec
    from trainers.checkpoint import load_backbone

    table = pq.read_table(embedded["train"])
    index = read_index(labelled_groups)
    assert table.num_rows == index.num_rows == 20
    assert sorted(table.column("key").to_pylist()) == sorted(index.column("key").to_pylist())
    backbone, _ = load_backbone(ckpt)
    loader = ViewLoader(labelled_groups, ViewSpec.eval(size=32, crop_fraction=1.0), 20, num_threads=1)
    batch = next(iter(loader.iter_epoch(0)))
    with torch.no_grad():
        direct = dict(zip(batch.keys, torch.nn.functional.normalize(backbone.eval()(batch.views[0]), dim=1).numpy()))
    stored = dict(zip(table.column("key").to_pylist(), table.column("vector").to_pylist()))
    for key, vec in stored.items():
        np.testing.assert_allclose(vec, direct[key], atol=1e-5)
    labels = dict(zip(index.column("key").to_pylist(), index.column("label").to_pylist()))
    vocab = sorted(set(labels.values()))
    assert all(vocab[l] == labels[k] for k, l in zip(table.column("key").to_pylist(), table.column("label").to_pylist()))


def test_eval_knn_and_linear_from_shards_equal_from_embeddings(tmp_path, ckpt, embedded, labelled_groups, labelled_test_groups):
    from_shards, from_files = tmp_path / "a.json", tmp_path / "b.json"
    assert main(["eval", "knn", "--checkpoint", ckpt, "--train", labelled_groups, "--test", labelled_test_groups,
                 "--k", "5", "20", "--json", str(from_shards)]) == 0
    assert main(["eval", "knn", "--train-embeddings", embedded["train"], "--test-embeddings", embedded["test"],
                 "--k", "5", "20", "--json", str(from_files)]) == 0
    a, b = json.loads(from_shards.read_text())["knn"], json.loads(from_files.read_text())["knn"]
    assert set(a) == {"5", "20"} and a["20"]["num_test"] == 12
    for k in a:
        assert a[k]["top1"] == pytest.approx(b[k]["top1"]) and 0 <= a[k]["top1"] <= a[k]["top5"] <= 1
    out = tmp_path / "lin.json"
    assert main(["eval", "linear", "--train-embeddings", embedded["train"], "--test-embeddings", embedded["test"],
                 "--c", "1.0", "--json", str(out)]) == 0
    lin = json.loads(out.read_text())["linear"]
    assert lin["c"] == 1.0 and 0 <= lin["top1"] <= lin["top5"] <= 1 and lin["num_train"] == 20


def test_eval_retrieval_uses_two_photos_per_group(tmp_path, ckpt, labelled_groups):
    out = tmp_path / "r.json"
    assert main(["eval", "retrieval", "--checkpoint", ckpt, "--dataset", labelled_groups, "--json", str(out)]) == 0
    r = json.loads(out.read_text())["retrieval"]
    assert r["num_queries"] == r["num_gallery"] == 40  # every group has 2-3 photos: two of each
    assert 0 <= r["recall"]["recall@1"] <= r["recall"]["recall@5"] <= r["recall"]["recall@10"] <= 1
    assert r["recall"]["recall@10"] > 0  # untrained features still beat an empty answer


def test_search_build_and_query_by_key_and_image(tmp_path, capsys, ckpt, embedded, labelled_groups):
    from evaluation.sources import read_sample_image

    index_dir = tmp_path / "index"
    assert main(["search", "build", embedded["train"], str(index_dir)]) == 0
    key = pq.read_table(embedded["train"]).column("key")[0].as_py()
    image_file = tmp_path / "query.png"
    Image.fromarray(read_sample_image(labelled_groups, key)).save(image_file)
    out = tmp_path / "q.json"
    capsys.readouterr()
    assert main(["search", "query", str(index_dir), "--key", key, "--image", str(image_file), "--k", "3",
                 "--json", str(out), "--grid", str(tmp_path / "grid.png")]) == 0
    result = json.loads(out.read_text())["queries"]
    assert len(result[0]["results"]) == 3 and key not in [h["key"] for h in result[0]["results"]]  # not itself
    # The same photo from a file finds its own sample first (the eval recipe is reproduced).
    assert result[1]["results"][0]["key"] == key and result[1]["results"][0]["score"] > 0.99
    assert (tmp_path / "grid.png").stat().st_size > 5000

    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    _one_line_error(capsys, ["search", "query", str(index_dir), "--image", str(bad)], "cannot be decoded")


def test_bad_input_gives_one_line_errors(tmp_path, capsys, ckpt, other_ckpt, embedded, labelled_groups, unlabelled_groups):
    _one_line_error(capsys, ["eval", "knn", "--checkpoint", ckpt, "--train", labelled_groups,
                             "--test", unlabelled_groups], "has no labels")
    index_dir = tmp_path / "index"
    assert main(["search", "build", embedded["train"], str(index_dir)]) == 0
    image_file = tmp_path / "q.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image_file)
    err = _one_line_error(capsys, ["search", "query", str(index_dir), "--image", str(image_file),
                                   "--checkpoint", other_ckpt], "is from method 'byol'")
    assert "'simclr'" in err
    other_emb = tmp_path / "other.parquet"
    assert main(["embed", "--checkpoint", other_ckpt, "--dataset", labelled_groups, "--out", str(other_emb)]) == 0
    capsys.readouterr()  # the embed progress bar
    _one_line_error(capsys, ["eval", "knn", "--train-embeddings", embedded["train"], "--test-embeddings",
                             str(other_emb)], "is from method 'byol'")
    _one_line_error(capsys, ["export", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "x.safetensors")],
                    "no viewstream checkpoint")


def test_export_command_writes_a_loadable_state_dict(tmp_path, capsys, other_ckpt):
    import torchvision

    out = tmp_path / "model.safetensors"
    assert main(["export", "--checkpoint", other_ckpt, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "model.load_state_dict(load_file('model.safetensors'), strict=True)" in printed
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["method"] == "byol" and meta["backbone"] == "resnet18" and meta["input"]["image_size"] == 32
    namespace: dict = {}
    exec(meta["build_code"], namespace)
    model = namespace["model"]
    assert isinstance(model, torchvision.models.ResNet)
    model.load_state_dict(load_file(out), strict=True)


def test_embeddings_of_splits_with_different_label_sets_are_aligned(tmp_path):
    from evaluation.labels import align_labels
    from evaluation.features import FeatureSet

    train = FeatureSet(torch.zeros(3, 2), torch.tensor([0, 1, 2]))
    test = FeatureSet(torch.zeros(3, 2), torch.tensor([0, 1, 1]))
    align_labels(train, ["circle", "square", "star"], test, ["square", "star"])
    assert test.labels.tolist() == [1, 2, 2]


def test_projection_embeddings_go_through_the_head_everywhere(tmp_path, capsys, ckpt, embedded, labelled_groups):
    """--embedding projection: vectors are the head's output (equal to a direct backbone-then-
    projector pass), the metadata says so, an image query of their index goes through the head
    too (its own sample first), and they never mix with backbone embeddings."""
    from evaluation.embeddings import read_embeddings_metadata
    from evaluation.sources import read_sample_image
    from pipeline import ViewLoader, ViewSpec
    from trainers.checkpoint import load_method

    out = tmp_path / "proj.parquet"
    assert main(["embed", "--checkpoint", ckpt, "--dataset", labelled_groups, "--out", str(out),
                 "--embedding", "projection"]) == 0
    table = pq.read_table(out)
    assert read_embeddings_metadata(out)["embedding"] == "projection"
    assert "embedding" not in read_embeddings_metadata(embedded["train"])  # backbone files keep their identity
    method, _ = load_method(ckpt)
    loader = ViewLoader(labelled_groups, ViewSpec.eval(size=32, crop_fraction=1.0), 20, num_threads=1)
    batch = next(iter(loader.iter_epoch(0)))
    with torch.no_grad():
        direct = torch.nn.functional.normalize(method.projector(method.backbone(batch.views[0])), dim=1).numpy()
    assert direct.shape[1] == method.config.projection_dim != method.feature_dim
    stored = dict(zip(table.column("key").to_pylist(), table.column("vector").to_pylist()))
    for key, vec in zip(batch.keys, direct):
        np.testing.assert_allclose(stored[key], vec, atol=1e-5)

    index_dir = tmp_path / "index"
    assert main(["search", "build", str(out), str(index_dir)]) == 0
    key = table.column("key")[0].as_py()
    image_file = tmp_path / "query.png"
    Image.fromarray(read_sample_image(labelled_groups, key)).save(image_file)
    answer = tmp_path / "q.json"
    assert main(["search", "query", str(index_dir), "--image", str(image_file), "--k", "2", "--json", str(answer)]) == 0
    hit = json.loads(answer.read_text())["queries"][0]["results"][0]
    assert hit["key"] == key and hit["score"] > 0.99
    capsys.readouterr()
    _one_line_error(capsys, ["eval", "knn", "--train-embeddings", embedded["train"], "--test-embeddings", str(out)],
                    "use --embedding backbone")
    r = tmp_path / "r.json"
    assert main(["eval", "retrieval", "--checkpoint", ckpt, "--dataset", labelled_groups, "--embedding", "projection",
                 "--json", str(r)]) == 0
    assert json.loads(r.read_text())["source"]["embedding"] == "projection"


def test_a_ray_embed_actor_loads_the_model_its_identity_names(ckpt):
    """`embed --ray` actors load backbone + head when the run's identity says projection."""
    from evaluation.batch_embed import EmbedJob, ShardEmbedWorker

    dims = {}
    for identity in ({}, {"embedding": "projection"}):
        worker = ShardEmbedWorker(EmbedJob(ckpt, 32, 1.0, 4, "unused", identity))
        with torch.no_grad():
            dims[identity.get("embedding", "backbone")] = worker.backbone(torch.zeros(1, 3, 32, 32)).shape[1]
    method_config = json.loads((Path(ckpt) / "meta.json").read_text())["config"]["method"]
    assert dims["projection"] == method_config.get("projection_dim", 128) != dims["backbone"]
