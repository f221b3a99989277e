"""Run the app under uvicorn with a graceful shutdown.

On SIGTERM (or Ctrl-C): /readyz turns 503 and new API requests get 503, requests in flight finish (at most
serve.shutdown_grace_s), then the server closes and the process exits 0. A second signal exits at once.
"""
from __future__ import annotations

import copy
import signal
from types import FrameType
from typing import Optional

import uvicorn
from uvicorn.config import LOGGING_CONFIG

from ..config import Config
from .app import create_app
from .state import ServiceState


class GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: ServiceState):
        super().__init__(config)
        self.state = state

    def handle_exit(self, sig: int, frame: Optional[FrameType]) -> None:
        # Not calling super(): uvicorn would re-raise the signal after shutdown, and the exit code would be 143.
        if self.state.phase == "ready":
            self.state.begin_drain()
        elif self.state.phase == "draining" and sig in (signal.SIGINT, signal.SIGTERM):
            self.should_exit = self.force_exit = True  # second signal: don't wait any longer
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
    config = uvicorn.Config(app, host=cfg.serve.host, port=cfg.serve.port, log_level=log_level,
                            log_config=log_config(log_level), access_log=access_log, server_header=False,
                            proxy_headers=False, timeout_graceful_shutdown=max(1, int(cfg.serve.shutdown_grace_s)))
    GracefulServer(config, state).run()
    if state.phase == "failed" and state.error is not None:
        raise state.error
