"""The HTTP service: `create_app(cfg, head=None)`. The only package that imports fastapi/starlette/uvicorn."""
from toolkit.serve.app import create_app

__all__ = ["create_app"]
