"""`viewstream train CONFIG.yaml [--set a.b=c ...] [--address ADDR]`."""
from __future__ import annotations

import argparse


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train", help="train an SSL method on shards with Ray Train (resumes a run with the same name)"
    )
    train.add_argument("config", help="YAML training config (see configs/)")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config field, e.g. --set optimizer.base_lr=0.5 (repeatable)")
    train.add_argument("--address", default=None,
                       help="Ray cluster address ('auto' for the cluster this machine is part of); "
                            "default: start a local Ray on 127.0.0.1")
    train.add_argument("--check", action="store_true", help="validate the config and inputs, then stop")
    train.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from trainers.config import TrainConfig
    from trainers.runner import check_inputs, run_training

    config = TrainConfig.load(args.config, args.overrides)
    if args.check:
        check_inputs(config)
        print(f"config OK: {config.method['name']} on {config.data.dataset}, "
              f"{config.scaling.num_workers} workers, batch {config.batch_size}")
        return 0
    result = run_training(config, address=args.address)
    print(result.summary())
    return 0
