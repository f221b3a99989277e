"""MLflow tracking: the ONLY toolkit module that imports mlflow (lazily, inside functions).

The store is `sqlite:///mlflow.db` with artifacts in ./mlartifacts unless the config names another URI (the
CLI fills it from --tracking-uri or $MLFLOW_TRACKING_URI), e.g. a team's `mlflow server`. Every run is
tagged `kind` (prompt | probe) and `dataset`, so `clipkit compare` can line prompt sets up against probes.

A run starts before the work it records and ends FINISHED only when everything was logged; an exception
ends it FAILED (KILLED on Ctrl-C) with the error in the `error` tag and a traceback in error.txt.
Reachability, error messages and signal-safe calls live in tracking_checks.py (no mlflow import there); what
each kind of run records lives in run_records.py (no mlflow import there); a probe run's head is logged
as an MLflow model from code (toolkit/tracking/logged_model.py, the file MLflow itself loads) and registered.
"""
from __future__ import annotations

import json
import logging
import os
import traceback
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

from toolkit.config import Config, TrackingConfig, config_to_yaml
from toolkit.errors import TrackingError
from toolkit.tracking.checks import is_mlflow_uri
from toolkit.tracking.checks import (DEFAULT_URI, Held, check_http, check_tracking, first_use_lock,  # noqa: F401
                                     mlflow_error, resolve_uri)  # DEFAULT_URI, check_tracking: re-exported for the CLI

HEAD_PATH = "head"  # the head folder's artifact path in a probe run: runs:/RUN_ID/head
MODEL_NAME = "model"  # the pyfunc model's name in a probe run: runs:/RUN_ID/model
PARAM_MAX = 6000  # MLflow's limit on a param value's length
KINDS = ("prompt", "probe")


def experiment_name(tcfg: TrackingConfig, dataset_name: str) -> str:
    """The configured experiment, else one per dataset: 'clipkit-<dataset>'."""
    return tcfg.experiment or f"clipkit-{dataset_name}"


# ---------------------------------------------------------------- mlflow access

