"""The service's lifecycle: loading -> ready -> draining, or failed. Shared by the app, its routes and the server."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional

from toolkit.config import ServeConfig
from toolkit.errors import ToolkitError
from toolkit.serve.errors import ApiError


@dataclass(eq=False)
class ServiceState:
    settings: ServeConfig
    phase: str = "loading"  # loading | ready | draining | failed
    predictor: Any = None  # toolkit.predictor.Predictor once loaded
    batcher: Any = None  # MicroBatcher once loaded
    text: Any = None  # TextLane once loaded: request label sets -> heads (serve/text.py)
    error: Optional[ToolkitError] = None  # why loading failed
    in_flight: int = 0  # /v1 requests being handled
    drain_started: Optional[float] = field(default=None)

    @property
    def ready(self) -> bool:
        return self.phase == "ready"

    def begin_drain(self) -> None:
        """SIGTERM: readiness fails, new API requests get 503, in-flight ones finish."""
        if self.phase != "draining":
            self.phase, self.drain_started = "draining", time.monotonic()

    def drained(self) -> bool:
        """Whether a draining service may exit: nothing in flight, or the grace period is over."""
        if self.phase == "failed":
            return True
        if self.phase != "draining":
            return False
        return self.in_flight == 0 or time.monotonic() - self.drain_started > self.settings.shutdown_grace_s

    def not_ready_error(self) -> ApiError:
        retry = {"Retry-After": str(self.settings.retry_after_s)}
        if self.phase == "draining":
            return ApiError(503, "shutting_down", "the service is shutting down; retry on another instance",
                            {**retry, "Connection": "close"})
        if self.phase == "failed":
            msg = self.error.message if self.error else "unknown error"
            return ApiError(503, "load_failed", f"the model failed to load: {msg}")
        return ApiError(503, "loading", "the model is still loading; retry shortly (GET /readyz says when)", retry)
