"""The tracking store without mlflow: which store (`resolve_uri`), whether it can be reached and written before any
heavy work (`check_tracking`), MLflow's errors named in one line (`mlflow_error`: read-only or missing database,
locked, not a database, unreachable server), and MLflow calls held against SIGTERM / SIGINT (`Held`), so an
interrupt never cuts an SQLite write in half. tracking.py (the adapter, the one mlflow importer) uses these.
"""
from __future__ import annotations

import functools
import os
import signal
import threading
import types
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

from toolkit.config import TrackingConfig
from toolkit.errors import TrackingError

DEFAULT_URI = "sqlite:///mlflow.db"
MLFLOW_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")


def is_mlflow_uri(spec: str) -> bool:
    """Whether a head spec names a head in an MLflow store (resolved to a folder at the edges by tracking.adapter)."""
    return str(spec).startswith(MLFLOW_SCHEMES)


def resolve_uri(tcfg: TrackingConfig) -> str:
    """The tracking URI: the config's (the CLI fills it from --tracking-uri or $MLFLOW_TRACKING_URI), else SQLite."""
    return tcfg.uri or DEFAULT_URI


# ---------------------------------------------------------------- reachability (no mlflow import)

def check_tracking(tcfg: TrackingConfig, timeout: float = 5.0, write: bool = True) -> None:
    """Raise TrackingError quickly when tracking is enabled but the store can't be reached (before heavy work):
    a server that doesn't answer, an SQLite database whose folder is missing, or (`write`) that can't be written."""
    if not tcfg.enabled:
        return
    uri = resolve_uri(tcfg)
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
    if scheme in ("http", "https"):
        check_http(uri, timeout)
    elif scheme == "sqlite":
        _check_sqlite(uri, write)
    elif scheme in ("", "file") or len(scheme) == 1:  # a plain path (or a Windows drive letter)
        raise TrackingError(f"tracking URI '{uri}' is MLflow's old file store, which MLflow 3 refuses; use "
                            "--tracking-uri sqlite:///mlflow.db or an http:// server")


def check_http(uri: str, timeout: float) -> None:
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (http/https only)
            r.read(64)
    except urllib.error.HTTPError as e:
        if e.code >= 500:
            raise TrackingError(f"MLflow tracking server at '{uri}' answered HTTP {e.code} on /health; check the "
                                "server's log, pass another --tracking-uri, or --no-track") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise TrackingError(f"MLflow tracking server at '{uri}' can't be reached ({reason}); start it "
                            "(`mlflow server --host 127.0.0.1 --port 5000`), pass another --tracking-uri, "
                            "or --no-track") from None


def _sqlite_path(uri: str) -> Optional[Path]:
    """The database file of sqlite:///PATH or sqlite:///file:PATH?mode=ro&uri=true (SQLite's URI form)."""
    rest = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
    if rest.startswith("file:"):
        rest = rest[len("file:"):].split("?", 1)[0]
    return Path(rest) if rest and rest != ":memory:" else None


def _check_sqlite(uri: str, write: bool = True) -> None:
    path = _sqlite_path(uri)
    if path is None:
        return
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise TrackingError(f"tracking database folder '{folder}' of '{uri}' does not exist; create it, pass "
                            "another --tracking-uri, or --no-track")
    if path.is_dir():
        raise TrackingError(f"tracking URI '{uri}' names a folder, not a database file; use e.g. "
                            f"sqlite:///{path / 'mlflow.db'}")
    if write and not os.access(folder, os.W_OK):
        raise TrackingError(f"tracking database folder '{folder}' of '{uri}' is not writable (SQLite writes its "
                            "journal beside the database); fix its permissions, pass another --tracking-uri, or "
                            "--no-track")
    if write and path.is_file() and not os.access(path, os.W_OK):
        raise TrackingError(_read_only(uri))
    if path.is_file() and path.stat().st_size > 0:
        with open(path, "rb") as f:
            if f.read(16) != b"SQLite format 3\x00":
                raise TrackingError(f"'{path}' named by tracking URI '{uri}' is not an SQLite database; "
                                    "pass another --tracking-uri")


@contextmanager
def first_use_lock(uri: str, timeout: float = 120.0) -> Iterator[None]:
    """Hold an exclusive lock (flock on DB.lock, beside an SQLite tracking database) while the block opens the
    store. MLflow creates a fresh database's tables (alembic migrations) with no lock of its own, so two runs
    starting together on a new mlflow.db collide ("table _alembic_tmp_latest_metrics already exists"); under
    this lock the second waits for the first. The lock file stays (removing a lock file others may be waiting
    on would let a third process in). Other stores, or a folder this process can't write: no lock."""
    path = _sqlite_path(uri)
    try:
        fd = os.open(path.with_name(path.name + ".lock"), os.O_CREAT | os.O_RDWR, 0o644) if path else None
    except OSError:  # a read-only folder: check_tracking / mlflow_error say so in their words
        fd = None
    if fd is None:
        yield
        return
    import fcntl
    import time

    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TrackingError(f"the tracking database '{uri}' is being set up by another process for "
                                        f"over {timeout:.0f} s; retry when it is done, or remove "
                                        f"{path.name}.lock beside it if no clipkit runs") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # releases the lock


