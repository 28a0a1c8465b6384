"""`viewstream train CONFIG.yaml [--set a.b=c ...] [--address ADDR]`.

Lives in the front door because it composes two stages: the trainers' Ray Train runner and
the evaluation stage's online kNN monitor (an epoch hook), which trainers must not import.
"""
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


def run_monitored_training(config, address=None):
    """`trainers.runner.run_training` with the epoch hooks the config asks for (the kNN monitor)."""
    from evaluation.monitor import monitor_hooks
    from trainers.runner import run_training

    return run_training(config, address=address, epoch_hooks=monitor_hooks(config))


def _train(args: argparse.Namespace) -> int:
    from trainers.config import TrainConfig
    from trainers.runner import check_inputs

    config = TrainConfig.load(args.config, args.overrides)
    if args.check:
        check_inputs(config)
        print(f"config OK: {config.method['name']} on {config.data.dataset}, "
              f"{config.scaling.num_workers} workers, batch {config.batch_size}")
        return 0
    result = run_monitored_training(config, address=args.address)
    print(result.summary())
    return 0
