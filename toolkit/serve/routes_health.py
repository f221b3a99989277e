"""GET /healthz (alive), GET /readyz (model loaded and not shutting down), GET /metrics (Prometheus)."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from toolkit.serve.deps import get_state
from toolkit.serve.schemas import ERROR_RESPONSES, Health
from toolkit.serve.state import ServiceState

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", response_model=Health, responses={503: ERROR_RESPONSES[503]},
            summary="Readiness: 200 once the model is loaded; 503 while loading, after a failed load, "
                    "or while shutting down")
async def readyz(state: Annotated[ServiceState, Depends(get_state)]) -> dict[str, str]:
    if not state.ready:
        raise state.not_ready_error()
    return {"status": "ready"}


@router.get("/metrics", summary="Prometheus metrics: requests, latencies, batch sizes, queue depth",
            response_class=Response)
async def metrics(request: Request) -> Response:
    m = request.app.state.metrics
    return Response(m.render(), media_type=m.content_type)
