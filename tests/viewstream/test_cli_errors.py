"""Malformed input as a new user types it: every case exits with the right code and prints one
line that names the field or path, never a traceback (`viewstream.error_lines`).

The cases run `viewstream.cli.main` in-process on a tiny real dataset (a subprocess per case
would import torch each time); a case that raised instead of returning would fail the test,
so "no traceback" is asserted by the call returning at all, and by the stderr check.
"""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from viewstream.cli import main
from viewstream.error_lines import describe

ROOT = Path(__file__).resolve().parents[2]
SMALL_CONFIG = ROOT / "configs" / "small" / "simclr.yaml"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """40 labelled Fashion-MNIST PNGs and their dataset."""
    from sharding.fashion_mnist import export_fashion_mnist
    from sharding.run import shard_dataset

    root = tmp_path_factory.mktemp("cli_errors")
    export_fashion_mnist(root / "png", "train", limit_per_split=40)
    shard_dataset(str(root / "png" / "train"), str(root / "ds"), label_from="parent", progress=False)
    return {"root": root, "images": root / "png" / "train", "dataset": root / "ds"}


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capsys.readouterr().err
    return code, err


def assert_one_line(code: int, err: str, expected_code: int, *names: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == expected_code, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for name in names:
        assert name in lines[0], f"{name!r} not in {lines[0]!r}"


def shard_config(tmp_path: Path, corpus, **fields) -> Path:
    path = tmp_path / "shard.yaml"
    path.write_text(yaml.safe_dump({"input": str(corpus["images"]), "output": str(tmp_path / "out")} | fields))
    return path


# ---- viewstream shard: every field of the shard config, and the places a URI enters ----------
SHARD_FIELDS = [
    ("workers", "two"), ("prefetch", "fast"), ("shard_samples", -1), ("group_by", "folder"),
    ("label_from", "dad"), ("quality", 200), ("max_side", "big"), ("shuffle_seed", "x"),
    ("shard_bytes", "12XB"), ("name", "a b"), ("dedup_across_groups", "maybe"), ("ray_cpus", 0),
    ("max_pixels", "many"), ("ray", "perhaps"), ("colour", "red"),
]


@pytest.mark.parametrize("field,value", SHARD_FIELDS, ids=[f for f, _ in SHARD_FIELDS])
def test_a_wrong_shard_config_field_is_one_line_naming_it(field, value, corpus, tmp_path, capsys):
    code, err = run_cli(["shard", "--config", shard_config(tmp_path, corpus, **{field: value})], capsys)
    assert_one_line(code, err, 2, field)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv,names", [
    (["shard", "{images}", "s3://"], ["s3://", "bucket"]),
    (["shard", "s3://", "{tmp}/out"], ["s3://", "bucket"]),
    (["shard", "{tmp}/missing", "{tmp}/out"], ["missing"]),
    (["shard", "{images}", "{tmp}/out", "--shard-samples", "0"], ["--shard-samples"]),
    (["shard", "{images}", "{tmp}/out", "--shard-bytes", "12XB"], ["--shard-bytes"]),
    (["shard", "{images}"], ["output"]),
    (["shard", "--config", "{tmp}/nope.yaml"], ["nope.yaml"]),
    (["shard", "--config", "{tmp}/list.yaml"], ["list.yaml", "mapping"]),
    (["shard", "--config", "{tmp}/broken.yaml"], ["broken.yaml", "YAML"]),
    (["shard", "{images}", "{tmp}/out", "--set", "shard_samples"], ["--set", "shard_samples"]),
    (["inspect", "{tmp}/missing"], ["missing", "not a viewstream dataset"]),
    (["inspect", "s3://"], ["s3://", "bucket"]),
    (["migrate", "s3://"], ["s3://", "bucket"]),
    (["views", "{dataset}", "--recipe", "nope"], ["nope"]),
    (["views", "s3://"], ["s3://", "bucket"]),
    (["views", "{dataset}", "--batch-size", "0"], ["--batch-size"]),
    (["eval", "knn", "--train", "{dataset}", "--test", "{dataset}"], ["--checkpoint"]),
    (["eval", "linear", "--train-embeddings", "{tmp}/a.parquet"], ["--test-embeddings"]),
    (["embed", "--dataset", "{dataset}", "--out", "{tmp}/e.parquet"], ["--checkpoint"]),
    (["search", "query", "{tmp}/index"], ["--key"]),
    (["export", "--checkpoint", "{tmp}/no_run", "--out", "{tmp}/b.safetensors"], ["no_run"]),
    (["demo", "--method", "nope"], ["nope"]),
], ids=lambda v: " ".join(v[:2]) if isinstance(v, list) and v and v[0] != "s3://" else None)
def test_malformed_command_lines(argv, names, corpus, tmp_path, capsys):
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "broken.yaml").write_text("input: [unclosed\n")
    fill = {"images": corpus["images"], "dataset": corpus["dataset"], "tmp": tmp_path}
    code, err = run_cli([a.format(**fill) for a in argv], capsys)
    assert_one_line(code, err, 2, *names)
    assert not Path("s3:").exists()


