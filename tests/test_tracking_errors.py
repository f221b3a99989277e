"""Tracking errors name their cause in one line, with no traceback: a read-only SQLite database (a real one:
SQLite's `mode=ro`, and a 0444 file written by a process without CAP_DAC_OVERRIDE, as any non-root user
is), a missing folder, a folder given as the database, an unreachable server."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from toolkit.tracking import adapter as tracking
from toolkit.cli import main
from toolkit.config import load_config
from toolkit.errors import TrackingError

from tracking_fixtures import color_dataset, write_config

CLIPKIT = str(Path(sys.executable).with_name("clipkit"))


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_model) -> Path:
    """A feature store of the colour dataset, extracted once: train-probe reaches tracking without encoding."""
    d = tmp_path_factory.mktemp("colors")
    out = d / "store"
    res = CliRunner().invoke(main, ["extract", str(color_dataset(d / "colors")), "--out", str(out), "--model",
                                    tiny_model["config"], "--pretrained", tiny_model["checkpoint"], "--device", "cpu"])
    assert res.exit_code == 0, res.output
    return out


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ro_uri(db: Path) -> str:
    """SQLite's own read-only mode: every write fails with 'attempt to write a readonly database', even as root.
    MLflow creates the "parent folder" of this URI's path taken literally, relative to the working folder
    (./file:/tmp/...): tests using it run in tmp_path (`in_tmp`), never in the checkout."""
    return f"sqlite:///file:{db}?mode=ro&uri=true"


@pytest.fixture()
def in_tmp(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("error:")]


# ---------------------------------------------------------------- the cause, from real backend errors

def test_read_only_database_in_process(mlflow_template_db, tmp_path, in_tmp, capfd):
    """tracked_run against a real read-only database: one TrackingError naming the cause; MLflow's own
    SQLAlchemy traceback (which it logs before raising) is not printed."""
    shutil.copy(mlflow_template_db, tmp_path / "mlflow.db")
    cfg = load_config(None, {"tracking.uri": _ro_uri(tmp_path / "mlflow.db"),
                             "tracking.artifact_location": str(tmp_path / "art")})
    tracking.check_tracking(cfg.tracking)  # the file itself is writable: only SQLite's mode says no
    with pytest.raises(TrackingError) as e:
        with tracking.tracked_run(cfg, "colors", "probe"):
            pytest.fail("a run started in a read-only database")
    msg = e.value.message
    assert "the tracking database" in msg and "is read-only" in msg and "\n" not in msg
    assert "autoflush" not in msg and "INSERT" not in msg
    err = capfd.readouterr().err
    assert "Traceback" not in err and "sqlalchemy" not in err.lower()


def test_unreachable_server_in_process(monkeypatch):
    """MLflow's own error for a closed port (no retries), classified."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    cfg = load_config(None, {"tracking.uri": f"http://127.0.0.1:{_closed_port()}"})
    with pytest.raises(TrackingError, match="tracking server at 'http://127.0.0.1:[0-9]+' can't be reached"):
        tracking.search_runs(cfg.tracking)


def test_not_a_database_in_process(tmp_path):
    (tmp_path / "notes.db").write_text("not sqlite at all, " * 100)
    cfg = load_config(None, {"tracking.uri": f"sqlite:///{tmp_path / 'notes.db'}"})
    with pytest.raises(TrackingError, match="is not a readable SQLite database"):
        tracking.search_runs(cfg.tracking)


# ---------------------------------------------------------------- the fast checks, through the CLI

