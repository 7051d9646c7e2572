"""Run the app under uvicorn with a stop that is clean: SIGTERM or SIGINT ends the workers, puts
their jobs back in the queue (the app's lifespan) and exits 0 within a few seconds."""

from __future__ import annotations

import contextlib

import uvicorn

GRACEFUL_SECONDS = 3


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):
        # uvicorn re-raises the signal it caught once it has shut down, which would end the
        # process with 143/130; a stop that was asked for is a clean exit.
        with super().capture_signals():
            yield
            self._captured_signals.clear()


def serve(app, *, host: str, port: int) -> None:
    config = uvicorn.Config(app, host=host, port=port, log_level="warning",
                            timeout_graceful_shutdown=GRACEFUL_SECONDS)
    _Server(config).run()
