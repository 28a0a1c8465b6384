"""A real HTTP server on 127.0.0.1 serving a folder, with one path family that resets connections."""
from __future__ import annotations

import contextlib
import functools
import socket
import struct
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

RESET_PREFIX = "/reset/"  # any GET/HEAD below it is answered with a TCP reset, no response


class _Handler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args) -> None:  # keep test output clean
        pass

    def _reset(self) -> bool:
        if not self.path.startswith(RESET_PREFIX):
            return False
        # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True
        return True

    def do_GET(self) -> None:
        if not self._reset():
            super().do_GET()

    def do_HEAD(self) -> None:
        if not self._reset():
            super().do_HEAD()


@contextlib.contextmanager
def http_folder_server(root: Path) -> Iterator[str]:
    """Serve `root` on a free 127.0.0.1 port; yield its base URL (``http://127.0.0.1:PORT``)."""
    handler = functools.partial(_Handler, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
