"""Corpora as users bring them, refused at the door (issue 23): each case exits 2 with one line
that says how to read the input, never a traceback; a build that writes no sample fails and
leaves the dataset incomplete; the shard YAML config takes the corpus fields."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.sharding.wds_corpus import write_wds_corpus
from tests.viewstream.test_cli_errors import SMALL_CONFIG, assert_one_line, run_cli


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("corpus_errors")
    write_wds_corpus(root / "wds")
    mixed = root / "mixed"
    mixed.mkdir()
    (mixed / "a.jpg").write_bytes((root / "wds" / "shards-000000.tar").read_bytes()[:10])
    (mixed / "b.tar").write_bytes((root / "wds" / "shards-000000.tar").read_bytes())
    (root / "lists").mkdir()
    (root / "lists" / "a.csv").write_text("uri\nx.jpg\n")
    (root / "lists" / "b.tar").write_bytes(b"")
    (root / "urls.csv").write_text("url,caption\nhttp://127.0.0.1:9/x.jpg,a cat\n")
    (root / "texts").mkdir()
    for i in range(3):
        (root / "texts" / f"{i}.txt").write_text("not an image")
    return {"root": root, "wds": root / "wds", "mixed": mixed, "tmp": root}


CASES = [
    (["shard", "{mixed}", "{tmp}/o1"], ["tars among images", "b.tar"]),
    (["shard", "{wds}", "{tmp}/o2", "--group-by", "dir"], ["--group-by dir", "WebDataset tars", "json:NAME"]),
    (["shard", "{mixed}", "{tmp}/o3", "--label-from", "cls"], ["--label-from cls", "a folder of images"]),
    (["shard", "{wds}/shards-{{000000..000004}}.tar", "{tmp}/o4"], ["names 5 tars but 2"]),
    (["shard", "{tmp}/lists/*", "{tmp}/o5"], ["b.tar", "WebDataset tar among manifests"]),
    (["shard", "{tmp}/urls.csv", "{tmp}/o6"], ["'uri'", "--uri-column", "url"]),
    (["shard", "{wds}", "{tmp}/o7", "--group-by", "listing"], ["--group-by", "json:FIELD"]),
    (["shard", "{tmp}/urls.csv", "{tmp}/o8", "--bytes-column", "x"], ["--bytes-column", "Parquet"]),
    (["inspect", "{wds}"], ["not a viewstream dataset", "viewstream shard SRC DST"]),
    (["inspect", "{wds}/shards-000000.tar"], ["is a file", "viewstream shard"]),
]


@pytest.mark.parametrize("argv,names", CASES, ids=[" ".join(c[0][:1] + c[0][3:5]) or c[0][1] for c in CASES])
def test_corpus_input_errors_are_one_line(argv, names, places, capsys):
    code, err = run_cli([a.format(**places) for a in argv], capsys)
    assert_one_line(code, err, 2, *names)


def test_train_on_a_tar_or_parquet_file_is_one_line(places, tmp_path, capsys):
    for path in (places["wds"] / "shards-000000.tar", places["tmp"] / "lists" / "a.csv"):
        argv = ["train", SMALL_CONFIG, "--check", "--set", f"data.dataset={path}",
                "--set", f"run.storage={tmp_path / 'runs'}", "--set", "monitor=null"]
        code, err = run_cli(argv, capsys)
        assert_one_line(code, err, 2, "data.dataset", "is a file", "viewstream shard")


def test_a_build_with_no_sample_fails_and_stays_incomplete(places, capsys):
    out = places["tmp"] / "empty-ds"
    code, err = run_cli(["shard", places["tmp"] / "texts", out, "--no-progress"], capsys)
    assert_one_line(code, err, 2, "no sample was written", "not_an_image=3", "quarantine")
    manifest = out / "manifest.json"
    assert not manifest.exists() or json.loads(manifest.read_text())["complete"] is False
    assert not (out / "shards.parquet").exists() or b"data-" not in (out / "shards.parquet").read_bytes()


def test_the_shard_config_takes_the_corpus_fields(places, capsys):
    config = places["tmp"] / "wds.yaml"
    config.write_text(yaml.safe_dump({"input": str(places["wds"]), "output": str(places["tmp"] / "cfg-ds"),
                                      "group_by": "json:listing", "label_from": "cls"}))
    code = run_cli(["shard", "--config", config, "--no-progress"], capsys)[0]
    assert code == 0
    manifest = json.loads((places["tmp"] / "cfg-ds" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["config"]["group_by"] == "json:listing"
    assert manifest["labels"] == ["0", "1", "2"] and manifest["num_samples"] == 6
    config.write_text(yaml.safe_dump({"input": str(places["tmp"] / "urls.csv"), "output": "unused",
                                      "uri_column": "url", "keep_columns": ["caption", "nope"]}))
    code, err = run_cli(["shard", "--config", config, "--dry-run", "--no-progress"], capsys)
    assert_one_line(code, err, 2, "'nope'", "--keep-columns")
