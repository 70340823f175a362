"""Starting and stopping a server: the port first (a port in use is one line, before any GPU is touched),
then the engine core process, then uvicorn; Ctrl-C / SIGTERM end in-flight streams and release workers
and ports; an engine that dies makes the process exit non-zero. A `ServerView` (the terminal view of
`shifttune serve`) is started before the engine and stopped after everything else; it may ask the server
to stop (its `q` key), which is the same graceful stop as Ctrl-C.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import threading
from dataclasses import dataclass
from typing import Callable, Protocol

import uvicorn

from shifttune.config import ConfigError, EngineConfig
from shifttune.server.api import build_app
from shifttune.server.async_engine import AsyncEngine
from shifttune.server.metrics import ServerMetrics
from shifttune.signals import STOP_SIGNALS, exit_status, sigterm_like_ctrl_c

logger = logging.getLogger("shifttune.server")
# NOTE: an idle client connection stays open this long (uvicorn's default: 5 s). Common clients (httpx, so the openai
# SDK) reuse idle connections for up to 5 s; a server that closes at the same age races them, and the request sent
# on a connection as it closes fails (profiles/runs/s29_burst_trace_cpu.txt).
KEEP_ALIVE_S = 30
ENGINE_DIED = 1


@dataclass
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: str | None = None  # default: the model argument as given
    api_key: str | None = None
    max_queue_len: int | None = None  # waiting requests beyond this get 503
    log_level: str = "info"


class ServerView(Protocol):
    def start(self, request_stop: Callable[[], None]) -> None:
        """Called before the engine starts; `request_stop()` (any thread) stops the server gracefully."""

    def stop(self) -> None:
        """Called last, also when the server failed to start."""


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OverflowError:  # the port, out of range (socket raises this before any OSError)
        sock.close()
        raise ConfigError(f"must be 0-65535, not {port}", field="port") from None
    except OSError as e:
        sock.close()
        # NOTE: an address this host does not have (or cannot resolve) is the host's fault, a taken port the port's
        bad_host = isinstance(e, socket.gaierror) or e.errno == errno.EADDRNOTAVAIL
        raise ConfigError(
            f"cannot listen on {host}:{port}: {e.strerror or e}", field="host" if bad_host else "port"
        ) from None
    sock.set_inheritable(True)
    return sock


class _Server(uvicorn.Server):
    """uvicorn, but a stop signal first ends the engine's streams, so in-flight requests finish at once."""

    def __init__(self, config: uvicorn.Config, engine: AsyncEngine):
        super().__init__(config)
        self.engine = engine

    def handle_exit(self, sig, frame) -> None:
        self.engine.request_stop()
        super().handle_exit(sig, frame)


def serve(config: EngineConfig, settings: ServerSettings, view: ServerView | None = None) -> int:
    """Runs until stopped; returns the exit code: 0 after a stop from the view, 128 + the signal after Ctrl-C /
    SIGTERM (130 / 143, as a shell reports them), ENGINE_DIED when the engine died. A stop signal while the engine
    starts raises KeyboardInterrupt (`signals.Stopped` for SIGTERM) once everything started is stopped."""
    with sigterm_like_ctrl_c():
        return _serve_with_view(config, settings, view)


def _serve_with_view(config: EngineConfig, settings: ServerSettings, view: ServerView | None) -> int:
    sock = bind(settings.host, settings.port)
    if view is None:
        return _serve(config, settings, sock, lambda stop: None)
    view.start(lambda: stop_server())
    running: list[uvicorn.Server] = []

    def stop_server() -> None:
        if running:
            running[0].engine.request_stop()
            running[0].should_exit = True  # uvicorn's loop looks every 0.1 s; no signal: exit code 0
        else:  # still starting: interrupt the wait for the engine as Ctrl-C does
            os.kill(os.getpid(), signal.SIGINT)

    try:
        return _serve(config, settings, sock, running.append)
    finally:
        view.stop()


def _serve(config: EngineConfig, settings: ServerSettings, sock: socket.socket,
           on_server: Callable[[uvicorn.Server], None]) -> int:  # fmt: skip
    name = settings.served_model_name or config.model
    metrics = ServerMetrics(name)
    metrics.observe_policy(config.shift_policy, config.shift_threshold)
    async_engine = AsyncEngine(config, metrics, settings.max_queue_len)
    try:
        async_engine.start_core()
    except BaseException:
        async_engine.stop()
        sock.close()
        raise
    try:  # from here on, whatever ends this (also a stop asked for before uvicorn runs) stops the engine
        app = build_app(async_engine, metrics, name, config.max_model_len, settings.api_key)
        uv_config = uvicorn.Config(app, log_level=settings.log_level, access_log=False, timeout_graceful_shutdown=5,
                                   timeout_keep_alive=KEEP_ALIVE_S)  # fmt: skip
        server = _Server(uv_config, async_engine)
        async_engine.on_fatal = lambda: setattr(server, "should_exit", True)
        on_server(server)
        par = config.parallel
        logger.info("serving %s on http://%s:%d (SP=%d x TP=%d, %s, policy %s, threshold %d)", name, settings.host,
                    settings.port, par.sp, par.tp, config.device, config.shift_policy,
                    config.shift_threshold)  # fmt: skip
        code = _run(server, sock)
    finally:
        async_engine.stop()
        sock.close()
    return ENGINE_DIED if async_engine.error is not None else code


def _run(server: _Server, sock: socket.socket) -> int:
    """`server.run()`; returns 0, or 128 + the signal that stopped it."""
    if threading.current_thread() is not threading.main_thread():
        server.run(sockets=[sock])
        return 0
    caught: list[int] = []

    def note(sig: int, _frame) -> None:  # before uvicorn's handlers are in place, and after they are gone
        caught.append(sig)
        server.engine.request_stop()
        server.should_exit = True

    # NOTE: once stopped, uvicorn raises the signal that stopped it again, and SIGTERM's default action would end this
    # process before the callers' cleanup (the terminal view, the port) runs: these handlers stand in meanwhile
    previous = {sig: signal.signal(sig, note) for sig in STOP_SIGNALS}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return exit_status(caught[0]) if caught else 0
