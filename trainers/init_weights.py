"""`backbone.init_from`: start a backbone from a local checkpoint file (never a download).

Reads a torchvision / timm `state_dict` (.pth/.pt/.bin, `torch.load(weights_only=True)`), a
.safetensors file (timm hub files, our `viewstream export`), or one of our training checkpoints
(the method's state under "method"), unwrapping the usual containers ("state_dict", "model",
"method", "module"). Keys are matched to the backbone's inner model by the one prefix that fits
most of them (e.g. "backbone.net." in our checkpoints, "module." from DDP); the classifier the
backbone does not have (torchvision `fc.`, timm `head.`) is dropped. Strict by default: any
missing, unexpected or mis-shaped key is a one-line UsageError naming them.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from groundfloor.errors import UsageError

__all__ = ["read_state_dict", "load_backbone_weights"]

_CONTAINERS = ("state_dict", "model", "method", "module", "model_state", "net")


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """The flat name -> tensor mapping stored in `path` (UsageError if there is none)."""
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"backbone.init_from={str(path)!r}: no such file")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(file), device="cpu")
        else:
            obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # any unreadable/unsafe file: one line, not a traceback
        raise UsageError(f"backbone.init_from={str(path)!r}: not a readable checkpoint "
                         f"({type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''})") from None
    for _ in range(4):  # a few levels of {"state_dict": {...}} wrapping
        if isinstance(obj, dict) and obj and all(isinstance(v, Tensor) for v in obj.values()):
            return dict(obj)
        if not isinstance(obj, dict):
            break
        inner = next((obj[k] for k in _CONTAINERS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    keys = ", ".join(map(str, list(obj)[:8])) if isinstance(obj, dict) else type(obj).__name__
    raise UsageError(f"backbone.init_from={str(path)!r}: holds no state dict of tensors (top level: {keys})")


def _summary(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return f"[{shown}{f', ... +{len(names) - limit} more' if len(names) > limit else ''}]"


def _best_prefix(source: dict[str, Tensor], target: set[str]) -> str:
    """The prefix whose removal makes the most source keys target keys (shortest on ties)."""
    counts: dict[str, int] = {}
    for key in source:
        for name in target:
            if key.endswith(name) and (len(key) == len(name) or key[-len(name) - 1] == "."):
                prefix = key[: len(key) - len(name)]
                counts[prefix] = counts.get(prefix, 0) + 1
    if not counts:
        return ""
    return max(counts, key=lambda p: (counts[p], -len(p)))


def load_backbone_weights(backbone: nn.Module, path: str | os.PathLike, *, strict: bool = True,
                          backbone_name: str = "backbone") -> None:
    """Copy the weights in `path` into `backbone` (its inner `net` where it has one).

    strict: every key of the model filled and every key of the file used (besides the dropped
    classifier), with equal shapes; otherwise a one-line UsageError. strict=False loads the keys
    that fit and warns with the same summary; a file of which no key fits is an error either way.
    """
    model = getattr(backbone, "net", backbone)
    target = model.state_dict()
    source = read_state_dict(path)
    prefix = _best_prefix(source, set(target))
    mapped = {k[len(prefix):]: v for k, v in source.items() if k.startswith(prefix)}
    classifier = tuple(getattr(backbone, "classifier_prefixes", ()))
    mapped = {k: v for k, v in mapped.items() if k in target or not k.startswith(classifier)}
    missing = sorted(k for k in target if k not in mapped)
    unexpected = sorted(k for k in mapped if k not in target)
    mismatched = sorted(f"{k} file {tuple(mapped[k].shape)} model {tuple(target[k].shape)}"
                        for k in mapped if k in target and mapped[k].shape != target[k].shape)
    fitting = {k: v for k, v in mapped.items() if k in target and v.shape == target[k].shape}
    problem = "; ".join(part for part in (
        f"missing keys {_summary(missing)}" if missing else "",
        f"unexpected keys {_summary(unexpected)}" if unexpected else "",
        f"shape mismatches {_summary(mismatched)}" if mismatched else "",
    ) if part)
    where = f"backbone.init_from={str(path)!r} does not fit {backbone_name}"
    if not fitting:
        raise UsageError(f"{where}: no key matches ({problem})")
    if problem and strict:
        raise UsageError(f"{where}: {problem} (set backbone.init_strict: false to load the {len(fitting)} keys that fit)")
    if problem:
        warnings.warn(f"{where}: {problem}; loaded the {len(fitting)} keys that fit", UserWarning, stacklevel=2)
    with torch.no_grad():
        for key, value in fitting.items():
            target[key].copy_(value.to(target[key].dtype))
