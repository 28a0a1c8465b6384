"""benchmarks/gpu_check.py's CPU fallback, so the GPU check cannot rot without a GPU in CI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pydantic
import pytest

ROOT = Path(__file__).resolve().parents[2]
METHODS = ("simclr", "moco_v2", "moco_v3", "swav", "dino", "byol", "simsiam", "cpc_v2")
# What a bare GPU box lacks: the script must not need any of it (pydantic is carried as wheels,
# see the script's docstring). The 2 spawned ranks import only what this process imported first.
BARE = ("nvidia", "nvidia.dali", "ray", "webdataset", "boto3", "botocore", "moto")
RUN_BARE = (
    "import runpy, sys\n"
    f"for name in {BARE!r}: sys.modules[name] = None\n"
    "sys.argv = ['gpu_check.py'] + sys.argv[1:]\n"
    "runpy.run_path({script!r}, run_name='__main__')\n"
)


def _run(args: list[str], bare: bool) -> dict:
    script = str(ROOT / "benchmarks" / "gpu_check.py")
    cmd = [sys.executable, "-c", RUN_BARE.format(script=script), *args] if bare else [sys.executable, script, *args]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the script finds the repo itself
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd="/", env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.integration
def test_gpu_check_cpu_quick_runs_on_a_bare_box():
    result = _run(["--device", "cpu", "--quick"], bare=True)
    assert result["pydantic"] == pydantic.VERSION and result["dali"] == "absent"
    for method in METHODS:
        assert result[f"{method}_samples_per_s"] > 0
    assert result["collectives_ok"] is True and result["process_group_backend"] == "gloo"
    assert result["ddp_vs_flat_step_ratio"] > 0
    # 2 ranks through Trainer.train_step (SyncBN, gathers) == 1 rank at twice the batch, gradients
    # compared before clipping; and no host sync in a step
    assert result["two_rank_ok"] is True, result.get("two_rank_error", result.get("two_rank_worst"))
    assert result["two_rank_max_rel_error"] <= result["two_rank_tolerance"] and result["two_rank_syncbn_layers"] > 0
    assert result["two_rank_backend"] == "gloo" and result["host_sync_counter"] == "testbed.host_syncs"
    assert result["host_syncs_per_step"] == 0, result["host_syncs_by_method"]
    assert set(result["host_syncs_by_method"]) == set(METHODS)


@pytest.mark.integration
def test_gpu_check_runs_the_dali_part_where_dali_is_installed():
    result = _run(["--device", "cpu", "--quick", "--methods", "simclr"], bare=False)
    assert result["dali"] == "present" and result["pydantic"] == pydantic.VERSION
    assert result["two_rank_ok"] is True and result["host_syncs_per_step"] == 0
    assert result["dali_simclr_cpu_samples_per_s"] > 0 and result["dali_multicrop_cpu_samples_per_s"] > 0
    assert result["dali_cpu_vs_cpu_max_abs_diff"] == 0.0


def test_gpu_check_imports_only_stdlib_and_torch_at_module_level():
    import ast

    tree = ast.parse((ROOT / "benchmarks" / "gpu_check.py").read_text())
    top = {alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    top |= {node.module.split(".")[0] for node in tree.body if isinstance(node, ast.ImportFrom) and node.module}
    assert top <= {"__future__", "argparse", "json", "os", "socket", "sys", "tempfile", "time", "pathlib", "typing",
                   "torch"}, top
