"""Bad training configs fail at once, before Ray starts, with one line naming the field."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest
import yaml

from tests.trainers.small_configs import small_config
from trainers.config import TrainConfig
from groundfloor.config_files import apply_override
from groundfloor.errors import UsageError


def _write(tmp_path, config) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.mark.parametrize(
    "override, expected",
    [
        ({"optimiser": {"name": "sgd"}}, "unknown field 'optimiser'"),
        ({"batch_size": "large"}, "batch_size"),
        ({"batch_size": -8}, "batch_size"),
        ({"batch_size": 33}, "not divisible by scaling.num_workers"),
        ({"epochs": 0}, "epochs"),
        ({"method": {"name": "simclrr"}}, "unknown method 'simclrr'"),
        ({"method": {"name": "simclr", "temperature": 0}}, "temperature"),
        ({"data": {"dataset": "x", "recipe": "fancy"}}, "data.recipe"),
        ({"run": {"name": "a b"}}, "run.name"),
    ],
)
def test_bad_field_names_the_field(tmp_path, override, expected):
    config = small_config("unused", tmp_path, "bad")
    config.update(override)
    with pytest.raises(UsageError, match=expected):
        TrainConfig.load(_write(tmp_path, config))


def test_multicrop_recipe_with_a_method_without_multicrop(tmp_path):
    config = small_config("unused", tmp_path, "bad")
    config["data"].update(recipe="multicrop", recipe_options={"global_size": 28, "local_size": 16, "num_local": 2})
    with pytest.raises(UsageError, match="no multi-crop"):
        TrainConfig.load(_write(tmp_path, config))


def test_overrides_set_nested_fields_with_yaml_values():
    data = {"optimizer": {"base_lr": 0.3}}
    apply_override(data, "optimizer.base_lr=0.5")
    apply_override(data, "run.max_failures=2")
    apply_override(data, "data.recipe_options={size: 32}")
    assert data == {"optimizer": {"base_lr": 0.5}, "run": {"max_failures": 2}, "data": {"recipe_options": {"size": 32}}}


def test_cli_missing_dataset_fails_fast_with_one_line(tmp_path):
    path = _write(tmp_path, small_config(str(tmp_path / "no-such-dataset"), tmp_path, "bad"))
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "viewstream", "train", path], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "data.dataset" in lines[0] and "no manifest.json" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert time.monotonic() - started < 60


def test_cli_unknown_key_via_set(tmp_path):
    path = _write(tmp_path, small_config("unused", tmp_path, "bad"))
    proc = subprocess.run([sys.executable, "-m", "viewstream", "train", path, "--set", "run.colour=blue"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown field 'run.colour'" in proc.stderr and "Traceback" not in proc.stderr
