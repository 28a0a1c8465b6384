"""argparse value types shared by the front door's commands."""
from __future__ import annotations

import argparse
import re


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1, with an error that names the value."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return value


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_size(text: str) -> int:
    """'256MB' -> 256_000_000, '64MiB' -> 67_108_864, '1000' -> 1000 (argparse type)."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (expected e.g. 1000, 64MB, 256MiB)")
    unit = (match.group(2) or "").lower().rstrip("b")
    if unit not in _UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} has an unknown unit (expected k, M, G, T, Ki, Mi, Gi, Ti)")
    value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value
