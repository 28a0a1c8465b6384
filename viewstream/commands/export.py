"""`viewstream export`: a checkpoint's backbone as a plain torchvision/timm state_dict
(`evaluation.export`)."""
from __future__ import annotations

import argparse

from viewstream.cliflags import add_endpoint_url, add_json, with_example, write_json


def add_command(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="backbone -> plain torchvision/timm state_dict (.safetensors) + how to load it",
        **with_example("viewstream export --checkpoint runs/simclr --out backbone.safetensors"))
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="output .safetensors (a .json with the load code is written beside)")
    add_endpoint_url(p)
    add_json(p)
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from evaluation.export import export_checkpoint

    exported = export_checkpoint(args.checkpoint, args.out, endpoint_url=args.endpoint_url)
    print(f"wrote {exported.weights} ({exported.metadata['library']} {exported.metadata['architecture']}) "
          f"and {exported.sidecar}\nload it without viewstream:\n")
    print(exported.metadata["load_code"])
    write_json(args.json_out, {"weights": str(exported.weights), "sidecar": str(exported.sidecar),
                               "metadata": exported.metadata})
    return 0
