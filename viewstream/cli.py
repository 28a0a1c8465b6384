"""The `viewstream` front door: one argparse tree, each stage adds its own subcommands.

It holds no logic. Every stage module listed in COMMAND_MODULES has
``add_commands(subparsers)`` which registers subcommands whose ``func(args) -> int`` does the work.
Errors that a user can fix (`UsageError`) print one line and exit 2, with no traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from viewstream.errors import UsageError

# Stage modules that contribute subcommands, in help order. A module that is not written yet
# (ImportError on the module itself) is left out so the rest of the CLI keeps working.
COMMAND_MODULES = (
    "sharding.commands",      # shard, inspect
    "sharding.migrate_command",  # migrate (format version 1 -> 2)
    "pipeline.commands",      # views (what the pipeline feeds the model)
    "viewstream.train_command",  # train (trainers + the evaluation stage's online monitor)
    "evaluation.commands",       # eval, embed, search, export
    "viewstream.demo",           # demo (composes every stage)
)


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the problem (and `--help` shows usage)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="viewstream", description="Self-supervised visual representation learning, end to end."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name and module_name.startswith(err.name):
                continue
            raise
        module.add_commands(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except UsageError as err:
        print(f"viewstream {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("viewstream: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
