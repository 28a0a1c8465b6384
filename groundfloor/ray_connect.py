"""The one way viewstream connects to Ray: join a cluster, or start a local one on 127.0.0.1.

Used by `viewstream shard --ray` (sharding.executors) and `viewstream train` (trainers.runner).
A local Ray binds to 127.0.0.1 with the dashboard off (nothing listens beyond this machine).
With `log_file`, Ray's own log lines go to that file instead of the terminal: the driver's
``ray.*`` loggers, and the lines Ray streams from workers and actors to the driver (e.g. Ray
Train's "Failed to query Ray Train Controller actor state" from its placement-group cleaner
actor). The terminal then shows the run's own progress only (``--verbose`` turns this off).
Redirecting the streamed lines uses Ray's stdstream dispatcher (``ray._private``: no public API
does this); when that is missing, streaming is switched off instead (lines stay in Ray's
session log folder), so the terminal stays quiet either way.
"""
from __future__ import annotations

import logging
import os
import re
import threading
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

    dispatcher = None
    if log_file is not None:
        route_ray_logs(log_file)
        dispatcher = _stdstream_dispatcher()
        log_to_driver = log_to_driver and dispatcher is not None
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    quiet = dict(configure_logging=log_file is None, logging_level=logging.WARNING if log_file else logging.INFO)
    if address:
        ray.init(address=address, log_to_driver=log_to_driver, **quiet)
        started = False
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count() or 1, _node_ip_address="127.0.0.1",
                 include_dashboard=False, log_to_driver=log_to_driver, **quiet)
        started = True
    if log_file is not None and log_to_driver:
        _stream_worker_lines_to(dispatcher, Path(log_file))
    return started


_HANDLER = "ray_print_logs"  # the name Ray registers its terminal printer under


def _stdstream_dispatcher():
    try:
        from ray._private import worker as ray_worker
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return None
    if not hasattr(ray_worker, "print_worker_logs") or not hasattr(dispatcher, "remove_handler"):
        return None
    return dispatcher


def _stream_worker_lines_to(dispatcher, log_file: Path) -> None:
    """Replace Ray's terminal printer of worker/actor lines with one that appends to `log_file`."""
    from ray._private import worker as ray_worker

    sink = _PlainText(open(log_file, "a", buffering=1))  # lives as long as the driver's Ray session
    lock = threading.Lock()

    def to_file(data: dict) -> None:
        with lock:
            ray_worker.print_worker_logs(data, sink)

    dispatcher.remove_handler(_HANDLER)
    dispatcher.add_handler(_HANDLER, to_file)


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


class _PlainText:
    """A text sink that drops the terminal colour codes Ray puts around worker prefixes."""

    _ANSI = re.compile(r"\x1b\[[0-9;]*m")

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(self._ANSI.sub("", text))

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return False
