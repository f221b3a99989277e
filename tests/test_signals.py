"""SIGTERM and SIGINT stop a real `clipkit` process in its work loop: an MLflow run it had open (in a real
SQLite store) ends KILLED with the signal as its reason, no head or store is left that looks complete, one
line is printed, and the exit code is 143 / 130. Every test runs with TMPDIR set to an empty folder, which
must be empty again when the process is gone; `compare` says how many unfinished runs it left out."""
from __future__ import annotations

import os
import pty
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from toolkit.cli import main
from toolkit.data.store import LOCK, FeatureStore, write_store

from tracking_fixtures import color_dataset, new_store, write_config

CLIPKIT = str(Path(sys.executable).with_name("clipkit"))
CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}
WAIT_S = 240  # bound on every wait (model loads on a busy 2-core machine are slow; a pass takes far less)


@pytest.fixture(scope="module")
def colors(tmp_path_factory) -> Path:
    return color_dataset(tmp_path_factory.mktemp("colors") / "colors")


@pytest.fixture(scope="module")
def colors_store(tmp_path_factory, tiny_model, colors) -> FeatureStore:
    out = tmp_path_factory.mktemp("colors-store") / "store"
    res = CliRunner().invoke(main, ["extract", str(colors), "--out", str(out), "--model", tiny_model["config"],
                                    "--pretrained", tiny_model["checkpoint"], "--device", "cpu"])
    assert res.exit_code == 0, res.output
    return FeatureStore.open(out)


@pytest.fixture(scope="module")
def big_store(tmp_path_factory, colors_store) -> Path:
    """40,000 rows near the colour classes' mean features (same extractor identity): a logreg sweep, a
    prompt run's scoring and its predictions.csv take long enough on it to be interrupted."""
    rng = np.random.default_rng(0)
    feats = np.asarray(colors_store.features)
    classes = colors_store.classes
    means = np.stack([feats[colors_store.labels == c].mean(0) for c in classes])
    labels = rng.integers(0, len(classes), 40_000)
    x = means[labels] + rng.normal(0, 0.15, (len(labels), feats.shape[1]))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    splits = rng.choice(["train", "val", "test"], len(labels), p=[0.7, 0.15, 0.15])
    out = tmp_path_factory.mktemp("big") / "store"
    write_store(out, x, [classes[i] for i in labels], list(splits), colors_store.meta["identity"])
    return out


