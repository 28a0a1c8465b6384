"""Fixtures for the sharding tests: tiny corpora, the real CLI, a moto S3 server on 127.0.0.1."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.s3_server import moto_s3_server

from sharding.fashion_mnist import FASHION_MNIST_DIR, export_fashion_mnist
from sharding.synthetic import generate_view_corpus

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, loopback_only: bool = False, timeout: float = 240, **kwargs) -> subprocess.CompletedProcess:
    """Run ``python -m viewstream ARGS`` (optionally in a loopback-only network namespace)."""
    cmd = [sys.executable, "-m", "viewstream", *args]
    if loopback_only and can_unshare():
        cmd = ["unshare", "-n", "bash", "-c", 'ip link set lo up && exec "$@"', "_", *cmd]
    env = {**os.environ, "TQDM_DISABLE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout, **kwargs)


def can_unshare() -> bool:
    try:
        return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


def tree_digest(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under `root` (the whole output, nothing skipped)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="session")
def view_corpus(tmp_path_factory) -> Path:
    """24 synthetic objects, 1-6 views each, JPEG and PNG, in {shape}/{object}/{view} folders."""
    root = tmp_path_factory.mktemp("views")
    generate_view_corpus(root, num_groups=24, seed=7, size=40)
    return root


@pytest.fixture(scope="session")
def fashion_corpus(tmp_path_factory) -> Path:
    """The first 150 Fashion-MNIST training images as train/{label}/{n}.png."""
    if not Path(FASHION_MNIST_DIR).is_dir():
        pytest.fail(f"Fashion-MNIST is missing at {FASHION_MNIST_DIR}: install dataset-fashion-mnist")
    root = tmp_path_factory.mktemp("fmnist")
    export_fashion_mnist(root, "train", limit_per_split=150)
    return root / "train"


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1 (random port) with fake credentials in the environment."""
    with moto_s3_server() as endpoint:
        yield endpoint
