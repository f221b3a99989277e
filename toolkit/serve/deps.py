"""Dependencies shared by the routes (and by routes_video.py): state, limits, API key, uploads.

    @router.post("/v1/thing")
    async def thing(state: StateDep, settings: SettingsDep): ...   # state.predictor, state.batcher
"""
from __future__ import annotations

import asyncio
import hmac
from typing import Annotated, Awaitable, Optional, Sequence, TypeVar

from fastapi import Depends, Request, Security, UploadFile
from fastapi.security import APIKeyHeader

from ..config import ServeConfig
from .errors import ApiError, overloaded
from .images import check_size, display_name
from .state import ServiceState

T = TypeVar("T")

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                               description="Required when the server was started with --api-key")


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


async def require_api_key(request: Request, header_key: Annotated[Optional[str], Security(_api_key_header)] = None
                          ) -> None:
    """401 unless the configured key came in `X-API-Key` or `Authorization: Bearer`; compared in constant time."""
    expected = request.app.state.service.settings.api_key
    if not expected:
        return
    given = header_key
    auth = request.headers.get("authorization", "")
    if given is None and auth[:7].lower() == "bearer ":
        given = auth[7:].strip()
    if given is None or not hmac.compare_digest(given.encode(), expected.encode()):
        what = "missing" if given is None else "wrong"
        raise ApiError(401, "unauthorized", f"API key {what}; send it in the X-API-Key header "
                       "(or Authorization: Bearer KEY)", {"WWW-Authenticate": "ApiKey"})


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


async def with_deadline(work: Awaitable[T], settings: ServeConfig, setting: str = "request_timeout_s") -> T:
    """Await `work` within the serve.<setting> deadline (504 after), turning a full queue into 503 + Retry-After."""
    from .batcher import QueueFull

    timeout = getattr(settings, setting)
    try:
        return await asyncio.wait_for(work, timeout)
    except asyncio.TimeoutError:
        raise ApiError(504, "timeout", f"the request took longer than {timeout}s "
                       f"(serve.{setting}); retry with less input or when the service is less busy"
                       ) from None
    except QueueFull as e:
        raise overloaded(settings.retry_after_s, e.depth, e.capacity, e.n) from None
