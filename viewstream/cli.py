"""The `viewstream` front door: one argparse tree with a module per command (`viewstream.commands`).

It holds no logic. Every error a user can act on (bad input, a full disk, S3 refusing) prints
one line and exits 2 (bad input) or 1 (the environment), with no traceback unless `--verbose`
(`viewstream.error_lines`); any other error is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import traceback

from viewstream.cliflags import add_verbose
from viewstream.commands import COMMANDS
from viewstream.error_lines import describe


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the problem (and `--help` shows usage)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="viewstream", description="Self-supervised visual representation learning, end to end."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"viewstream.commands.{name}").add_command(subparsers)
    for command in leaf_parsers(parser):
        if "--verbose" not in command._option_string_actions:
            add_verbose(command)
    return parser


def leaf_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parsers that run a command (`shard`, `eval knn`, ...), not the ones that group them."""
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not groups:
        return [parser]
    return [leaf for group in groups for child in dict.fromkeys(group.choices.values()) for leaf in leaf_parsers(child)]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("viewstream: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - describe() says which ones a user can act on
        shown = describe(err)
        if shown is None:
            raise
        line, code = shown
        if getattr(args, "verbose", False):
            traceback.print_exc()
        print(f"viewstream {args.command}: error: {line}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
