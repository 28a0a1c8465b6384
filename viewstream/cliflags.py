"""The flags every subcommand shares, defined once so they are spelled and behave the same.

Used by every module of `viewstream.commands`:

    --address ADDR      Ray cluster to join (default: RAY_ADDRESS, else a local Ray on 127.0.0.1)
    --endpoint-url URL  S3 endpoint (precedence in groundfloor.storage.settings: flag > config > env)
    --json PATH         also write the command's result as one JSON object to PATH
    --device DEV        auto (cuda if present, else cpu), cpu or cuda
    --config/--set      a YAML config and KEY=VALUE overrides of it (train, shard)
    --verbose           show an error's traceback, and Ray's own log lines on the terminal

`tests/viewstream/test_cli_conventions.py` walks every subcommand and checks these are the only
spellings, and that every command's ``--help`` ends with an example.
"""
from __future__ import annotations

from groundfloor.errors import UsageError

import argparse
import json
from pathlib import Path
from typing import Any, Optional

SHARED_FLAGS = ("--address", "--endpoint-url", "--json", "--device", "--set", "--config", "--verbose")
# Spellings that mean one of the shared flags and must not come back.
FORBIDDEN_ALIASES = ("--ray-address", "--endpoint", "--s3-endpoint", "--json-out", "--out-json",
                     "--kind", "--gpu", "--cuda", "--override", "--quiet-ray")


def with_example(*lines: str) -> dict[str, Any]:
    """``add_parser`` keywords that end `--help` with examples (kept as written)."""
    return {"epilog": "examples:\n" + "\n".join(f"  {line}" for line in lines),
            "formatter_class": argparse.RawDescriptionHelpFormatter}


def add_address(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=None, metavar="ADDR",
                   help="Ray cluster to join ('auto': the cluster this machine is in); "
                        "default: RAY_ADDRESS, else start a local Ray on 127.0.0.1")


def add_endpoint_url(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint-url", default=None, metavar="URL",
                   help="S3 endpoint (MinIO, moto); overrides the config's endpoint_url and "
                        "AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL; default: AWS")


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", dest="json_out", default=None, metavar="PATH",
                   help="also write the result as one JSON object to PATH")


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where the model runs (auto: cuda if available, else cpu)")


def add_config(p: argparse.ArgumentParser, *, positional: bool = False) -> None:
    """A YAML config (positional CONFIG for train, --config for shard) and --set overrides."""
    if positional:
        p.add_argument("config", help="YAML config (see configs/)")
    else:
        p.add_argument("--config", default=None, metavar="YAML", help="YAML config (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set a.b=1 (repeatable)")


def add_verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", action="store_true",
                   help="show the traceback of an error, and Ray's own INFO/WARNING lines here "
                        "(default: one line per error; Ray's lines in the run folder's ray.log)")


def resolve_device(name: str) -> str:
    """`--device`: auto (cuda when torch sees a GPU, else cpu), cpu, or cuda (UsageError without one)."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: torch sees no CUDA GPU here; use --device cpu")
    if name not in ("cpu", "cuda"):
        raise UsageError(f"--device {name!r}: expected auto, cpu or cuda")
    return name


def write_json(path: Optional[str], result: Any) -> None:
    """Write `result` to `path` (from --json) as one JSON object; nothing when path is None."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=2, sort_keys=True, default=str) + "\n")
