"""The one way viewstream connects to Ray: join a cluster, or start a local one on 127.0.0.1.

Used by `viewstream shard --ray` (sharding.executors) and `viewstream train` (trainers.runner).
A local Ray binds to 127.0.0.1 with the dashboard off (nothing listens beyond this machine).
With `log_file`, Ray's own driver-side log lines (INFO/WARNING from ``ray.*`` loggers, e.g. Ray
Train's controller polling) go to that file instead of the terminal, and workers' output stays
in Ray's session log folder instead of being streamed to the driver: the terminal shows the
run's own progress only (``--verbose`` turns this off).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

RAY_LOGGERS = ("ray", "ray.train", "ray.tune", "ray.data", "ray.serve")


def connect_ray(address: Optional[str] = None, num_cpus: Optional[int] = None, *,
                log_to_driver: bool = True, log_file: Optional[Path] = None) -> bool:
    """Join `address` (or ``RAY_ADDRESS``), else start a local Ray on 127.0.0.1.

    Returns True when this call started Ray (and so the caller should shut it down); False when
    Ray was already initialised in this process or an existing cluster was joined.
    """
    import ray

    if log_file is not None:
        route_ray_logs(log_file)
        log_to_driver = False
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    quiet = dict(configure_logging=log_file is None, logging_level=logging.WARNING if log_file else logging.INFO)
    if address:
        ray.init(address=address, log_to_driver=log_to_driver, **quiet)
        return False
    ray.init(num_cpus=num_cpus or os.cpu_count() or 1, _node_ip_address="127.0.0.1",
             include_dashboard=False, log_to_driver=log_to_driver, **quiet)
    return True


def route_ray_logs(log_file: Path) -> None:
    """Send every ``ray.*`` logger of this process to `log_file` and not to the terminal."""
    log_file = Path(log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in RAY_LOGGERS:
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            if not isinstance(old, logging.FileHandler):
                logger.removeHandler(old)
        logger.addHandler(handler)
        logger.propagate = False
