"""A TCP proxy on 127.0.0.1 that cuts a response mid-stream on demand (a dropped connection) and
can delay every response's first byte (S3's per-request latency, for benchmarks and tests).

Written by hand (sockets and threads) because it must misbehave in exact, countable ways that
a real proxy library does not offer. Test and benchmark tooling only: nothing in the training
path imports it.
"""
from __future__ import annotations

import socket
import threading
import time


class DroppingProxy:
    """Forwards 127.0.0.1:<port> to an upstream port; `arm(n)` makes it cut the next n
    connections whose server-to-client traffic passes `drop_after` bytes, in the middle of that
    traffic (both sockets closed, as when a network path dies). `cut_bodies(n, every)` instead
    cuts n responses, one in `every`, inside their body (the headers arrive whole, so the
    client's own retries, which end when headers arrive, do not see it): what small objects
    (manifests, index parts) meet."""

    def __init__(self, upstream_port: int, drop_after: int = 20_000, first_byte_latency_s: float = 0.0):
        self.upstream_port, self.drop_after = upstream_port, drop_after
        self.first_byte_latency_s = first_byte_latency_s
        self._armed = 0
        self._cut_left, self._cut_every, self._responses = 0, 1, 0
        self.drops = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def arm(self, times: int = 1) -> None:
        with self._lock:
            self._armed = times

    def cut_bodies(self, times: int, every: int = 1) -> None:
        with self._lock:
            self._cut_left, self._cut_every, self._responses = times, every, 0

    def _claim_body_cut(self) -> bool:
        """Called at the first bytes of each response: cut this one?"""
        with self._lock:
            if not self._cut_left:
                return False
            self._responses += 1
            if self._responses % self._cut_every:
                return False
            self._cut_left -= 1
            self.drops += 1
            return True

    def close(self) -> None:
        """Stop listening and cut every open connection (the server is gone)."""
        self._closed = True
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        self._listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._closed:
                client.close()
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            with self._lock:
                self._sockets += [client, upstream]
            waiting = threading.Event()  # set: a request went up, its response has not started
            threading.Thread(target=self._pump, args=(client, upstream, False, waiting), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True, waiting), daemon=True).start()

    def _should_drop(self, sent: int) -> bool:
        with self._lock:
            if self._armed and sent > self.drop_after:
                self._armed -= 1
                self.drops += 1
                return True
        return False

    def _pump(self, src: socket.socket, dst: socket.socket, downstream: bool,
              waiting: threading.Event) -> None:
        sent = 0
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                if not downstream:
                    waiting.set()
                elif waiting.is_set():  # the first bytes of a response: S3's time to first byte
                    waiting.clear()
                    if self.first_byte_latency_s:
                        time.sleep(self.first_byte_latency_s)
                    if self._claim_body_cut():
                        head = data.find(b"\r\n\r\n")
                        body_at = head + 4 if head >= 0 else len(data)
                        dst.sendall(data[: body_at + (len(data) - body_at) // 2])
                        break
                if downstream and self._should_drop(sent + len(data)):
                    dst.sendall(data[: len(data) // 2])
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