class Clipkit:
    """`clipkit ARGS` (or any `argv`) as a real process: stderr to a file, TMPDIR an empty folder, SIGINT not
    ignored. With `tty`, stdout is a pseudo-terminal, so Lightning's progress bar draws each epoch live (to a
    pipe it only draws once a fit has ended): the sign that the process is inside Trainer.fit."""

    def __init__(self, args: list, work: Path, tty: bool = False, argv: Optional[list[str]] = None):
        self.work, self.tmp = work, work / "tmpdir"
        self.tmp.mkdir(parents=True)
        self.out_path, self.err_path = work / "stdout.txt", work / "stderr.txt"
        self._tty_out: list[bytes] = []
        env = {**os.environ, "TMPDIR": str(self.tmp), "PYTHONUNBUFFERED": "1"}
        master = slave = None
        if tty:
            master, slave = pty.openpty()
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(argv or [CLIPKIT, *map(str, args)], stdout=slave if tty else out, stderr=err,
                                         env=env, cwd=work,
                                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        if tty:
            os.close(slave)
            threading.Thread(target=self._drain, args=(master,), daemon=True).start()

    def _drain(self, fd: int) -> None:
        try:
            while chunk := os.read(fd, 65536):
                self._tty_out.append(chunk)
        except OSError:  # EIO: the process is gone
            pass
        finally:
            os.close(fd)

    @property
    def stdout(self) -> str:
        if self._tty_out:
            return b"".join(self._tty_out[-200:]).decode(errors="replace")
        return self.out_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def wait_for(self, found: Callable[[], Optional[object]], what: str) -> object:
        """Poll `found` until it returns something truthy (bounded); fail if the process ends first."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            value = found()
            if value:
                return value
            if self.proc.poll() is not None:
                pytest.fail(f"clipkit exited {self.proc.returncode} before {what}:\n{self.stderr[-3000:]}")
            time.sleep(0.02)
        self.proc.kill()
        pytest.fail(f"no {what} within {WAIT_S} s:\n{self.stderr[-3000:]}")

    def interrupt(self, signum: int) -> int:
        self.proc.send_signal(signum)
        try:
            return self.proc.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"clipkit still running {WAIT_S} s after {signal.Signals(signum).name}")

    def assert_one_line(self, line: str) -> None:
        errors = [ln for ln in self.stderr.splitlines() if ln.startswith("error:")]
        assert errors == [line], self.stderr[-3000:]
        assert "Traceback" not in self.stderr, self.stderr[-3000:]
        assert sorted(os.listdir(self.tmp)) == []  # no temporary folder outlives the command


def _running_run(db: Path) -> Optional[str]:
    """The id of a RUNNING run in the SQLite store, read without writing (None while there is none)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            row = con.execute("SELECT run_uuid FROM runs WHERE status = 'RUNNING'").fetchone()
    except sqlite3.OperationalError:  # locked by the writer for a moment
        return None
    return row[0] if row else None


def _runs(uri: str) -> dict[str, object]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    return {r.info.run_id: r for r in client.search_runs(exps)}


def _assert_killed(uri: str, run_id: str, name: str) -> None:
    runs = _runs(uri)
    run = runs[run_id]
    assert run.info.status == "KILLED"
    assert run.data.tags["signal"] == name and run.data.tags["error"] == f"interrupted by {name}"
    assert not [r for r in runs.values() if r.info.status == "RUNNING"]


def _tracked(tmp_path, mlflow_template_db, tiny_model, **probe) -> tuple[str, Path, Path]:
    uri = new_store(mlflow_template_db, tmp_path / "mlflow")
    cfg = write_config(tmp_path / "cfg.yaml", tiny_model, uri, tmp_path / "mlartifacts")
    doc = yaml.safe_load(cfg.read_text())
    doc["probe"].update(probe)
    cfg.write_text(yaml.safe_dump(doc))
    return uri, tmp_path / "mlflow" / "mlflow.db", cfg


# ---------------------------------------------------------------- train-probe

@pytest.mark.slow
def test_train_probe_logreg_sigterm_ends_the_run_killed(tmp_path, mlflow_template_db, tiny_model, big_store):
    uri, db, cfg = _tracked(tmp_path, mlflow_template_db, tiny_model, c_steps=40)
    head = tmp_path / "head"
    cli = Clipkit(["train-probe", big_store, "--config", cfg, "--out", head, "--no-progress"], tmp_path / "w")
    run_id = cli.wait_for(lambda: _running_run(db), "a RUNNING MLflow run")
    assert cli.interrupt(signal.SIGTERM) == 143
    cli.assert_one_line(f"error: interrupted by SIGTERM; MLflow run {run_id} is marked KILLED")
    _assert_killed(uri, run_id, "SIGTERM")
    assert not head.exists() and not list(tmp_path.glob(".head*"))  # no head, not even a half-written one


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_train_probe_linear_signal_inside_lightning(tmp_path, mlflow_template_db, tiny_model, colors_store, signum):
    """Inside Trainer.fit: Lightning turns the interrupt into SystemExit (code 1 for Ctrl-C, no code at all
    for its own SIGTERM handling); the run still ends KILLED and the process 143 / 130."""
    uri, db, cfg = _tracked(tmp_path, mlflow_template_db, tiny_model, max_epochs=100_000, patience=100_000)
    head = tmp_path / "head"
    cli = Clipkit(["train-probe", colors_store.path, "--config", cfg, "--out", head, "--method", "linear",
                   "--progress"], tmp_path / "w", tty=True)
    cli.wait_for(lambda: "Epoch 1" in cli.stdout, "Lightning's second epoch")  # its progress bar: inside fit
    run_id = _running_run(db)
    name = signal.Signals(signum).name
    assert cli.interrupt(signum) == CODES[signum]
    cli.assert_one_line(f"error: interrupted by {name}; MLflow run {run_id} is marked KILLED")
    _assert_killed(uri, run_id, name)
    assert not head.exists()


@pytest.mark.slow
def test_lightning_sigterm_without_a_cli_handler_still_ends_the_process(tmp_path, colors_store):
    """Library use (no CLI handler): Lightning's SIGTERMException would exit 0 as if training had finished;
    the signal is delivered again instead, so the process ends by SIGTERM."""
    code = f"""
import sys
from toolkit.config import ProbeConfig
from toolkit.data.store import FeatureStore
from toolkit.fitting.trainer import fit_linear
s = FeatureStore.open({str(colors_store.path)!r})
y = [s.classes.index(v) for v in s.labels]
import numpy as np
X, y = np.asarray(s.features), np.asarray(y)
fit_linear(X, y, X, y, len(s.classes), ProbeConfig(max_epochs=100000, patience=100000), progress=True)
print("finished")
"""
    proc = Clipkit([], tmp_path / "w", tty=True, argv=[sys.executable, "-c", code])
    proc.wait_for(lambda: "Epoch 1" in proc.stdout, "Lightning's second epoch")
    assert proc.interrupt(signal.SIGTERM) == -signal.SIGTERM
    assert "finished" not in proc.stdout


# ---------------------------------------------------------------- eval-prompts

@pytest.mark.slow
def test_eval_prompts_sigterm_ends_the_open_run_killed(tmp_path, mlflow_template_db, tiny_model, big_store):
    uri, db, cfg = _tracked(tmp_path, mlflow_template_db, tiny_model)
    sets = {f"set{i}": {"templates": [f"a photo of {{}}, take {i}.", f"{{}} number {i}."]} for i in range(8)}
    (tmp_path / "sets.yaml").write_text(yaml.safe_dump({"prompt_sets": sets}))
    cli = Clipkit(["eval-prompts", big_store, "--config", cfg, "--prompt-sets", tmp_path / "sets.yaml",
                   "--no-progress"], tmp_path / "w")
    run_id = cli.wait_for(lambda: _running_run(db), "a RUNNING MLflow run")
    assert cli.interrupt(signal.SIGTERM) == 143
    cli.assert_one_line(f"error: interrupted by SIGTERM; MLflow run {run_id} is marked KILLED")
    _assert_killed(uri, run_id, "SIGTERM")
    statuses = {r.info.status for r in _runs(uri).values()}
    assert statuses <= {"FINISHED", "KILLED"}  # the sets scored before it stay FINISHED


# ---------------------------------------------------------------- extract and embed: no store that looks complete

@pytest.fixture(scope="module")
def many_images(tmp_path_factory) -> Path:
    """400 small JPEGs in 2 class folders: with --batch-size 2, 200 store batches."""
    from PIL import Image

    root = tmp_path_factory.mktemp("many") / "imgs"
    rng = np.random.default_rng(0)
    for i in range(400):
        d = root / ("a" if i % 2 else "b")
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(d / f"{i:03d}.jpg")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("command, signum", [("extract", signal.SIGTERM), ("embed", signal.SIGINT)],
                         ids=["extract-SIGTERM", "embed-SIGINT"])
def test_extraction_interrupted_leaves_a_resumable_store(tmp_path, tiny_model, many_images, command, signum):
    out = tmp_path / "store"
    cli = Clipkit([command, many_images, "--out", out, "--model", tiny_model["config"], "--pretrained",
                   tiny_model["checkpoint"], "--device", "cpu", "--batch-size", "2", "--no-progress"], tmp_path / "w")
    cli.wait_for(lambda: (out / "progress" / "main.jsonl").is_file(), "the first finished batch")
    assert cli.interrupt(signum) == CODES[signum]
    name = signal.Signals(signum).name
    cli.assert_one_line(f"error: interrupted by {name}; store '{out}' is unfinished: run the same command again "
                        "to resume it")
    assert not (out / "meta.json").exists() and not (out / LOCK).exists()
    with pytest.raises(Exception, match="incomplete"):
        FeatureStore.open(out)


# ---------------------------------------------------------------- compare: unfinished runs are counted

def test_compare_says_how_many_unfinished_runs_it_left_out(tmp_path, mlflow_template_db):
    import mlflow

    from toolkit.tracking import adapter as tracking
    from toolkit.config import load_config

    uri = new_store(mlflow_template_db, tmp_path / "mlflow")
    cfg = load_config(None, {"tracking.uri": uri, "tracking.artifact_location": str(tmp_path / "art")})
    with tracking.tracked_run(cfg, "colors", "prompt", "prompt:good") as run:
        run.metrics({"accuracy": 0.9, "balanced_accuracy": 0.9, "macro_f1": 0.9})
    with pytest.raises(KeyboardInterrupt) as e, tracking.tracked_run(cfg, "colors", "probe", "probe:cut") as run:
        run.metrics({"accuracy": 0.99})  # a partial score that must not be ranked
        raise KeyboardInterrupt
    killed = run.run_id
    assert e.value.__notes__ == [f"MLflow run {killed} is marked KILLED"]
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("clipkit-colors").experiment_id
    client.create_run(exp, tags={"kind": "probe", "dataset": "colors"}, run_name="probe:stuck")  # stays RUNNING
    res = CliRunner().invoke(main, ["compare", "--tracking-uri", uri, "--no-plot"])
    assert res.exit_code == 0, res.output
    assert "note: skipped 2 unfinished run(s) (1 KILLED, 1 RUNNING)" in res.stderr
    assert "prompt:good" in res.stdout and "probe:cut" not in res.stdout and "probe:stuck" not in res.stdout
    assert client.get_run(killed).data.tags["signal"] == "SIGINT"


def test_a_signal_inside_an_mlflow_call_waits_for_it_to_finish(tmp_path, mlflow_template_db, monkeypatch):
    """SIGTERM arriving while MLflow writes (here: inside log_params) is held until the call returns, so the
    SQLite transaction completes and the run can still be ended KILLED with its reason."""
    import mlflow

    from toolkit.tracking import adapter as tracking
    from toolkit.cli.common import Interrupted, signals_as_interrupts
    from toolkit.config import load_config

    uri = new_store(mlflow_template_db, tmp_path / "mlflow")
    cfg = load_config(None, {"tracking.uri": uri, "tracking.artifact_location": str(tmp_path / "art")})
    log_params = mlflow.log_params

    def signalled_midway(params):
        signal.raise_signal(signal.SIGTERM)  # the handler runs at once unless the signal is held
        return log_params(params)

    monkeypatch.setattr(mlflow, "log_params", signalled_midway)
    with signals_as_interrupts(), pytest.raises(Interrupted) as e:
        with tracking.tracked_run(cfg, "colors", "probe", "probe:cut") as run:
            run.params({"C": 1.0})
            pytest.fail("the signal was not delivered after the call")
    got = mlflow.MlflowClient(tracking_uri=uri).get_run(run.run_id)
    assert got.data.params == {"C": "1.0"}  # the call that was signalled completed
    assert got.info.status == "KILLED" and got.data.tags["signal"] == "SIGTERM"
    assert e.value.__notes__ == [f"MLflow run {run.run_id} is marked KILLED"]


# ---------------------------------------------------------------- temporary folders

@pytest.mark.slow
@pytest.mark.parametrize("command", ["train-probe", "eval-prompts"])
def test_no_temporary_folder_outlives_the_command(tmp_path, mlflow_template_db, tiny_model, colors, command):
    """MLflow logging (and eval-prompts) use temporary folders; train-probe writes its report straight under
    --out: with TMPDIR an empty folder, it is empty again afterwards."""
    uri, _, cfg = _tracked(tmp_path, mlflow_template_db, tiny_model)
    extra = ["--out", tmp_path / "head"] if command == "train-probe" else []
    cli = Clipkit([command, colors, "--config", cfg, "--store", tmp_path / "store", *extra, "--no-progress"],
                  tmp_path / "w")
    assert cli.proc.wait(timeout=WAIT_S) == 0, cli.stderr[-3000:]
    assert os.listdir(cli.tmp) == [], os.listdir(cli.tmp)
    if command == "train-probe":
        assert (tmp_path / "head" / "report" / "report.json").is_file()
