"""An epoch's batches as plain values, and their bit-for-bit comparison (rows and views)."""
from __future__ import annotations

import torch

from pipeline import ViewLoader


def epoch_batches(loader: ViewLoader, epoch: int, start: int = 0) -> list:
    """(rows, cloned views) of every batch of `epoch` from batch `start`."""
    return [(b.rows.tolist(), [v.clone() for v in b.views]) for b in loader.iter_epoch(epoch, start)]


def assert_same_batches(got: list, want: list) -> None:
    """The same rows in the same order, and bit-identical views."""
    assert [rows for rows, _ in got] == [rows for rows, _ in want]
    for (_, views), (_, expected) in zip(got, want):
        assert all(torch.equal(v, e) for v, e in zip(views, expected))
