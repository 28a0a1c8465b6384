"""The front door's commands, one module each, in `viewstream --help` order.

Each module has ``add_command(subparsers)``, which registers its subcommand with a
``func(args) -> int``. Modules import only argparse helpers at the top; a command's stage
imports (torch, Ray, DALI, pyarrow) happen inside its function, so `viewstream --help` stays
fast (tests/viewstream/test_cli_errors.py). Work is done by stage functions: a command maps
flags to their typed settings and prints the result.
"""

COMMANDS = ("shard", "inspect", "migrate", "views", "train", "eval", "embed", "search", "dedup", "export", "demo")