# ---- viewstream train --check: a wrong value in every section of the train config ------------
TRAIN_CASES = [
    ("seed", "x", "seed"), ("batch_size", "[1]", "batch_size"), ("epochs", "-1", "epochs"),
    ("data.dataset", "s3://", "data.dataset"), ("data.recipe", "nope", "nope"),
    ("data.recipe_options.size", "-28", "data.recipe_options.size"),
    ("data.num_threads", "x", "data.num_threads"), ("data.verify", "md5", "data.verify"),
    ("method.temperature", "hot", "method.temperature"), ("method.name", "nope", "nope"),
    ("optimizer.base_lr", "fast", "optimizer.base_lr"), ("optimizer.name", "adam9", "optimizer.name"),
    ("scaling.num_workers", "two", "scaling.num_workers"), ("scaling.cpus_per_worker", "x", "scaling.cpus_per_worker"),
    ("run.storage", "s3://", "run.storage"), ("run.checkpoint_every_steps", "x", "run.checkpoint_every_steps"),
    ("run.name", "a b", "run.name"), ("monitor.every_epochs", "x", "monitor.every_epochs"),
    ("monitor.image_size", "big", "monitor.image_size"), ("precision", "fp8", "precision"),
    ("unknown_section.x", "1", "unknown_section"),
]


@pytest.mark.parametrize("key,value,name", TRAIN_CASES, ids=[k for k, _, _ in TRAIN_CASES])
def test_a_wrong_train_config_value_is_one_line_naming_it(key, value, name, corpus, tmp_path, capsys):
    sets = [f"data.dataset={corpus['dataset']}", f"monitor.train_dataset={corpus['dataset']}",
            f"monitor.test_dataset={corpus['dataset']}", f"run.storage={tmp_path / 'runs'}", f"{key}={value}"]
    argv = ["train", SMALL_CONFIG, "--check"] + [a for s in sets for a in ("--set", s)]
    code, err = run_cli(argv, capsys)
    assert_one_line(code, err, 2, name)
    assert not Path("s3:").exists()


# ---- environment errors: one line, exit 1 -----------------------------------------------------
def test_describe_names_the_path_and_the_next_step_for_a_full_disk():
    line, code = describe(OSError(errno.ENOSPC, "No space left on device", "/data/ds/shards/x.tar"))
    assert code == 1 and "/data/ds/shards/x.tar" in line and "resumes" in line


def test_describe_permission_and_missing_file():
    line, code = describe(PermissionError(errno.EACCES, "Permission denied", "/data/ds"))
    assert code == 1 and "/data/ds" in line and "permission" in line
    line, code = describe(FileNotFoundError(errno.ENOENT, "No such file", "/data/x.yaml"))
    assert code == 2 and "/data/x.yaml" in line


