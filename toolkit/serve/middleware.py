"""RequestGuard: one pure-ASGI layer around the app for what every request needs.

- counts API requests in flight (what a graceful shutdown waits for) and refuses new ones while draining;
- refuses bodies over serve.max_request_bytes: at once from Content-Length, else while streaming;
- records per-route request counts and latencies in the app's metrics.
"""
from __future__ import annotations

import json
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ApiError, error_body
from .metrics import Metrics
from .state import ServiceState

async def send_error(send: Send, err: ApiError) -> None:
    body = json.dumps(error_body(err.status_code, err.code, err.message)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in (err.headers or {}).items()]
    await send({"type": "http.response.start", "status": err.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _too_large(limit: int, n: int) -> ApiError:
    return ApiError(413, "request_too_large", f"request body of {n} bytes is over the {limit}-byte limit "
                    "(serve.max_request_bytes); send fewer or smaller files per request")


def _content_length(scope: Scope) -> int:
    for k, v in scope.get("headers", ()):
        if k == b"content-length":
            try:
                return int(v)
            except ValueError:
                return -1
    return -1


class RequestGuard:
    def __init__(self, app: ASGIApp, state: ServiceState, metrics: Metrics):
        self.app, self.state, self.metrics = app, state, metrics

    def body_limit(self, path: str) -> int:
        """serve.max_request_bytes; the video route may take one video of serve.max_video_bytes plus the form."""
        s = self.state.settings
        if path == "/v1/predict/video":
            return max(s.max_request_bytes, s.max_video_bytes + (1 << 20))
        return s.max_request_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, t0 = scope["path"], time.perf_counter()
        api = path.startswith("/v1/")
        status = {"code": 500}
        limit = self.body_limit(path)

        async def send_tracked(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            if api and self.state.phase == "draining":
                await send_error(send_tracked, self.state.not_ready_error())
            elif _content_length(scope) > limit:
                await send_error(send_tracked, _too_large(limit, _content_length(scope)))
            else:
                await self._call(scope, receive, send_tracked, api, limit)
        finally:
            route = getattr(scope.get("route"), "path", None) or ("static" if path.startswith("/static/")
                                                                  else "unmatched")
            self.metrics.observe_request(scope["method"], route, status["code"], time.perf_counter() - t0)

    async def _call(self, scope: Scope, receive: Receive, send: Send, api: bool, limit: int) -> None:
        received = 0

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _too_large(limit, received)  # an HTTPException: FastAPI passes it to our handler
            return message

        if api:
            self.state.in_flight += 1
        try:
            await self.app(scope, receive_limited, send)
        finally:
            if api:
                self.state.in_flight -= 1
