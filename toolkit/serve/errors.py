"""One JSON error shape for every failure the service reports.

    {"error": {"status": 413, "code": "too_many_pixels", "message": "file 'x.png' is 50000x50000 ..."}}

`ApiError` subclasses Starlette's HTTPException so that it passes through FastAPI's body parsing unchanged.
"""
from __future__ import annotations

from http import HTTPStatus
from typing import Any, Optional

from starlette.exceptions import HTTPException

from toolkit.errors import ConfigError, HeadError, InputError, ModelError, ToolkitError, TrackingError

# ToolkitError subclasses -> the `code` field (the status comes from the class's `http_status`).
_TOOLKIT_CODES = {ConfigError: "invalid_request", InputError: "invalid_input", ModelError: "model_error",
                  HeadError: "head_error", TrackingError: "tracking_error"}


class ApiError(HTTPException):
    """An HTTP error with a machine-readable `code` and a one-line `message` naming the bad value and the fix."""

    def __init__(self, status: int, code: str, message: str, headers: Optional[dict[str, str]] = None):
        super().__init__(status_code=status, detail=message, headers=headers)
        self.code, self.message = code, message


def error_body(status: int, code: str, message: str) -> dict[str, Any]:
    return {"error": {"status": status, "code": code, "message": message}}


def status_code_name(status: int) -> str:
    """404 -> 'not_found', 405 -> 'method_not_allowed'."""
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"


def toolkit_error_parts(exc: ToolkitError) -> tuple[int, str, str]:
    """(status, code, message) for a ToolkitError."""
    code = next((c for cls, c in _TOOLKIT_CODES.items() if isinstance(exc, cls)), "error")
    return exc.http_status, code, exc.phrased(lambda field: field)  # HTTP names the parameter: target_precision


def overloaded(retry_after_s: int, depth: int, capacity: int, n: int) -> ApiError:
    return ApiError(503, "overloaded", f"the queue holds {depth} of {capacity} images and can't take {n} more; "
                    f"retry after {retry_after_s}s or raise serve.queue_size", {"Retry-After": str(retry_after_s)})
