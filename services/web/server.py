"""Run the web app with uvicorn on a socket bound here, so that port 0 works and the real port is
known before the first request: in the foreground (``python -m services.web``) or in a thread
(tests, the screenshot script)."""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI
from uvicorn.config import LOGGING_CONFIG

from histo.errors import InvalidInputError

START_TIMEOUT_S = 30.0


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (0 picks a free port); a clear error if taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise InvalidInputError(
            f"cannot listen on {host}:{port} ({exc.strerror}); choose another with --port or HISTO_WEB__PORT"
        ) from None
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server, except that a SIGINT or SIGTERM that stopped it gracefully is not raised
    again afterwards (uvicorn re-raises it, which kills the process before it can say 'stopped')."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class WebServer:
    """uvicorn serving ``app`` on an already bound socket."""

    def __init__(
        self,
        app: FastAPI,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: str = "warning",
        uvicorn_logging: bool = True,
    ) -> None:
        """``uvicorn_logging=False`` leaves uvicorn's lines to the root logger's handlers (as
        ``histo.observability.configure_logging`` set them: JSON lines stay JSON)."""
        self.socket = bind(host, port)
        self.host = host
        self.port: int = self.socket.getsockname()[1]
        log_config = LOGGING_CONFIG if uvicorn_logging else None
        self.server = _Server(
            uvicorn.Config(app, log_level=log_level, access_log=False, log_config=log_config)
        )
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def run(self) -> None:
        """Serve in this thread until SIGINT or SIGTERM (uvicorn's own handlers)."""
        self.server.run(sockets=[self.socket])

    def start(self) -> WebServer:
        """Serve in a background thread; returns once uvicorn has started."""
        self._thread = threading.Thread(target=self.run, name="histo-web", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the web server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.socket.close()


__all__ = ["WebServer", "bind"]
