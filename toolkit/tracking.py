"""MLflow tracking: the ONLY toolkit module that imports mlflow (lazily, inside functions).

SKELETON written by the lead to fix the interface; the tracking engineer (issue 5) implements it.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Optional

from .config import Config, TrackingConfig

DEFAULT_URI = "sqlite:///mlflow.db"


def resolve_uri(tcfg: TrackingConfig) -> str:
    """The tracking URI: the config's (the CLI fills it from --tracking-uri or $MLFLOW_TRACKING_URI), else SQLite."""
    return tcfg.uri or DEFAULT_URI


def check_tracking(tcfg: TrackingConfig) -> None:
    """Raise TrackingError quickly when tracking is enabled but the store can't be reached (before heavy work)."""
    raise NotImplementedError


class _NoRun:
    """Stand-in yielded when tracking is disabled: every logging call does nothing."""

    run_id: Optional[str] = None

    def __getattr__(self, name: str):
        return lambda *a, **k: None


@contextmanager
def probe_run(cfg: Config, dataset_name: str, run_name: Optional[str] = None) -> Iterator[Any]:
    """A run tagged kind=probe. Yields an object with `log_result(result)`; an exception ends it FAILED."""
    if not cfg.tracking.enabled:
        yield _NoRun()
        return
    raise NotImplementedError


def download_head(uri: str) -> str:
    """Download a head logged to MLflow (`runs:/RUN_ID/head`, `models:/NAME/VERSION`) to a local folder."""
    raise NotImplementedError
