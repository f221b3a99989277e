"""Dependencies shared by the routes (and by routes_video.py): state, limits, API key, uploads, cancellation.

    @router.post("/v1/thing")
    async def thing(state: StateDep, settings: SettingsDep): ...   # state.predictor, state.batcher

Cancellation: every request has a `threading.Event`, `request_cancel()`, set when its client goes away
(RequestGuard) or its deadline fires (`with_deadline`, 504). The awaiting task is cancelled too, which drops its
batcher jobs; worker-thread loops (image decoding, video frames) check the event between items:

    cancel = request_cancel()
    tensors = await asyncio.to_thread(decode_all, uploads, cancel)   # raises Cancelled once cancel is set
    feats = await state.batcher.submit(tensors, cancel)
"""
from __future__ import annotations

import asyncio
import hmac
import os
import re
import threading
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Annotated, Awaitable, Iterator, Optional, Sequence, TypeVar

from fastapi import Depends, Request, Security, UploadFile
from fastapi.security import APIKeyHeader

from toolkit.config import ServeConfig
from toolkit.serve.batcher import Cancelled, QueueFull
from toolkit.serve.errors import ApiError, overloaded
from toolkit.serve.images import check_size, display_name
from toolkit.serve.state import ServiceState

T = TypeVar("T")
_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")  # C:\ or C:/

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                               description="Required when the server was started with an API key")
_request_cancel: ContextVar[Optional[threading.Event]] = ContextVar("clipkit_request_cancel", default=None)


@contextmanager
def request_cancel_bound(event: threading.Event) -> Iterator[None]:
    """RequestGuard: `event` is the request's cancel flag for tasks (and to_thread calls) started in the block."""
    token = _request_cancel.set(event)
    try:
        yield
    finally:
        _request_cancel.reset(token)


def request_cancel() -> threading.Event:
    """This request's cancel flag: set when its client disconnects or its deadline fires. Outside a request
    (no RequestGuard): a fresh flag that nobody sets."""
    event = _request_cancel.get()
    return event if event is not None else threading.Event()


def get_state(request: Request) -> ServiceState:
    return request.app.state.service


def get_settings(request: Request) -> ServeConfig:
    return request.app.state.service.settings


def get_ready_state(request: Request) -> ServiceState:
    """The state, or 503 (with Retry-After) while loading or after a failed load.

    While draining, the guard middleware already refused new API requests; the ones that got in finish here.
    """
    state: ServiceState = request.app.state.service
    if state.predictor is None or state.phase not in ("ready", "draining"):
        raise state.not_ready_error()
    return state