def _mlflow(uri: str):
    """The mlflow module, pointed at `uri` (quiet progress bars, no autologging surprises)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow

    _quiet_db_errors()
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no INFO lines ("Creating initial MLflow database
    # tables...") on the user's stderr; warnings and errors still show
    mlflow.set_tracking_uri(uri)
    return mlflow


class _NoTracebacks(logging.Filter):
    """Drops log records that carry a traceback: MLflow logs a database error's whole SQLAlchemy traceback
    (~90 lines) before raising it; the raised error reaches the user as one line (`mlflow_error`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.exc_info is None


def _quiet_db_errors() -> None:
    log = logging.getLogger("mlflow.store.db.utils")
    if not any(isinstance(f, _NoTracebacks) for f in log.filters):
        log.addFilter(_NoTracebacks())


def _backend_errors() -> tuple[type[BaseException], ...]:
    """What a tracking backend raises: MLflow's errors, and the SQLAlchemy / HTTP errors it lets through."""
    from mlflow.exceptions import MlflowException

    found: list[type[BaseException]] = [MlflowException]
    try:
        from sqlalchemy.exc import SQLAlchemyError

        found.append(SQLAlchemyError)
    except ImportError:
        pass
    try:
        from requests.exceptions import RequestException

        found.append(RequestException)
    except ImportError:
        pass
    return tuple(found)


def _artifact_location(tcfg: TrackingConfig, uri: str) -> Optional[str]:
    """Where a new experiment keeps its artifacts: a server picks its own; a database store gets ./mlartifacts."""
    if uri.startswith(("http://", "https://", "databricks")):
        return None
    loc = tcfg.artifact_location
    return loc if "://" in loc else Path(loc).expanduser().resolve().as_uri()


def _experiment_id(mlflow, tcfg: TrackingConfig, name: str, create: bool = True) -> Optional[str]:
    from mlflow.exceptions import MlflowException

    uri = resolve_uri(tcfg)
    exp = mlflow.get_experiment_by_name(name)
    if exp is None and create:
        try:
            return mlflow.create_experiment(name, artifact_location=_artifact_location(tcfg, uri))
        except MlflowException:  # created by someone else in between, or the store refused the write
            exp = mlflow.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp is not None and exp.lifecycle_stage == "deleted":
        raise TrackingError(f"experiment '{name}' in '{uri}' is deleted; restore it in the MLflow UI or pass "
                            "another --experiment")
    return exp.experiment_id if exp is not None else None


def _flat_params(params: dict[str, Any]) -> dict[str, str]:
    """Param values as MLflow wants them: strings no longer than its limit, lists joined by ' | '."""
    out = {}
    for k, v in params.items():
        if v is None:
            v = "none"
        elif isinstance(v, (list, tuple)):
            v = " | ".join(str(x) for x in v)
        elif isinstance(v, dict):
            v = json.dumps(v, sort_keys=True, default=str)
        v = str(v)
        out[k] = v if len(v) <= PARAM_MAX else v[:PARAM_MAX - 3] + "..."
    return out


def metric_key(name: str) -> str:
    """A metric name MLflow accepts (alphanumerics, _ - . space / :)."""
    return "".join(ch if ch.isalnum() or ch in "_-. /:" else "_" for ch in name)


class TrackedRun:
    """An open MLflow run: thin logging helpers over the fluent API."""

    def __init__(self, mlflow, run, cfg: Config, experiment: str):
        self.mlflow, self.run, self.cfg, self.experiment = mlflow, run, cfg, experiment
        self.run_id: str = run.info.run_id

    def params(self, params: dict[str, Any]) -> None:
        self.mlflow.log_params(_flat_params(params))

    def metrics(self, metrics: dict[str, Any]) -> None:
        self.mlflow.log_metrics({metric_key(k): float(v) for k, v in metrics.items() if v is not None})

    def tags(self, tags: dict[str, Any]) -> None:
        self.mlflow.set_tags({k: str(v) for k, v in tags.items() if v is not None})

    def text(self, text: str, name: str) -> None:
        self.mlflow.log_text(text, name)

    def file(self, path: str | Path, folder: Optional[str] = None) -> None:
        self.mlflow.log_artifact(str(path), folder)

    def folder(self, path: str | Path, folder: Optional[str] = None) -> None:
        self.mlflow.log_artifacts(str(path), folder)

    def pyfunc_model(self, code_path: str | Path, artifacts: dict[str, str], classes: list[str],
                     pip_requirements: list[str], registered_name: Optional[str] = None) -> dict[str, Any]:
        """Log an MLflow model from code (a file calling mlflow.models.set_model) under MODEL_NAME; register it.

        Signature: an 'image' string column in (a path or base64; raw bytes pass too), label (null when the
        head's "none of these" threshold or out-of-set detector rejects the image) + score + rejected + reason
        ("unfamiliar" | "low_confidence", null when accepted) + one probability column per class out.
        """
        from mlflow.models import ModelSignature
        from mlflow.types import ColSpec, Schema

        signature = ModelSignature(Schema([ColSpec("string", "image")]), Schema(
            [ColSpec("string", "label", required=False), ColSpec("double", "score"), ColSpec("boolean", "rejected"),
             ColSpec("string", "reason", required=False), *[ColSpec("double", c) for c in classes]]))
        import contextlib
        import io
        import sys

        said = io.StringIO()  # MLflow prints "Registered model 'x' already exists. Creating a new version..."
        with warnings.catch_warnings(), contextlib.redirect_stderr(said):
            # an input example would make MLflow load the model (slow) to check it
            warnings.filterwarnings("ignore", message=".*input example was not provided.*")
            info = self.mlflow.pyfunc.log_model(name=MODEL_NAME, python_model=str(code_path), artifacts=artifacts,
                                                signature=signature, pip_requirements=pip_requirements,
                                                registered_model_name=registered_name)
        for line in said.getvalue().splitlines():  # what else it said still reaches stderr
            if not any(n in line for n in ("already exists. Creating a new version", "Created version",
                                           "Successfully registered model")):  # clipkit prints models:/NAME/N
                print(line, file=sys.stderr)
        version = getattr(info, "registered_model_version", None)
        return {"model_uri": info.model_uri, "run_model_uri": f"runs:/{self.run_id}/{MODEL_NAME}",
                "registered_uri": f"models:/{registered_name}/{version}" if registered_name and version else None}

    def evaluation(self, m: dict[str, Any], prefix: str = "") -> None:
        """accuracy, balanced_accuracy, macro_f1 and recall/<class> of a toolkit.evaluation.metrics.evaluate() dict."""
        self.metrics({f"{prefix}{k}": m.get(k) for k in ("accuracy", "balanced_accuracy", "macro_f1")})
        self.metrics({f"{prefix}recall/{c}": v["recall"] for c, v in (m.get("per_class") or {}).items()})


@contextmanager
def tracked_run(cfg: Config, dataset_name: str, kind: str, run_name: Optional[str] = None,
                tags: Optional[dict[str, Any]] = None) -> Iterator[TrackedRun]:
    """Start a run tagged kind/dataset in the dataset's experiment and log the full config (config.yaml).

    The run ends FINISHED when the block completes, FAILED with the error recorded when it raises, KILLED
    when a KeyboardInterrupt (Ctrl-C, or SIGTERM turned into one by the CLI) stops it, with the signal in
    its `signal` tag and a note on the exception naming the run. Backend errors come out as TrackingError.
    """
    uri = resolve_uri(cfg.tracking)
    mlflow = Held(_mlflow(uri))
    backend = _backend_errors()
    name = experiment_name(cfg.tracking, dataset_name)
    try:
        with first_use_lock(uri):  # a fresh SQLite store's tables are created by one process at a time
            exp_id = _experiment_id(mlflow, cfg.tracking, name)
        run = mlflow.start_run(experiment_id=exp_id, run_name=run_name,
                               tags={"kind": kind, "dataset": dataset_name, **(tags or {})})
    except backend as e:
        raise mlflow_error(e, uri, f"start a run in experiment '{name}'") from e
    except KeyboardInterrupt as e:  # the run may exist already: it must not stay RUNNING
        if mlflow.active_run() is not None:
            _end_failed(mlflow, e)
        raise
    handle = TrackedRun(mlflow, run, cfg, name)
    try:
        handle.text(config_to_yaml(cfg), "config.yaml")
        yield handle
        mlflow.end_run("FINISHED")
    except BaseException as e:
        _end_failed(mlflow, e)
        if isinstance(e, backend):
            raise mlflow_error(e, uri, f"log run {handle.run_id}") from e
        raise


def _end_failed(mlflow, e: BaseException) -> None:
    """Record the error on the active run and end it FAILED (KILLED for an interrupt); best effort."""
    killed = isinstance(e, KeyboardInterrupt)
    status = "KILLED" if killed else "FAILED"
    message = getattr(e, "message", None) or str(e) or e.__class__.__name__
    run = mlflow.active_run()
    if run is None:  # already ended (e.g. interrupted inside end_run itself)
        return
    if killed:
        signal_name = getattr(e, "signal_name", "SIGINT")
        message = f"interrupted by {signal_name}"
        e.__notes__ = [*getattr(e, "__notes__", ()), f"MLflow run {run.info.run_id} is marked KILLED"]
    try:
        if killed:
            mlflow.set_tag("signal", signal_name)
        mlflow.set_tags({"error": message[:5000], "error_type": e.__class__.__name__})
        mlflow.log_text("".join(traceback.format_exception(type(e), e, e.__traceback__)), "error.txt")
    except Exception:  # the store itself may be what failed
        pass
    try:
        mlflow.end_run(status)
    except Exception:
        pass


class NoRun:
    """Stand-in for a run when tracking is disabled: every logging call does nothing."""

    run_id: Optional[str] = None

    def __getattr__(self, name: str):
        return lambda *a, **k: None


# ---------------------------------------------------------------- reading back

def fetch_head(spec: str, tcfg: TrackingConfig) -> str:
    """A head folder for `spec`: a local folder as is; `runs:/RUN_ID/head`, `models:/NAME/VERSION` (or an
    mlflow-artifacts:/ URI) downloaded from the config's tracking store (`resolve_uri`). Called by the edges
    (CLI commands, create_app), so prediction code never needs MLflow."""
    if not is_mlflow_uri(spec):
        return spec
    store = resolve_uri(tcfg)
    if store.startswith(("http://", "https://")):
        check_http(store, 5.0)  # seconds, not MLflow's minutes of retries
    mlflow = _mlflow(store)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=spec))
    except _backend_errors() as e:
        raise mlflow_error(e, store, f"find head '{spec}'") from e
    except OSError as e:
        raise TrackingError(f"could not download head '{spec}' from '{store}' ({e}); check the URI") from None
    for folder in (local, local / "artifacts" / HEAD_PATH, local / HEAD_PATH):
        if (folder / "head.json").is_file():
            return str(folder)
    raise TrackingError(f"'{spec}' in '{store}' holds no head (no head.json); pass runs:/RUN_ID/{HEAD_PATH} of a "
                        "probe run or models:/NAME/VERSION of a registered head")


