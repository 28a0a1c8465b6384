"""Fixtures for deploy tests: one two-node Ray cluster on 127.0.0.1 shared by the whole session."""
from __future__ import annotations

from typing import Iterator

import pytest

from deploy.local.ray_cluster import LocalRayCluster


@pytest.fixture(scope="session")
def two_node_cluster() -> Iterator[LocalRayCluster]:
    """Head {"node_head": 1} + worker {"node_worker": 1}, dashboard on 127.0.0.1, token auth on.

    Shared (start-up is ~12 s on 2 cores); tests must leave it as they found it: tests that kill
    nodes start their own cluster.
    """
    with LocalRayCluster(head_cpus=1, worker_nodes=1, worker_cpus=1, dashboard=True) as cluster:
        cluster.wait_for_nodes(2)
        yield cluster
