"""Finding, signalling and inspecting the processes a test started, and nothing else.

A process is "ours" when its environment carries MARKER_ENV with our prefix (children inherit the
environment, daemonized or not), or it descends from such a process. PIDs are signalled through
psutil.Process objects, which refuse a PID the kernel has meanwhile given to someone else.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
from typing import Iterable, NamedTuple

import psutil

MARKER_ENV = "VIEWSTREAM_RAY_NODE"


class Listener(NamedTuple):
    """A listening TCP socket or a bound UDP socket of a process."""

    pid: int
    name: str
    ip: str
    port: int


def marked_pids(prefix: str) -> set[int]:
    """PIDs whose environment has MARKER_ENV starting with `prefix`, plus their descendants."""
    found: set[int] = set()
    for proc in psutil.process_iter():
        try:
            marker = proc.environ().get(MARKER_ENV, "")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
        if marker.startswith(prefix):
            found.add(proc.pid)
            with contextlib.suppress(psutil.Error):
                found.update(c.pid for c in proc.children(recursive=True))
    found.discard(os.getpid())
    return found


def processes(pids: Iterable[int]) -> dict[int, psutil.Process]:
    """psutil handles for the PIDs that still exist."""
    procs = {}
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            procs[pid] = psutil.Process(pid)
    return procs


def kill(pids: Iterable[int], sig: signal.Signals, recorded: Iterable[psutil.Process] = (),
         grace_s: float = 0.0) -> set[int]:
    """Send `sig` to `pids` and the `recorded` processes, wait up to grace_s (5 s if 0), SIGKILL
    what is left and reap; returns the PIDs signalled."""
    targets = processes(pids)
    for proc in recorded:
        targets.setdefault(proc.pid, proc)
    signalled = []
    for proc in targets.values():
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)
            signalled.append(proc)
    _, alive = psutil.wait_procs(signalled, timeout=grace_s or 5.0)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5.0)
    return {p.pid for p in signalled}


def listening_sockets(pids: Iterable[int]) -> list[Listener]:
    """Every TCP listener and bound UDP socket of the given processes."""
    found = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            conns = proc.net_connections(kind="inet")
            name = proc.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        for c in conns:
            if c.laddr and (c.status == psutil.CONN_LISTEN or c.type == socket.SOCK_DGRAM):
                found.append(Listener(pid, name, c.laddr.ip, c.laddr.port))
    return found
