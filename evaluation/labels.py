"""Label vocabularies across splits and roots: one remap rule.

Each dataset root numbers its own sorted label names, so two roots (or a train and a test
split) can give the same name different ids. Every place that combines them renumbers through
`vocabulary_remap`; unlabelled rows (-1) stay -1.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch


def vocabulary_remap(source: Sequence[str], target: Sequence[str]) -> torch.Tensor:
    """Index table `t` with ``target_id = t[source_id]``; ``t[-1] == -1`` keeps unlabelled rows -1.

    Every name of `source` must be in `target`.
    """
    target = list(target)
    return torch.tensor([target.index(name) for name in source] + [-1], dtype=torch.long)


def align_labels(train, train_vocab: Optional[list[str]], test, test_vocab: Optional[list[str]]) -> None:
    """Renumber `test.labels` into the train split's vocabulary, in place (names only in test get
    new ids after the train ones, so they never match a train label)."""
    if not train_vocab or not test_vocab or train_vocab == test_vocab:
        return
    vocab = list(train_vocab) + [name for name in test_vocab if name not in train_vocab]
    test.labels = vocabulary_remap(test_vocab, vocab)[test.labels]
