"""RequestGuard: one pure-ASGI layer around the app for what every request needs, before any route runs.

- refuses requests for a foreign Host (400) and API requests from other web origins (403, origin.py), new API
  requests while draining (503), API requests without the configured key (401), and bodies
  declared over serve.max_request_bytes (413): from the headers alone, before a byte of the body is read;
- reads the body within deadlines: serve.body_timeout_s of silence or serve.body_total_timeout_s in all
  answer 408; bodies over the limit while streaming answer 413; any answer sent before the whole body arrived
  closes the connection (nothing keeps reading a body nobody wants);
- gives each request a cancel flag (`deps.request_cancel()`); once the body is in, watches for the client going
  away: then the flag is set and the request's task is cancelled, so its images leave the batcher's queue;
- counts API requests in flight (what a graceful shutdown waits for);
- records per-route request counts and latencies in the app's metrics (499: the client went away).
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Callable, Optional

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from toolkit.config import ServeConfig
from toolkit.serve.deps import api_key_error, request_cancel_bound
from toolkit.serve.errors import ApiError, error_body
from toolkit.serve.metrics import Metrics
from toolkit.serve.origin import OriginPolicy
from toolkit.serve.state import ServiceState


async def send_error(send: Send, err: ApiError) -> None:
    body = json.dumps(error_body(err.status_code, err.code, err.message)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in (err.headers or {}).items()]
    await send({"type": "http.response.start", "status": err.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _too_large(limit: int, n: int) -> ApiError:
    return ApiError(413, "request_too_large", f"request body of {n} bytes is over the {limit}-byte limit "
                    "(serve.max_request_bytes); send fewer or smaller files per request")


def _content_length(headers: Headers) -> int:
    try:
        return int(headers.get("content-length", "-1"))
    except ValueError:
        return -1


class _Exchange:
    """One request's receive side: the body under the size limit and within the read deadlines, then a watch for
    the client going away (its result answers any later receive call)."""

    def __init__(self, receive: Receive, limit: int, settings: ServeConfig, has_body: bool):
        self._receive, self.limit, self.settings = receive, limit, settings
        self.body_pending = has_body  # some of the body has not arrived yet
        self.received = 0
        self.deadline = asyncio.get_running_loop().time() + settings.body_total_timeout_s
        self.cancel = threading.Event()
        self.response_started = self.disconnected = False
        self.on_disconnect: Callable[[], object] = lambda: None
        self._watch: Optional[asyncio.Task] = None

    async def receive(self) -> Message:
        if self._watch is not None:
            return await asyncio.shield(self._watch)
        message = await self._next()
        if message["type"] == "http.disconnect":
            self.disconnected = True
            self.cancel.set()
        elif message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                raise _too_large(self.limit, self.received)  # an HTTPException: FastAPI passes it to our handler
            if not message.get("more_body", False):
                self.body_pending = False
                self._watch = asyncio.get_running_loop().create_task(self._watch_disconnect())
        return message

    async def _next(self) -> Message:
        """The next message within body_timeout_s, and before the whole-body deadline; else 408."""
        wait = min(self.settings.body_timeout_s, self.deadline - asyncio.get_running_loop().time())
        try:
            if wait <= 0:
                raise asyncio.TimeoutError
            return await asyncio.wait_for(self._receive(), wait)
        except asyncio.TimeoutError:
            s = self.settings
            raise ApiError(408, "request_timeout", f"the request body stalled after {self.received} bytes: "
                           f"at most {s.body_timeout_s}s between parts and {s.body_total_timeout_s}s in all "
                           "(serve.body_timeout_s, serve.body_total_timeout_s); send the body without pauses",
                           {"Connection": "close"}) from None

    async def _watch_disconnect(self) -> Message:
        """After the body: the server says 'http.disconnect' when the client goes away (or the response is done)."""
        message = await self._receive()
        if message["type"] == "http.disconnect" and not self.response_started:
            self.disconnected = True
            self.cancel.set()
            self.on_disconnect()
        return message

    def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()


class RequestGuard:
    def __init__(self, app: ASGIApp, state: ServiceState, metrics: Metrics):
        self.app, self.state, self.metrics = app, state, metrics
        self.origins = OriginPolicy(state.settings)
        metrics.track_cancelled(lambda: getattr(state.batcher, "images_cancelled", 0))

    def body_limit(self, path: str) -> int:
        """serve.max_request_bytes; the video route may take one video of serve.max_video_bytes plus the form."""
        s = self.state.settings
        if path == "/v1/predict/video":
            return max(s.max_request_bytes, s.max_video_bytes + (1 << 20))
        return s.max_request_bytes

    def refusal(self, headers: Headers, api: bool, limit: int) -> Optional[ApiError]:
        """The answer that needs no body: a foreign Host (400) or browser origin (403), draining (503), no or
        wrong API key (401), declared size over the limit (413); None to go on."""
        err = self.origins.refusal(headers, api)
        if err is not None:
            return err
        if api and self.state.phase == "draining":
            return self.state.not_ready_error()
        if api:
            err = api_key_error(self.state.settings.api_key, headers.get("x-api-key"), headers.get("authorization"))
            if err is not None:
                return err
        if _content_length(headers) > limit:
            return _too_large(limit, _content_length(headers))
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, t0 = scope["path"], time.perf_counter()
        api, headers, limit = path.startswith("/v1/"), Headers(scope=scope), self.body_limit(path)
        has_body = _content_length(headers) > 0 or "transfer-encoding" in headers
        exchange = _Exchange(receive, limit, self.state.settings, has_body)
        status = {"code": 500}

        async def send_tracked(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"], exchange.response_started = message["status"], True
                raw = list(message.get("headers", []))
                if exchange.body_pending and (b"connection", b"close") not in raw:
                    # answered before the whole body came: close, don't read the rest
                    message = {**message, "headers": [*raw, (b"connection", b"close")]}
            await send(message)

        try:
            err = self.refusal(headers, api, limit)
            if err is not None:
                await send_error(send_tracked, err)
            else:
                await self._call(scope, exchange, send_tracked, api)
        finally:
            exchange.close()
            if exchange.disconnected and not exchange.response_started:
                status["code"] = 499  # nginx's "client closed request"
            route = getattr(scope.get("route"), "path", None) or ("static" if path.startswith("/static/")
                                                                  else "unmatched")
            self.metrics.observe_request(scope["method"], route, status["code"], time.perf_counter() - t0)

    async def _call(self, scope: Scope, exchange: _Exchange, send: Send, api: bool) -> None:
        """The app in a task of its own (with the request's cancel flag), cancelled when the client goes away."""
        if api:
            self.state.in_flight += 1
        with request_cancel_bound(exchange.cancel):
            task = asyncio.ensure_future(self.app(scope, exchange.receive, send))
        exchange.on_disconnect = task.cancel
        try:
            await task
        except asyncio.CancelledError:
            if not (exchange.disconnected and task.cancelled()):
                raise
            # the client is gone: its work is cancelled and nobody reads an answer
        finally:
            if api:
                self.state.in_flight -= 1