# ---------------------------------------------------------------- signals held during MLflow calls

@contextmanager
def held_signals() -> Iterator[None]:
    """SIGTERM / SIGINT arriving in the block are held, then delivered to the handler in place when it ends.
    An interrupt inside an SQLite write would leave the transaction open and the database locked for the
    cleanup that follows (ending the run KILLED): MLflow calls are never cut in half."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        handler = signal.getsignal(signum)
        if handler not in (signal.SIG_IGN, None):
            previous[signum] = signal.signal(signum, lambda n, frame: pending.append(n))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if pending:
            signal.raise_signal(pending[0])


class Held:
    """mlflow (or one of its modules), every call made with signals held (see `held_signals`)."""

    def __init__(self, target: Any):
        self._target = target

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if isinstance(value, types.ModuleType):
            return Held(value)
        if not callable(value) or isinstance(value, type):
            return value

        @functools.wraps(value)
        def held(*args: Any, **kwargs: Any) -> Any:
            with held_signals():
                return value(*args, **kwargs)
        return held


# ---------------------------------------------------------------- errors in one line

def _read_only(uri: str) -> str:
    return (f"the tracking database '{uri}' is read-only; make the file and its folder writable, pass another "
            "--tracking-uri, or --no-track")


# (text in the error or its causes, what it means): SQLite's and the HTTP client's words, checked in order
_CAUSES = (
    (("readonly database", "read-only file system"), lambda uri: _read_only(uri)),
    (("unable to open database file",), lambda uri: f"the tracking database '{uri}' can't be opened (its folder "
     "is missing or not accessible); create the folder, pass another --tracking-uri, or --no-track"),
    (("database is locked",), lambda uri: f"the tracking database '{uri}' stayed locked by another process; "
     "retry when it is done, or use an `mlflow server` for concurrent runs"),
    (("file is not a database", "database disk image is malformed"), lambda uri: f"'{uri}' is not a readable "
     "SQLite database (damaged?); pass another --tracking-uri, or --no-track"),
    (("connection refused", "failed to establish a new connection", "max retries exceeded", "name or service not "
      "known", "timed out"), lambda uri: f"the MLflow tracking server at '{uri}' can't be reached; start it "
     "(`mlflow server --host 127.0.0.1 --port 5000`), pass another --tracking-uri, or --no-track"),
)


def _error_text(e: BaseException) -> str:
    """The error's message and its causes', lowercased: what `_CAUSES` is matched against."""
    parts, seen = [], set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        parts.append(str(e))
        e = e.__cause__ or e.__context__
    return "\n".join(parts).lower()


def mlflow_error(e: BaseException, uri: str, what: str) -> TrackingError:
    """One line naming the cause: a read-only or missing database, an unreachable server, ... (else MLflow's
    own first line, without SQLAlchemy's advice about autoflush)."""
    text = _error_text(e)
    path = _sqlite_path(uri)
    gone = path is not None and not path.exists() and any(n in text for n in ("readonly database", "disk i/o"))
    if gone or (path is not None and "no such table" in text):
        # SQLite answers "attempt to write a readonly database" when the file it has open was deleted, and a
        # new connection then finds a new, empty file ("no such table")
        return TrackingError(f"MLflow could not {what}: the tracking database '{uri}' was deleted or moved while "
                             "clipkit was using it; restore it (or start again: a new one is created), pass "
                             "another --tracking-uri, or --no-track")
    for needles, message in _CAUSES:
        if any(n in text for n in needles):
            return TrackingError(f"MLflow could not {what}: {message(uri)}")
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip() and not ln.startswith("(raised as a result")]
    first = (lines or [e.__class__.__name__])[0][:300]
    if "not found" in first.lower() and "run" in first.lower():  # reading a runs:/ head: a wrong id or store,
        # where --no-track (which stops a run from being recorded) would not help
        return TrackingError(f"MLflow could not {what} in '{uri}': {first}; check the run id (`clipkit compare` "
                             "lists the runs of a store) or pass the store it was logged to with --tracking-uri")
    return TrackingError(f"MLflow could not {what} in '{uri}': {first}; check --tracking-uri (or --no-track)")
