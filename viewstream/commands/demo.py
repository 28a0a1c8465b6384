"""`viewstream demo`: every stage on one CPU box (`viewstream.demo.run_demo`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from viewstream.cliflags import add_address, add_json, add_verbose, with_example


def add_command(subparsers: argparse._SubParsersAction) -> None:
    from viewstream.demo import METHOD_SETTINGS  # light: the demo module imports its stages lazily

    demo = subparsers.add_parser(
        "demo", help="Fashion-MNIST and a natural-view corpus: train on 2 Ray workers, compare with baselines",
        **with_example("viewstream demo --quick", "viewstream demo --method byol --out demo_byol --json report.json"))
    demo.add_argument("--method", default="simclr",
                      help=f"Fashion-MNIST part: one of {sorted(METHOD_SETTINGS)} (default simclr)")
    demo.add_argument("--quick", action="store_true", help="reduced size (under 3 minutes; what CI runs)")
    demo.add_argument("--seed", type=int, default=0, help="seed of all three trainings (default 0)")
    demo.add_argument("--out", default="demo_out", help="folder for shards, runs, plots and report.json")
    add_address(demo)
    add_json(demo)
    add_verbose(demo)
    demo.set_defaults(func=run_demo_command)


def run_demo_command(args: argparse.Namespace) -> int:
    from viewstream.demo import run_demo

    run_demo(args.method, Path(args.out), args.quick, address=args.address, verbose=args.verbose,
             json_out=args.json_out, seed=args.seed)
    return 0
