"""The labelling page: a small FastAPI app over a Labeller (toolkit.labeling.labeller), on 127.0.0.1.

    GET  /                 the page (static/label.html + label.js, the server page's stylesheet)
    GET  /api/state        the image to label now, its suggestion and scores, counts, the head's standing
    POST /api/answer       {"row": int, "answer": label | "none" | "skip"} -> the next state
    POST /api/undo         take back the last answer -> the state (that image shown again)
    GET  /image/{row}      the image file of a store row (only rows of the session's store)

Like the main server, the page answers only its own Host names (loopback and the bound address: DNS rebinding)
and refuses POSTs from other web pages' origins (serve/origin.py): 400 / 403 before anything is read or written.

Every answer is in labels.csv before its response is sent. An answer the session refuses (the CSV was edited
into a state that breaks a rule) is a 409 with {"error": {"message"}} and nothing is written.
"""
from __future__ import annotations

from typing import Any, Optional

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from toolkit.config import ServeConfig
from toolkit.errors import ToolkitError
from toolkit.labeling.labeller import NONE, SKIP, Labeller
from toolkit.serve.errors import error_body
from toolkit.serve.origin import OriginPolicy
from toolkit.serve.routes_page import PAGE_HEADERS, STATIC_DIR

ANSWERS = {"none": NONE, "skip": SKIP}


class Answer(BaseModel):
    row: int
    answer: str


def create_label_app(labeller: Labeller, host: str = "127.0.0.1") -> FastAPI:
    """The app; the caller starts and stops the labeller's refit thread. `host`: the bound address."""
    app = FastAPI(title="clipkit label", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    policy = OriginPolicy(ServeConfig(host=host))

    @app.middleware("http")
    async def own_host_and_origin(request, call_next):
        refusal = policy.refusal(request.headers, api=request.method not in ("GET", "HEAD"))
        if refusal is not None:
            return JSONResponse(error_body(refusal.status_code, refusal.code, refusal.message),
                                status_code=refusal.status_code)
        return await call_next(request)

    @app.exception_handler(ToolkitError)
    async def toolkit_error(request, exc: ToolkitError) -> JSONResponse:
        return JSONResponse({"error": {"message": exc.message}}, status_code=409)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "label.html", media_type="text/html", headers=PAGE_HEADERS)

    @app.get("/api/state")
    def state() -> dict[str, Any]:
        return labeller.state()

    @app.post("/api/answer")
    def answer(body: Answer) -> dict[str, Any]:
        _check_row(labeller, body.row)
        value = ANSWERS.get(body.answer, body.answer)
        labeller.answer(body.row, value)
        return labeller.state()

    @app.post("/api/undo")
    def undo() -> dict[str, Any]:
        labeller.undo()
        return labeller.state()

    @app.get("/image/{row}")
    def image(row: int) -> FileResponse:
        _check_row(labeller, row)
        return FileResponse(labeller.paths[row], headers={"Cache-Control": "max-age=3600"})

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def _check_row(labeller: Labeller, row: int) -> None:
    if not 0 <= row < len(labeller.paths):
        raise HTTPException(404, f"row {row} is not in this session (0..{len(labeller.paths) - 1})")


def run_label_server(labeller: Labeller, host: str = "127.0.0.1", port: int = 8765,
                     on_ready: Optional[Any] = None) -> None:
    """Serve the page until SIGINT / SIGTERM (uvicorn's handlers: it finishes requests in flight, then returns)."""
    import uvicorn

    class _Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            # not uvicorn's: it re-raises the signal after shutdown (exit code 143); every answer is on disk already
            self.should_exit = True

    labeller.start()
    try:
        config = uvicorn.Config(create_label_app(labeller, host), host=host, port=port, log_level="warning",
                                access_log=False, timeout_graceful_shutdown=5)
        _Server(config).run()
    finally:
        labeller.stop()
