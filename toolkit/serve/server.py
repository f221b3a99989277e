"""Run the app under uvicorn with slow-client timeouts and a graceful, bounded shutdown.

On SIGTERM (or Ctrl-C): /readyz turns 503 and new API requests get 503, requests in flight finish (at most
serve.shutdown_grace_s), then the server closes and the process exits 0. Nothing can hold the process longer:
still running 1 s past the grace period (a model call that never returns, a request that won't end, a model
still loading), it logs one line and exits 1. A second signal gives it 1 s.

Slow clients: request headers must be complete serve.header_timeout_s after the connection opened (or the
request's first byte came), else 408 and close (uvicorn's h11 protocol has no such timer: GuardedH11Protocol);
an idle keep-alive connection closes after serve.keep_alive_s; body deadlines live in RequestGuard.
"""
from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import Optional

import h11
import uvicorn
from uvicorn.config import LOGGING_CONFIG
from uvicorn.protocols.http.h11_impl import H11Protocol

from toolkit.config import Config
from toolkit.serve.app import create_app
from toolkit.serve.errors import error_body
from toolkit.serve.state import ServiceState

log = logging.getLogger("clipkit.serve")

SHUTDOWN_SLACK_S = 1.0  # past the grace period: closing connections, stopping the model thread


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on request headers (set `header_timeout_s` in a subclass).

    The timer runs from connection_made, and on a kept-alive connection from the first byte of the next request,
    until that request's headers are complete. When it fires: 408 and close if part of a request came, close if
    nothing came. (Between requests, uvicorn's keep-alive timer closes idle connections.) Always h11, even where
    httptools is installed: this is the protocol the timer is written against.
    """

    header_timeout_s: float = 10.0
    _header_timer: Optional[asyncio.TimerHandle] = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and self.conn.their_state is h11.IDLE:
            self._arm_header_timer()  # the first bytes of the next request on a kept-alive connection
        super().data_received(data)

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # the request's headers are in
            self._disarm_header_timer()

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.conn.trailing_data[0]:  # part of a request line or headers
            self.transport.write(self._timeout_response())
        self.transport.close()

    def _timeout_response(self) -> bytes:
        body = json.dumps(error_body(408, "request_timeout", f"the request headers did not arrive within "
                                     f"{self.header_timeout_s}s (serve.header_timeout_s); send the whole request "
                                     "without pauses")).encode()
        return (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: "
                + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)


class ShutdownWatchdog:
    """Once armed, exits the process (code 1, one log line saying what held it) if it is still here at the
    deadline. A daemon thread: a process that exits first takes it along."""

    def __init__(self, state: ServiceState):
        self.state = state
        self.started = self.deadline = 0.0
        self._thread: Optional[threading.Thread] = None

    def arm(self, seconds: float) -> None:
        """Exit at the latest `seconds` from now (an earlier deadline already set stays)."""
        deadline = time.monotonic() + seconds
        if self._thread is None:
            self.started, self.deadline = time.monotonic(), deadline
            self._thread = threading.Thread(target=self._run, name="clipkit-shutdown-watchdog", daemon=True)
            self._thread.start()
        self.deadline = min(self.deadline, deadline)

    def _run(self) -> None:
        while time.monotonic() < self.deadline:
            time.sleep(min(0.05, max(0.0, self.deadline - time.monotonic())))
        log.error("clipkit: shutdown not done %.1fs after the signal (serve.shutdown_grace_s=%s): %s; exiting "
                  "with code 1", time.monotonic() - self.started, self.state.settings.shutdown_grace_s,
                  self.holdup())
        sys.stderr.flush()
        os._exit(1)

    def holdup(self) -> str:
        batcher = self.state.batcher
        busy = batcher.busy_for() if batcher is not None else None
        if busy is not None:
            return f"the model worker has been in one call for {busy:.1f}s"
        if self.state.predictor is None and self.state.error is None:
            return "the model is still loading"
        if self.state.in_flight:
            return f"{self.state.in_flight} request(s) still in flight"
        return "the server did not close"


class GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: ServiceState):
        super().__init__(config)
        self.state = state
        self.watchdog = ShutdownWatchdog(state)

    def handle_exit(self, sig: int, frame: Optional[FrameType]) -> None:
        # Not calling super(): uvicorn would re-raise the signal after shutdown, and the exit code would be 143.
        self.watchdog.arm(self.state.settings.shutdown_grace_s + SHUTDOWN_SLACK_S)
        if self.state.phase == "ready":
            self.state.begin_drain()
        elif self.state.phase == "draining" and sig in (signal.SIGINT, signal.SIGTERM):
            self.should_exit = self.force_exit = True  # second signal: don't wait any longer
            self.watchdog.arm(SHUTDOWN_SLACK_S)
        else:  # still loading, or failed: nothing to drain
            if self.state.phase == "loading":
                self.state.begin_drain()
            self.should_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self.state.drained():
            self.should_exit = True
        return await super().on_tick(counter)


def log_config(level: str) -> dict:
    """uvicorn's logging config plus our own 'clipkit' logger on the same handler."""
    cfg = copy.deepcopy(LOGGING_CONFIG)
    cfg["loggers"]["clipkit"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return cfg


def run_server(cfg: Config, head: Optional[str] = None, log_level: str = "info", access_log: bool = True) -> None:
    """Serve until SIGTERM/SIGINT. Raises the ToolkitError when the model failed to load."""
    app = create_app(cfg, head)
    state: ServiceState = app.state.service
    s = cfg.serve
    protocol = type("ClipkitH11Protocol", (GuardedH11Protocol,), {"header_timeout_s": s.header_timeout_s})
    # The drain already gave requests in flight the grace period: uvicorn's own wait only closes connections.
    config = uvicorn.Config(app, host=s.host, port=s.port, log_level=log_level, log_config=log_config(log_level),
                            access_log=access_log, server_header=False, proxy_headers=False, http=protocol,
                            timeout_keep_alive=s.keep_alive_s, timeout_graceful_shutdown=SHUTDOWN_SLACK_S / 2)
    GracefulServer(config, state).run()
    if state.phase == "failed" and state.error is not None:
        raise state.error
