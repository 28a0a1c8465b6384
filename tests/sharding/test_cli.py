"""Acceptance 6: bad usage gives a one-line error that names the problem, a non-zero exit, and no
traceback. Every case runs through the front door's `main()`; a representative few also run as
real ``python -m viewstream`` processes (each start-up costs seconds, so not all of them)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.sharding.conftest import REPO


@pytest.fixture(scope="module")
def cases(view_corpus, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    a_file = tmp / "a_file.txt"
    a_file.write_text("not a folder")
    no_uri = tmp / "list.csv"
    no_uri.write_text("path,label\nx.jpg,cat\n")
    corpus = str(view_corpus)
    return {
        # name: (argv, words the one-line error must contain)
        "missing input": (["shard", str(tmp / "nowhere"), str(tmp / "o1")], ["nowhere", "does not exist"]),
        "output is a file": (["shard", corpus, str(a_file)], ["a_file.txt", "not a folder"]),
        "output under a file": (["shard", corpus, str(a_file / "sub")], ["not writable"]),
        "unknown group-by": (["shard", corpus, str(tmp / "o2"), "--group-by", "banana"], ["--group-by", "banana", "file", "dir"]),
        "bad size": (["shard", corpus, str(tmp / "o3"), "--shard-bytes", "12XB"], ["--shard-bytes", "12XB"]),
        "quality out of range": (["shard", corpus, str(tmp / "o4"), "--quality", "150"], ["quality", "150"]),
        "bad shard name": (["shard", corpus, str(tmp / "o5"), "--name", "my.data"], ["name", "my.data"]),
        "manifest without uri": (["shard", str(no_uri), str(tmp / "o6")], ["list.csv", "'uri'", "path, label"]),
        "inspect not a dataset": (["inspect", str(tmp)], ["not a viewstream dataset"]),
    }


def check_one_line(name: str, returncode: int, err: str, words: list[str]) -> None:
    lines = err.strip().splitlines()
    assert returncode != 0, (name, err)
    assert len(lines) == 1, (name, err)
    assert "Traceback" not in err and lines[0].startswith("viewstream "), (name, err)
    for word in words:
        assert word in lines[0], (name, word, lines[0])


def test_bad_usage_is_one_line_error(cases, capsys):
    from viewstream.cli import main

    for name, (argv, words) in cases.items():
        try:
            returncode = main(argv)
        except SystemExit as exit_:  # argparse errors exit from inside parse_args
            returncode = exit_.code
        check_one_line(name, returncode, capsys.readouterr().err, words)


@pytest.mark.integration
def test_real_cli_processes(cases):
    env = {**os.environ, "TQDM_DISABLE": "1"}
    for name in ("missing input", "unknown group-by"):  # a UsageError and an argparse error
        argv, words = cases[name]
        proc = subprocess.run([sys.executable, "-m", "viewstream", *argv], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=180)
        check_one_line(name, proc.returncode, proc.stderr, words)
