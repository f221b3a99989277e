"""create_app(cfg, head): the FastAPI app. The model loads in the lifespan, in the background, never at import.

While it loads, /healthz answers and /readyz says 503; API routes answer 503 + Retry-After until ready.
Every error, ours or the framework's, leaves as one JSON shape: {"error": {"status", "code", "message"}}.
"""
from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Optional

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from toolkit.config import Config
from toolkit.errors import ConfigError, ModelError, ToolkitError
from toolkit.serve.batcher import MicroBatcher
from toolkit.serve.deps import require_api_key
from toolkit.serve.errors import ApiError, error_body, status_code_name, toolkit_error_parts
from toolkit.serve.metrics import Metrics
from toolkit.serve.middleware import RequestGuard
from toolkit.serve.routes_page import STATIC_DIR
from toolkit.serve.state import ServiceState
from toolkit.serve.text import TextLane

log = logging.getLogger("clipkit.serve")


def create_app(cfg: Config, head: Optional[str] = None) -> FastAPI:
    """The service for a config. `head` (a folder, runs:/ or models:/ URI, the latter read from the config's
    tracking store) serves a probe; else serve.mode/serve.head decide (see predictor.serving_head)."""
    from toolkit.predictor import serving_head

    head = serving_head(cfg, head)
    if cfg.serve.api_key is not None and not cfg.serve.api_key.strip():
        raise ConfigError("serve.api_key is empty; give a key, or leave it out (null) to serve without one")
    state, metrics = ServiceState(settings=cfg.serve.model_copy()), Metrics()
    metrics.track(depth=lambda: state.batcher.depth if state.batcher else 0,
                  in_flight=lambda: state.in_flight, ready=lambda: 1.0 if state.ready else 0.0)
    metrics.track_text(encoded=lambda: state.text.sets_encoded if state.text else 0,
                       refused=lambda: state.text.sets_refused if state.text else 0,
                       queued=lambda: state.text.queued_labels if state.text else 0)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = asyncio.create_task(_load(state, metrics, cfg, head), name="clipkit-load")
        try:
            yield
        finally:
            if state.phase in ("loading", "ready"):
                state.begin_drain()
            loader.cancel()
            if state.batcher is not None:
                await state.batcher.stop()

    app = FastAPI(title="clipkit", lifespan=lifespan, docs_url="/docs", redoc_url=None,
                  description="Zero-shot CLIP or a trained linear probe over HTTP. Errors share one shape: "
                              '`{"error": {"status", "code", "message"}}`.')
    app.state.service, app.state.metrics = state, metrics
    app.state.video = cfg.video  # routes_video's defaults for sampling, smoothing, segments
    _add_error_handlers(app)
    app.add_middleware(RequestGuard, state=state, metrics=metrics)
    if cfg.serve.cors_origins:  # outermost: answers the allowed origins' preflights, adds their CORS headers
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=cfg.serve.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["X-API-Key", "Authorization", "Content-Type"])

    from toolkit.serve import routes_health, routes_page, routes_predict, routes_video

    api_key = [Depends(require_api_key)]
    app.include_router(routes_health.router)
    app.include_router(routes_page.router)
    app.include_router(routes_predict.router, dependencies=api_key)
    app.include_router(routes_video.router, dependencies=api_key)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


async def _load(state: ServiceState, metrics: Metrics, cfg: Config, head: Optional[str]) -> None:
    """Build the Predictor off the event loop, warm the model up, start the batcher; or record the failure."""
    t0 = time.perf_counter()
    try:
        predictor = await asyncio.to_thread(_build, cfg, head)
    except ToolkitError as e:
        state.error, state.phase = e, "failed"
        log.error("model load failed: %s", e.message)
        return
    except Exception as e:  # an unexpected failure still leaves a readable reason behind
        log.exception("model load failed")
        state.error, state.phase = ModelError(f"model load failed ({e.__class__.__name__}: {e})"), "failed"
        return
    s = cfg.serve
    batcher = MicroBatcher(_encoder(predictor.extractor), max_batch_size=s.max_batch_size,
                           max_wait_ms=s.max_wait_ms, queue_size=s.queue_size, enabled=s.micro_batching,
                           on_batch=metrics.observe_batch, in_flight=lambda: state.in_flight)
    batcher.start()
    state.text = TextLane(predictor, batcher, s.text_concurrency, s.text_queue_labels, s.retry_after_s,
                          max_wait_s=s.text_queue_s or s.request_timeout_s / 2)
    state.predictor, state.batcher = predictor, batcher
    if state.phase == "loading":
        state.phase = "ready"
    log.info("clipkit: %s model %s loaded in %.1fs; ready", predictor.mode, predictor.extractor.identity.label,
             time.perf_counter() - t0)


def _build(cfg: Config, head: Optional[str]):
    """Worker thread: the predictor, plus one warm-up forward pass so the first request is not the slow one."""
    from PIL import Image

    from toolkit.tracking.checks import is_mlflow_uri
    from toolkit.predictor import build_predictor

    if head and is_mlflow_uri(head):  # the edge: MLflow is imported only for these URIs
        from toolkit.tracking.adapter import fetch_head

        head = fetch_head(head, cfg.tracking)
    from toolkit.runtime import cache_root

    predictor = build_predictor(cfg, head=head, open_extractor=_open_extractor,
                                cache_dir=cache_root() / "negatives")  # the default detector's words, once per model
    predictor.predict_images([Image.new("RGB", (64, 64))])
    return predictor


def _open_extractor(model_cfg, check=None):
    """ONNX Runtime where encoder.fast applies (no torch import: ready in about a second instead of 15), else
    torch; model.engine decides (see config.py)."""
    from toolkit.encoder.fast import open_extractor
    from toolkit.runtime import cache_root

    return open_extractor(model_cfg, cache_root(), notify=log.warning, long_lived=True, check=check)


def _encoder(extractor):
    def encode(tensors: list) -> Any:
        """(3, H, W) preprocessed images (torch tensors, or arrays on the fast path) -> (n, D) L2-normalized float32."""
        return extractor.encode_prepared(tensors)

    return encode


def _json_error(status: int, code: str, message: str, headers: Optional[dict[str, str]] = None) -> JSONResponse:
    return JSONResponse(error_body(status, code, message), status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ToolkitError)
    async def toolkit_error(request: Request, exc: ToolkitError) -> JSONResponse:
        return _json_error(*toolkit_error_parts(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc, ApiError):
            return _json_error(exc.status_code, exc.code, exc.message, exc.headers)
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}; see /docs for the API"
        return _json_error(exc.status_code, status_code_name(exc.status_code), message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query"))
        return _json_error(422, "validation_error", f"field '{where}': {first.get('msg')}; see /docs for the "
                           "expected form fields")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _json_error(500, "internal_error", f"unexpected {exc.__class__.__name__}; the server log has "
                           "the details")