def search_runs(tcfg: TrackingConfig, experiment: Optional[str] = None) -> tuple[str, list[dict[str, Any]]]:
    """(experiment name, its prompt/probe runs as plain dicts, each with its `status`: FINISHED, or RUNNING,
    KILLED, FAILED for runs that never finished). Without a name: the experiment whose clipkit run is the most
    recent."""
    uri = resolve_uri(tcfg)
    mlflow = _mlflow(uri)
    flt = "attributes.status != 'SCHEDULED'"  # tags can't be filtered with IN: kinds are picked below
    try:
        name = experiment or tcfg.experiment or _latest_experiment(mlflow, flt)
        if name is None:
            raise TrackingError(f"no prompt or probe runs in '{uri}' yet; run `clipkit eval-prompts DATA` or "
                                "`clipkit train-probe DATA` first (or pass --tracking-uri)")
        exp_id = _experiment_id(mlflow, tcfg, name, create=False)
        if exp_id is None:
            raise TrackingError(f"experiment '{name}' not found in '{uri}'; list them with `make mlflow-ui` or "
                                "drop --experiment")
        runs = mlflow.search_runs([exp_id], filter_string=flt, output_format="list", max_results=5000)
    except _backend_errors() as e:
        raise mlflow_error(e, uri, "search runs") from e
    return name, [_run_dict(r) for r in runs if r.data.tags.get("kind") in KINDS]


def _latest_experiment(mlflow, flt: str) -> Optional[str]:
    exps = mlflow.search_experiments(order_by=["last_update_time DESC"], max_results=200)
    if not exps:
        return None
    runs = [run for kind in KINDS for run in mlflow.search_runs(
        [e.experiment_id for e in exps], filter_string=f"{flt} AND tags.kind = '{kind}'", output_format="list",
        max_results=1, order_by=["attributes.start_time DESC"])]
    if not runs:
        return None
    latest = max(runs, key=lambda r: r.info.start_time)
    return next(e.name for e in exps if e.experiment_id == latest.info.experiment_id)


def _run_dict(run) -> dict[str, Any]:
    return {"run_id": run.info.run_id, "name": run.info.run_name, "kind": run.data.tags.get("kind"),
            "dataset": run.data.tags.get("dataset"), "start_time": run.info.start_time, "status": run.info.status,
            "tags": {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")},
            "params": dict(run.data.params), "metrics": dict(run.data.metrics)}
