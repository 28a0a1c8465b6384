"""The view graph's colour ops: the colour twist writes float, and solarize works on either type.

Why float after the twist: DALI's CPU kernels store float -> uint8 value by value through
``ConvertSat`` (round and clamp), and for the 3 x 3 colour map that store costs more than the
map: ``fn.color_twist`` takes ~1.6 ms of CPU per 224 px RGB view with a uint8 output and ~0.44 ms
with a float one (DALI 2.4, one thread, quiet box; ``fn.cast`` float -> uint8 alone ~0.6 ms). So the twist
reads the uint8 resize output and writes float32 clamped to [0, 255] (the range the uint8 store
clamps to, without its rounding); a view the twist skips is cast to float, since both branches
of a DALI conditional must have one type; the blur (``fn.filter``: float in, float out) and
solarize then run on float, and ``crop_mirror_normalize`` reads float as it read uint8.

The twist must READ uint8: on float input ``fn.color_twist`` centres contrast on 0.5 (the
float range's middle), not on 128 (tests/pipeline/test_colour.py holds the float output to the
uint8 one within its rounding). Operators and arguments, all on the ``cpu`` and ``gpu``
backends (the installed DALI 2.4 docstrings): ``fn.color_twist`` ``dtype`` ("Output data type.
If not set, the input type is used"), ``fn.cast`` ``dtype``, ``nvidia.dali.math.clamp`` and the
arithmetic and comparison operators on DataNodes (arithmetic expressions, evaluated on the
device of their inputs), ``fn.lookup_table`` ``keys``/``values``/``dtype``.
"""
from __future__ import annotations

SOLARIZE_THRESHOLD = 128
_SOLARIZE_KEYS = list(range(256))
_SOLARIZE_VALUES = [255 - k if k >= SOLARIZE_THRESHOLD else k for k in _SOLARIZE_KEYS]


def twist_to_float(x, brightness, contrast, saturation, hue):
    """`x` (uint8 HWC DataNode) colour-twisted into float32 in [0, 255]."""
    from nvidia.dali import fn, types
    from nvidia.dali import math as dali_math

    twisted = fn.color_twist(x, brightness=brightness, contrast=contrast, saturation=saturation, hue=hue,
                             dtype=types.FLOAT)
    return dali_math.clamp(twisted, 0.0, 255.0)


def as_float(x):
    """`x` as float32 (the branch of the twist's conditional that skips it)."""
    from nvidia.dali import fn, types

    return fn.cast(x, dtype=types.FLOAT)


def solarize(x, is_float: bool):
    """255 - v where v >= SOLARIZE_THRESHOLD: a lookup table on uint8, arithmetic on float."""
    from nvidia.dali import fn, types

    if not is_float:
        return fn.lookup_table(x, keys=_SOLARIZE_KEYS, values=_SOLARIZE_VALUES, dtype=types.UINT8)
    return x + (x >= float(SOLARIZE_THRESHOLD)) * (255.0 - 2.0 * x)
