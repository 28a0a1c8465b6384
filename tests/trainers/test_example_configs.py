"""Every example config in configs/ is valid: its method, views, optimizer and run settings."""
from __future__ import annotations

from pathlib import Path

import pytest

from trainers.config import TrainConfig

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*/*.yaml"))


def test_there_is_a_small_and_a_full_config_per_method():
    names = {(p.parent.name, p.stem) for p in CONFIGS}
    for method in ("simclr", "moco_v2", "moco_v3", "swav", "dino", "byol", "simsiam", "barlow_twins", "vicreg", "moby",
                   "cpc_v2", "ibot", "sit"):
        assert ("small", method) in names and ("full", method) in names, method


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_example_config_validates(path):
    config = TrainConfig.load(path)
    assert config.method_config().name == path.stem
    assert config.view_spec().num_global == 2