def _header_bytes(value: str) -> bytes:
    """A header value's bytes as the client sent them (ASGI servers decode headers as latin-1): a key is compared
    as the UTF-8 bytes of the configured key, which is what curl sends from a UTF-8 terminal."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:  # not from a header: a str made in-process
        return value.encode("utf-8")


def api_key_error(expected: Optional[str], header_key: Optional[str], authorization: Optional[str]
                  ) -> Optional[ApiError]:
    """The 401 to answer, or None: the configured key must come in `X-API-Key` or `Authorization: Bearer`;
    compared in constant time, as bytes: the header's as sent against the key's UTF-8 encoding. RequestGuard
    calls this on the headers alone, before any body is read."""
    if not expected:
        return None
    given = header_key
    auth = authorization or ""
    if given is None and auth[:7].lower() == "bearer ":
        given = auth[7:].strip()
    if given is not None and hmac.compare_digest(_header_bytes(given), expected.encode("utf-8")):
        return None
    what = "missing" if given is None else "wrong"
    return ApiError(401, "unauthorized", f"API key {what}; send it in the X-API-Key header "
                    "(or Authorization: Bearer KEY)", {"WWW-Authenticate": "ApiKey"})


async def require_api_key(request: Request, header_key: Annotated[Optional[str], Security(_api_key_header)] = None
                          ) -> None:
    """The API key check as a dependency: documents the key in OpenAPI (RequestGuard already refused without it)."""
    err = api_key_error(request.app.state.service.settings.api_key, header_key, request.headers.get("authorization"))
    if err is not None:
        raise err


StateDep = Annotated[ServiceState, Depends(get_ready_state)]
SettingsDep = Annotated[ServeConfig, Depends(get_settings)]


# ---------------------------------------------------------------- helpers for routes

async def read_uploads(files: Sequence[UploadFile], settings: ServeConfig, max_bytes: Optional[int] = None
                       ) -> list[tuple[str, bytes]]:
    """[(display name, bytes)] with count and per-file size checked (413) before any file is read whole."""
    if len(files) > settings.max_files:
        raise ApiError(413, "too_many_files", f"{len(files)} files in one request, over the limit of "
                       f"{settings.max_files} (serve.max_files); split them over several requests")
    limit = settings.max_upload_bytes if max_bytes is None else max_bytes
    out = []
    for i, f in enumerate(files):
        name = display_name(f.filename, i)
        if f.size is not None:
            check_size(f.size, name, limit)
        data = await f.read(limit + 1)
        check_size(len(data), name, limit)
        out.append((name, data))
    return out


def public(value: T) -> T:
    """A response value with every absolute file path cut to its file name: answers never show the server's
    folders (`/home/me/models/x.safetensors` -> `x.safetensors`). Dicts and lists are walked."""
    if isinstance(value, dict):
        return {k: public(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(public(v) for v in value)
    if isinstance(value, str) and (value.startswith(("/", "~", "\\\\")) or _DRIVE.match(value)):
        return os.path.basename(value.replace("\\", "/").rstrip("/")) or "."
    return value


def parse_labels(values: Optional[Sequence[str]], settings: ServeConfig) -> Optional[list[str]]:
    """Form `labels` (repeated, and/or newline-separated) -> labels, None when none were sent; 422 when the
    field was sent but holds no label, too many, or one too long."""
    if values is None:
        return None
    labels = [ln.strip() for v in values for ln in v.splitlines() if ln.strip()]
    if not labels:
        raise ApiError(422, "invalid_labels", "the labels field is empty; send at least two labels "
                       "(one per line or one per field), or leave the field out for the default labels")
    if len(labels) > settings.max_labels:
        raise ApiError(422, "invalid_labels", f"{len(labels)} labels, over the limit of {settings.max_labels} "
                       "(serve.max_labels); send fewer")
    long = next((lb for lb in labels if len(lb) > settings.max_label_chars), None)
    if long is not None:
        raise ApiError(422, "invalid_labels", f"label {long[:40]!r}... has {len(long)} characters, over the "
                       f"limit of {settings.max_label_chars} (serve.max_label_chars); shorten it")
    return labels


async def with_deadline(work: Awaitable[T], settings: ServeConfig, setting: str = "request_timeout_s",
                        cancel: Optional[threading.Event] = None) -> T:
    """Await `work` within the serve.<setting> deadline, turning a full queue into 503 + Retry-After.

    At the deadline: `cancel` (default: the request's flag) is set, `work` is cancelled (its batcher jobs are
    dropped, its worker-thread loops stop at their next check) and the answer is 504.
    """
    timeout = getattr(settings, setting)
    cancel = cancel if cancel is not None else request_cancel()
    try:
        return await asyncio.wait_for(work, timeout)
    except asyncio.TimeoutError:
        cancel.set()
        raise ApiError(504, "timeout", f"the request took longer than {timeout}s "
                       f"(serve.{setting}); retry with less input or when the service is less busy"
                       ) from None
    except QueueFull as e:
        raise overloaded(settings.retry_after_s, e.depth, e.capacity, e.n) from None
    except Cancelled:  # the client went away (RequestGuard set the flag): nobody reads this answer
        raise ApiError(499, "cancelled", "the request was cancelled: its client went away") from None
