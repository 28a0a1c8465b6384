"""The ceiling of group retrieval on the synthetic natural-view corpus (`sharding.synthetic`).

An oracle that knows each photo's true object attributes (shape, print, repeats) and its lit
colours (after the photo's colour shift and brightness) compares colours in log-chromaticity
(brightness removed) and attributes exactly: its group recall@1 over two photos of each of N
objects is what a perfect encoder could reach on this corpus. The draws follow the generator's
distributions (its BODY_LEVELS, COLOUR_SHIFT, BRIGHTNESS and kinds), not its exact byte stream.

    .venv/bin/python benchmarks/bench_synthetic_oracle.py --objects 256 500 1000
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sharding.synthetic import BODY_LEVELS, BRIGHTNESS, COLOUR_SHIFT, PATTERNS, SHAPES  # noqa: E402


def _chromaticity(colour: np.ndarray, shift: np.ndarray, brightness: float) -> np.ndarray:
    lit = np.clip(np.clip(colour + shift, 0, 255) * brightness, 0, 255)
    log = np.log(lit + 1)
    return log - log.mean()


def oracle_recall_at_1(objects: int, two_tone: bool, kinds: int, seed: int = 1) -> float:
    """recall@1 of the oracle over 2 photos of each of `objects` objects with `kinds` discrete
    attribute combinations (shape x print x visible repeats) and one or two colours."""
    features, kind, group = [], [], []
    for n in range(objects):
        rng = random.Random(f"oracle/{seed}/{n}")
        k = rng.randrange(kinds)
        colours = [np.array([rng.randrange(*BODY_LEVELS) for _ in range(3)], float)]
        if two_tone:
            colours.append(np.array([rng.randrange(0, 256) for _ in range(3)], float))
        for _ in range(2):
            shift = np.array([rng.randrange(-COLOUR_SHIFT, COLOUR_SHIFT + 1) for _ in range(3)], float)
            brightness = rng.uniform(*BRIGHTNESS)
            features.append(np.concatenate([_chromaticity(c, shift, brightness) for c in colours]))
            kind.append(k)
            group.append(n)
    f, kinds_arr, groups = np.stack(features), np.array(kind), np.array(group)
    hits = 0
    for i in range(len(f)):
        distance = ((f - f[i]) ** 2).sum(1) + 1e9 * (kinds_arr != kinds_arr[i])
        distance[i] = np.inf
        hits += int(groups[distance.argmin()] == groups[i])
    return hits / len(f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, nargs="+", default=[256, 500, 1000])
    args = parser.parse_args()
    result = {}
    for n in args.objects:
        result[str(n)] = {
            # the first generator: 4 shapes x 4 stripe counts, one colour; and without the stripe count
            "one_colour_16_kinds": oracle_recall_at_1(n, False, len(SHAPES) * 4),
            "one_colour_4_kinds": oracle_recall_at_1(n, False, len(SHAPES)),
            # today's: 4 shapes x 4 prints, body + accent colour
            "two_tone_16_kinds": oracle_recall_at_1(n, True, len(SHAPES) * len(PATTERNS)),
        }
        print(n, result[str(n)])
    print(json.dumps({"oracle_recall_at_1": result}))


if __name__ == "__main__":
    main()
