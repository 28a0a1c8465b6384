"""`viewstream train CONFIG.yaml [--set a.b=c ...] [--address ADDR] [--verbose]`: a validated
`TrainConfig` to `viewstream.training.run_monitored_training` (resumes a run with the same name)."""
from __future__ import annotations

import argparse
import sys

from viewstream.cliflags import (add_address, add_config, add_endpoint_url, add_json, add_verbose,
                                 with_example, write_json)


def add_command(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train", help="train an SSL method on shards with Ray Train (resumes a run with the same name)",
        **with_example("viewstream train configs/simclr_fmnist.yaml",
                       "viewstream train configs/simclr_fmnist.yaml --set optimizer.base_lr=0.5 --address auto",
                       "viewstream train run.yaml --endpoint-url http://127.0.0.1:9000 --json result.json"),
    )
    add_config(train, positional=True)
    add_address(train)
    add_endpoint_url(train)
    add_json(train)
    add_verbose(train)
    train.add_argument("--check", action="store_true", help="validate the config and inputs, then stop")
    train.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from trainers.config import TrainConfig
    from trainers.runner import check_inputs

    config = TrainConfig.load(args.config, args.overrides)
    if args.endpoint_url:
        config.data.endpoint_url = args.endpoint_url  # the flag wins (groundfloor.storage.settings)
    if args.check:
        check_inputs(config)
        print(f"config OK: {config.method['name']} on {config.data.dataset}, "
              f"{config.scaling.num_workers} workers, batch {config.batch_size}")
        return 0
    from viewstream.training import run_monitored_training

    result = run_monitored_training(config, address=args.address, verbose=args.verbose, progress=sys.stdout)
    print(result.summary())
    write_json(args.json_out, {"metrics": result.metrics, "checkpoint": result.checkpoint,
                               "out_dir": str(result.out_dir)})
    return 0