@pytest.mark.parametrize("make_uri, fragment", [
    (lambda d: f"sqlite:///{d / 'missing' / 'deeper' / 'mlflow.db'}", "does not exist; create it"),
    (lambda d: f"sqlite:///{d}", "names a folder, not a database file"),
    (lambda d: f"http://127.0.0.1:{_closed_port()}", "can't be reached"),
])
def test_compare_names_the_cause_in_one_line(tmp_path, make_uri, fragment):
    uri = make_uri(tmp_path)
    res = CliRunner().invoke(main, ["compare", "--tracking-uri", uri, "--no-plot"])
    assert res.exit_code == 4, res.output
    assert res.output.count("\n") == 1 and res.output.startswith("error: ") and fragment in res.output
    assert not (tmp_path / "missing").exists()  # nothing created on the way


def test_a_database_deleted_mid_run_is_named_not_called_read_only(mlflow_template_db, tmp_path):
    """The SQLite file removed while a run logs: SQLite says "readonly database" (the file it has open is gone)
    or a new connection finds a new, empty file ("no such table"); either way the user is told it was deleted."""
    db = tmp_path / "mlflow.db"
    shutil.copy(mlflow_template_db, db)
    cfg = load_config(None, {"tracking.uri": f"sqlite:///{db}", "tracking.artifact_location": str(tmp_path / "a")})
    with pytest.raises(TrackingError) as e:
        with tracking.tracked_run(cfg, "colors", "probe") as run:
            db.unlink()
            run.metrics({"accuracy": 1.0})
    assert "was deleted or moved while clipkit was using it" in e.value.message, e.value.message
    assert "read-only" not in e.value.message and "\n" not in e.value.message


def test_compare_reads_a_read_only_database(mlflow_template_db, tmp_path, in_tmp):
    """Ranking only reads: a read-only store is not refused for being read-only."""
    shutil.copy(mlflow_template_db, tmp_path / "mlflow.db")
    res = CliRunner().invoke(main, ["compare", "--tracking-uri", _ro_uri(tmp_path / "mlflow.db"), "--no-plot"])
    assert res.exit_code == 4 and "no prompt or probe runs" in res.output and "read-only" not in res.output


# ---------------------------------------------------------------- real subprocesses

@pytest.mark.slow
def test_train_probe_into_a_read_only_database_subprocess(mlflow_template_db, tiny_model, store, tmp_path):
    """`clipkit train-probe` tracking into SQLite's read-only mode: exit 4, one line, no traceback, no head."""
    shutil.copy(mlflow_template_db, tmp_path / "mlflow.db")
    cfg = write_config(tmp_path / "cfg.yaml", tiny_model, _ro_uri(tmp_path / "mlflow.db"), tmp_path / "art")
    run = subprocess.run([CLIPKIT, "train-probe", str(store), "--config", str(cfg), "--out", str(tmp_path / "head")],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 4, run.stderr[-3000:]
    assert len(_error_lines(run.stderr)) == 1 and "is read-only" in _error_lines(run.stderr)[0], run.stderr[-3000:]
    assert "Traceback" not in run.stderr and "autoflush" not in run.stderr
    assert len(run.stderr.strip().splitlines()) <= 3, run.stderr  # the error, and at most a model-load warning
    assert not (tmp_path / "head").exists()


def _without_dac_override() -> list[str]:
    """A command prefix under which even root obeys file permissions (as every other user does)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: a 0444 file would still be writable")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


@pytest.mark.slow
def test_read_only_database_file_subprocess(mlflow_template_db, tiny_model, store, tmp_path):
    """A 0444 database file in a writable folder: refused before any model load, in one line."""
    db = tmp_path / "mlflow.db"
    shutil.copy(mlflow_template_db, db)
    db.chmod(0o444)
    cfg = write_config(tmp_path / "cfg.yaml", tiny_model, f"sqlite:///{db}", tmp_path / "art")
    run = subprocess.run([*_without_dac_override(), CLIPKIT, "train-probe", str(store), "--config", str(cfg),
                          "--out", str(tmp_path / "head")], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 4, run.stderr[-3000:]
    assert run.stderr.strip() == (f"error: the tracking database 'sqlite:///{db}' is read-only; make the file and its "
                                  "folder writable, pass another --tracking-uri, or --no-track")