def test_describe_s3_client_errors_name_bucket_key_and_code():
    from botocore.exceptions import ClientError

    err = ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "GetObject")
    err.uri = "s3://bucket/ds/manifest.json"
    line, code = describe(err)
    assert code == 1 and "s3://bucket/ds/manifest.json" in line and "AccessDenied" in line and "GetObject" in line
    missing = ClientError({"Error": {"Code": "NoSuchBucket", "Message": "no bucket", "BucketName": "nob"}}, "ListObjectsV2")
    line, code = describe(missing)
    assert code == 2 and "s3://nob" in line and "NoSuchBucket" in line


def test_a_bug_keeps_its_traceback():
    assert describe(KeyError("x")) is None and describe(ZeroDivisionError()) is None


def test_verbose_shows_the_traceback(corpus, tmp_path, capsys):
    code, err = run_cli(["shard", "--config", shard_config(tmp_path, corpus, workers="two"), "--verbose"], capsys)
    assert code == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("viewstream shard: error:")


# ---- a full disk during `viewstream shard` ---------------------------------------------------
def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.fixture(scope="module")
def fuller_corpus(tmp_path_factory) -> Path:
    """400 PNGs (about 1.6 MB of input), more than the small disk below holds."""
    from sharding.fashion_mnist import export_fashion_mnist

    root = tmp_path_factory.mktemp("disk_full")
    export_fashion_mnist(root / "png", "train", limit_per_split=400)
    return root / "png" / "train"


def test_a_full_disk_is_one_line_naming_the_path_and_a_rerun_with_space_is_byte_identical(
        fuller_corpus, tmp_path, capsys, monkeypatch):
    from sharding.run import shard_dataset

    reference = tmp_path / "reference"
    shard_dataset(str(fuller_corpus), str(reference), shard_samples=100, progress=False)
    out = tmp_path / "disk" / "ds"
    if _can_mount_tmpfs():
        # A real full disk: a 200 KiB tmpfs in a private mount namespace, then more space.
        viewstream = [sys.executable, "-m", "viewstream"]
        script = (f"mkdir -p {out.parent} && mount -t tmpfs -o size=200k tmpfs {out.parent} && "
                  f"{{ {' '.join(viewstream)} shard {fuller_corpus} {out} --shard-samples 100 --no-progress; "
                  f"echo rc=$? >&2; }} && mount -o remount,size=50m {out.parent} && "
                  f"{' '.join(viewstream)} shard {fuller_corpus} {out} --shard-samples 100 --no-progress >/dev/null && "
                  f"cp -a {out} {tmp_path}/resumed")
        done = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True,
                              cwd=ROOT, env=os.environ | {"PYTHONPATH": str(ROOT)}, timeout=300)
        assert done.returncode == 0, done.stderr
        first = done.stderr.split("rc=")[0]
        assert "rc=1" in done.stderr
        assert_one_line(1, first, 1, "no space", str(out), "resumes")
        resumed = tmp_path / "resumed"
    else:
        # No mount namespace here: the same error injected where a shard's bytes reach the disk.
        import groundfloor.storage.local as local

        real_fsync, calls = local.os.fsync, []

        def full_disk(fd):
            calls.append(fd)
            if len(calls) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_fsync(fd)

        monkeypatch.setattr(local.os, "fsync", full_disk)
        code, err = run_cli(["shard", fuller_corpus, out, "--shard-samples", "100", "--no-progress"], capsys)
        assert_one_line(code, err, 1, "no space", str(out), "resumes")
        monkeypatch.setattr(local.os, "fsync", real_fsync)
        assert run_cli(["shard", fuller_corpus, out, "--shard-samples", "100", "--no-progress"], capsys)[0] == 0
        resumed = out
    assert _tree(resumed) == _tree(reference)
