"""The `viewstream` front door: one argparse tree with a module per command (`viewstream.commands`).

It holds no logic. Errors that a user can fix (`UsageError`) print one line and exit 2, with no
traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from groundfloor.errors import UsageError
from viewstream.commands import COMMANDS


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
