"""Flags and helpers shared by the evaluation commands (eval, embed, search, dedup): the
checkpoint and eval-view flags, FAISS search parameters, and printing a result."""
from __future__ import annotations

import argparse
from typing import Any, Optional

from groundfloor.errors import UsageError
from viewstream.argtypes import positive_int
from viewstream.cliflags import add_device, add_endpoint_url, add_json, resolve_device, write_json

# trainers.methods.base.EMBEDDINGS, spelt out: parsing a command line imports no torch (a test keeps them equal).
EMBEDDINGS = ("backbone", "projection")


def add_model_inputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", help="checkpoint folder, run folder (newest checkpoint) or s3:// URI")
    p.add_argument("--image-size", type=positive_int, default=None,
                   help="eval crop size (default: the checkpoint's monitor/recipe size)")
    p.add_argument("--crop-fraction", type=float, default=None, help="center-crop fraction (default 0.875)")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--embedding", choices=EMBEDDINGS, default="backbone",
                   help="backbone features (default; transfer: kNN, probes), or the backbone then the method's "
                        "projection head (the space its loss compared views in: retrieval of the same object "
                        "across photos)")
    add_device(p)
    add_endpoint_url(p)
    add_json(p)


def add_search_params(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nprobe", type=positive_int, default=None, help="IVF lists searched per query")
    p.add_argument("--ef-search", type=positive_int, default=None, help="HNSW search breadth")
    p.add_argument("--param", nargs="+", action="extend", default=[], metavar="NAME=VALUE",
                   help="other FAISS search parameters, e.g. quantizer_efSearch=64")


def faiss_gpu(args: argparse.Namespace) -> bool:
    """--device cuda (or auto where torch sees a GPU): FAISS on the GPU where faiss-gpu can (the
    index code falls back to the CPU and says so, so no error without one)."""
    import torch

    return args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())


def search_parameters(args: argparse.Namespace) -> dict:
    from evaluation.sharded_index import search_params

    return search_params(args.nprobe, args.ef_search, args.param)


def loaded_index(args: argparse.Namespace, directory: str):
    from evaluation.sharded_index import load_index

    return load_index(directory, params=search_parameters(args), gpu=faiss_gpu(args))


def emit(result: dict[str, Any], json_out: Optional[str], lines: list[str]) -> int:
    """Print `lines`, write `result` to --json; exit code 0."""
    for line in lines:
        print(line)
    write_json(json_out, result)
    return 0


def model_from_args(args: argparse.Namespace):
    """(backbone, info, image_size, crop_fraction) from --checkpoint and the size flags."""
    from evaluation.sources import DEFAULT_CROP_FRACTION, load_checkpoint_backbone

    if not args.checkpoint:
        raise UsageError("--checkpoint is required (or pass embeddings files instead)")
    backbone, info = load_checkpoint_backbone(args.checkpoint, args.endpoint_url, args.embedding)
    backbone = backbone.to(resolve_device(args.device))
    size = args.image_size or info.image_size
    if not size:
        raise UsageError(f"checkpoint {args.checkpoint!r} does not say its image size; pass --image-size")
    crop = args.crop_fraction or info.crop_fraction or DEFAULT_CROP_FRACTION
    return backbone, info, int(size), float(crop)
