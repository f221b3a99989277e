"""End to end against a real `mlflow server` process on a free loopback port: a prompt experiment and a probe
experiment are logged over HTTP, compared, and the head is read back; the server is stopped by its pid."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from toolkit.cli import main

from tracking_fixtures import color_dataset, write_config

STARTUP_S = 180  # bound on the server's start (a loaded 2-core machine takes ~30 s)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1)
    pytest.fail(f"mlflow server did not answer within {STARTUP_S} s: {log.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (it spawns uvicorn), then SIGKILL whatever is left."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


@pytest.fixture()
def mlflow_server(tmp_path, mlflow_template_db):
    shutil.copy(mlflow_template_db, tmp_path / "server.db")  # migrated up front, so the server starts faster
    port = _free_port()
    log = tmp_path / "server.log"
    cmd = [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri",
           f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination", str(tmp_path / "server-artifacts"),
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(url, proc, log)
        yield {"url": url, "proc": proc, "dir": tmp_path}
    finally:
        _stop(proc)
    assert proc.poll() is not None


def _invoke(args, env=None):
    res = CliRunner().invoke(main, [str(a) for a in args], env=env, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res


@pytest.mark.slow
def test_prompt_and_probe_experiments_on_a_real_server(mlflow_server, tiny_model, tmp_path):
    url, d = mlflow_server["url"], tmp_path
    data = color_dataset(d / "colors")
    # the config's artifact_location is for database stores; a server keeps artifacts where it was told to
    cfg = write_config(d / "cfg.yaml", tiny_model, url, d / "client-artifacts")
    common = ["--config", cfg, "--store", d / "store", "--experiment", "server-exp"]
    _invoke(["eval-prompts", data, *common, "--templates", "none", "--templates", "people"])
    _invoke(["train-probe", data, *common, "--out", d / "head"])

    doc = json.loads(_invoke(["compare", "--tracking-uri", url, "--experiment", "server-exp", "--format", "json",
                              "--plot", d / "bars.png"]).stdout)
    kinds = sorted(r["kind"] for r in doc["runs"])
    assert kinds == ["probe", "prompt", "prompt"]
    accs = [r["accuracy"] for r in doc["runs"]]
    assert accs == sorted(accs, reverse=True)
    probe = next(r for r in doc["runs"] if r["kind"] == "probe")  # gains over the probe run's own zero-shot
    assert doc["baseline"] == pytest.approx(probe["metrics"]["zeroshot_test_accuracy"])
    assert probe["gain"] == pytest.approx(probe["metrics"]["gain_over_zeroshot"])
    assert (d / "bars.png").stat().st_size > 0

    # artifacts went through the server into its artifact folder, none to the client's folder
    assert any((mlflow_server["dir"] / "server-artifacts").rglob("head.safetensors"))
    assert not (d / "client-artifacts").exists()

    # the head comes back over HTTP, from the run and from the registry
    probe = next(r for r in doc["runs"] if r["kind"] == "probe")
    img = str(next((data / "test" / "a red square").glob("*.png")))
    labels = []
    for head in (f"runs:/{probe['run_id']}/head", "models:/server-exp-head/1"):
        res = _invoke(["predict", img, "--head", head, "--config", cfg, "--format", "json"],
                      env={"MLFLOW_TRACKING_URI": url})
        labels.append(json.loads(res.stdout)["results"][0]["label"])
    local = _invoke(["predict", img, "--head", d / "head", "--config", cfg, "--format", "json"])
    assert labels == [json.loads(local.stdout)["results"][0]["label"]] * 2
