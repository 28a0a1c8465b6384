"""Every subcommand spells the shared flags the same way and ends its --help with an example."""
from __future__ import annotations

import argparse

import pytest
import yaml

from viewstream.cli import build_parser, main
from viewstream.cliflags import FORBIDDEN_ALIASES, SHARED_FLAGS


def _subcommands(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every leaf subcommand parser, by its full name ('eval knn', 'search build', ...)."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                full = f"{prefix} {name}".strip()
                nested = _subcommands(sub, full)
                found.update(nested or {full: sub})
                if nested:
                    found[full] = sub  # groups (eval, search) need an example too
    return found


COMMANDS = _subcommands(build_parser())


def test_walks_every_stage():
    assert {"shard", "inspect", "views", "train", "demo", "eval knn", "eval linear", "eval retrieval",
            "embed", "search build", "search query", "export"} <= set(COMMANDS)


def _shared_signature(action: argparse.Action) -> tuple:
    return (tuple(action.option_strings), action.dest, action.metavar, type(action).__name__,
            tuple(action.choices) if action.choices else None, action.help)


def test_shared_flags_are_spelled_and_behave_the_same():
    seen: dict[str, tuple] = {}
    for name, parser in COMMANDS.items():
        for action in parser._actions:
            for flag in action.option_strings:
                assert flag not in FORBIDDEN_ALIASES, f"`{name}` spells a shared flag as {flag}"
                if flag in SHARED_FLAGS:
                    signature = _shared_signature(action)
                    assert seen.setdefault(flag, signature) == signature, f"`{name}` defines {flag} differently"
    assert {"--address", "--endpoint-url", "--json", "--device", "--set", "--verbose"} <= set(seen)


@pytest.mark.parametrize("flag, commands", [
    ("--endpoint-url", ["shard", "inspect", "views", "train", "eval knn", "eval linear", "eval retrieval",
                        "embed", "search query", "export"]),
    ("--json", ["shard", "inspect", "views", "train", "demo", "eval knn", "eval linear", "eval retrieval",
                "embed", "search build", "search query", "export"]),
    ("--address", ["shard", "train", "demo"]),
    ("--device", ["eval knn", "eval linear", "eval retrieval", "embed", "search query"]),
    ("--set", ["shard", "train"]),
    ("--verbose", ["train", "demo"]),
])
def test_shared_flags_are_where_they_belong(flag, commands):
    for name in commands:
        flags = {f for a in COMMANDS[name]._actions for f in a.option_strings}
        assert flag in flags, f"`{name}` lacks {flag}"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_help_shows_an_example(name):
    text = COMMANDS[name].format_help()
    assert "examples:\n  viewstream " in text, f"`{name} --help` has no example"


def test_shard_takes_a_yaml_config_with_set(tmp_path, capsys, view_corpus_small):
    config = tmp_path / "shard.yaml"
    config.write_text(yaml.safe_dump({"input": str(view_corpus_small), "output": str(tmp_path / "ds"),
                                      "shard_samples": 2, "shard_bytes": "1MiB", "name": "fromyaml"}))
    code = main(["shard", "--config", str(config), "--set", "name=overridden", "--no-progress",
                 "--json", str(tmp_path / "summary.json")])
    assert code == 0
    names = sorted(p.name for p in (tmp_path / "ds" / "shards").iterdir())
    assert names and all(n.startswith("overridden-") for n in names)
    summary = yaml.safe_load((tmp_path / "summary.json").read_text())
    assert summary["num_shards"] == len([n for n in names if n.endswith(".tar")]) >= 2


def test_shard_config_errors_are_one_line(tmp_path, capsys):
    config = tmp_path / "shard.yaml"
    config.write_text(yaml.safe_dump({"input": "x", "output": str(tmp_path / "o"), "shard_smaples": 2}))
    assert main(["shard", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "unknown field 'shard_smaples'" in err
    assert main(["shard"]) == 2
    assert "no input" in capsys.readouterr().err


@pytest.fixture
def view_corpus_small(tmp_path):
    from sharding.synthetic import generate_view_corpus

    root = tmp_path / "views"
    generate_view_corpus(root, num_groups=6, seed=3, size=24)
    return root
