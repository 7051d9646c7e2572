"""Run the app under uvicorn with a stop that is clean: SIGTERM or SIGINT ends the workers, puts
their jobs back in the queue (the app's lifespan) and exits 0 within a few seconds.

The listening socket is bound before the app is made (`bind`, then `serve`): a server whose port
is taken fails there, before its lifespan could take over the jobs of the server that holds it
(a replica's name in the store is its host and port).
"""

from __future__ import annotations

import contextlib
import socket

import uvicorn

from ..errors import BackendError, problem

GRACEFUL_SECONDS = 3


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):
        # uvicorn re-raises the signal it caught once it has shut down, which would end the
        # process with 143/130; a stop that was asked for is a clean exit.
        with super().capture_signals():
            yield
            self._captured_signals.clear()


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or a one-line error."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        raise BackendError(problem(f"{host}:{port}", "an address to listen on", exc.strerror or str(exc))) from None
    sock.set_inheritable(True)
    return sock


def serve(app, listening: socket.socket) -> None:
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=GRACEFUL_SECONDS)
    _Server(config).run(sockets=[listening])
