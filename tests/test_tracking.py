"""MLflow tracking against a real SQLite store in a temporary folder: prompt runs, probe runs, failures,
reachability, `clipkit compare`, the pyfunc head model, and heads loaded from runs:/ and models:/ URIs."""
from __future__ import annotations

import base64
import csv
import io
import json
import socket
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from toolkit.cli import main
from toolkit.evaluation.compare import rank
from toolkit.config import load_config
from toolkit.errors import DataError, TrackingError

from tracking_fixtures import COLORS, PROMPT_SETS, color_dataset, new_store, write_config

CLASSES = sorted(COLORS)


@pytest.fixture(scope="module")
def colors(tmp_path_factory) -> Path:
    return color_dataset(tmp_path_factory.mktemp("colors") / "colors")


def _client(uri: str):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri)


def _runs(uri: str, experiment: str):
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=[experiment], output_format="list")


def _artifacts(uri: str, run_id: str) -> set[str]:
    return {f.path for f in _client(uri).list_artifacts(run_id)}


def _invoke(args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env, catch_exceptions=False)


# ---------------------------------------------------------------- a populated store shared by several tests

@pytest.fixture(scope="module")
def populated(tmp_path_factory, mlflow_template_db, tiny_model, colors):
    """Two prompt runs (eval-prompts) and one probe run (train-probe) on the colour dataset, in one SQLite store."""
    from toolkit.heads.linear import LinearProbe
    from toolkit.data.store import FeatureStore

    d = tmp_path_factory.mktemp("populated")
    uri = new_store(mlflow_template_db, d)
    cfg_path = write_config(d / "cfg.yaml", tiny_model, uri, d / "mlartifacts", registered_model="colors-head")
    (d / "sets.yaml").write_text(PROMPT_SETS)
    res = _invoke(["eval-prompts", colors, "--config", cfg_path, "--prompt-sets", d / "sets.yaml",
                   "--store", d / "store", "--format", "json"])
    assert res.exit_code == 0, res.output
    prompt_doc = json.loads(res.stdout)
    res = _invoke(["train-probe", colors, "--config", cfg_path, "--store", d / "store", "--out", d / "head"])
    assert res.exit_code == 0, res.output
    probe_runs = [r for r in _runs(uri, "clipkit-colors") if r.data.tags["kind"] == "probe"]
    assert len(probe_runs) == 1
    run_id = probe_runs[0].info.run_id  # train-probe tells where its head is in MLflow
    assert f"runs:/{run_id}/head" in res.output and "models:/colors-head/1" in res.output
    return {"dir": d, "uri": uri, "config": cfg_path, "prompt_doc": prompt_doc, "probe_run": probe_runs[0],
            "head": LinearProbe.load(d / "head"), "store": FeatureStore.open(d / "store")}


def test_eval_prompts_logs_one_finished_run_per_prompt_set(populated):
    uri = populated["uri"]
    runs = [r for r in _runs(uri, "clipkit-colors") if r.data.tags["kind"] == "prompt"]
    assert sorted(r.info.run_name for r in runs) == ["prompt:bare", "prompt:described"]
    for r in runs:
        assert r.info.status == "FINISHED"
        p, m = r.data.params, r.data.metrics
        assert p["model"].endswith("tiny-rn.json") and p["pretrained"].endswith("tiny-rn.safetensors")
        assert {"pretrained", "labels", "templates", "template_count"} <= set(p)
        assert {"accuracy", "balanced_accuracy", "macro_f1"} <= set(m)
        assert {f"recall/{c}" for c in CLASSES} <= set(m)
        arts = _artifacts(uri, r.info.run_id)
        assert {"confusion_matrix.png", "predictions.csv", "prompt_set.yaml", "config.yaml"} <= arts
        # the logged accuracy is what the logged predictions say
        text = Path(_client(uri).download_artifacts(r.info.run_id, "predictions.csv")).read_text()
        rows = list(csv.DictReader(io.StringIO(text)))
        assert len(rows) == 4 * len(CLASSES)  # the test split
        assert m["accuracy"] == pytest.approx(np.mean([row["label"] == row["predicted"] for row in rows]))
    described = next(r for r in runs if r.info.run_name == "prompt:described")
    assert described.data.params["template_count"] == "2"
    assert "a red patch" in described.data.params["labels"]
    # the artifacts went to the configured artifact folder, not the working directory
    assert any((populated["dir"] / "mlartifacts").rglob("predictions.csv"))


def test_eval_prompts_json_matches_the_runs(populated):
    doc = populated["prompt_doc"]
    assert doc["experiment"] == "clipkit-colors" and doc["split"] == "test"
    accs = [r["metrics"]["accuracy"] for r in doc["results"]]
    assert accs == sorted(accs, reverse=True)
    by_id = {r.info.run_id: r for r in _runs(populated["uri"], "clipkit-colors")}
    for row in doc["results"]:
        assert by_id[row["run_id"]].data.metrics["accuracy"] == pytest.approx(row["metrics"]["accuracy"])


def test_probe_run_logs_params_metrics_artifacts_and_a_registered_model(populated):
    uri, run = populated["uri"], populated["probe_run"]
    assert run.info.status == "FINISHED"
    p, m, head = run.data.params, run.data.metrics, populated["head"]
    assert p["method"] == "logreg" and p["shots"] == "all" and p["seed"] == "0"
    assert float(p["chosen_value"]) == pytest.approx(head.params["C"])
    assert "c_grid" in p and p["store_fingerprint"] == populated["store"].meta["fingerprint"][:16]
    assert m["accuracy"] == pytest.approx(head.metrics["test_accuracy"]) == pytest.approx(m["test_accuracy"])
    assert m["zeroshot_test_accuracy"] == pytest.approx(head.metrics["zeroshot_test_accuracy"])
    assert {"val_accuracy", "gain_over_zeroshot"} <= set(m)
    arts = _artifacts(uri, run.info.run_id)
    assert {"confusion_matrix.png", "sweep.png", "config.yaml", "head"} <= arts
    head_files = {Path(f.path).name for f in _client(uri).list_artifacts(run.info.run_id, "head")}
    assert head_files == {"head.json", "head.safetensors"}
    assert run.data.tags["registered_model"] == "models:/colors-head/1"
    assert _client(uri).get_model_version("colors-head", "1").run_id == run.info.run_id


def _images(colors: Path) -> list[str]:
    return [str(next((colors / "test" / c).glob("*.png"))) for c in CLASSES]


def _local_labels(populated, tiny_extractor, paths) -> list[str]:
    from toolkit.predictor import Predictor

    return [r["label"] for r in Predictor(tiny_extractor, populated["head"]).predict_paths(paths)]


def test_pyfunc_model_loads_and_predicts_from_paths_base64_and_bytes(populated, colors, tiny_extractor):
    import mlflow
    import pandas as pd

    mlflow.set_tracking_uri(populated["uri"])
    model = mlflow.pyfunc.load_model("models:/colors-head/1")
    paths = _images(colors)
    raw = [Path(p).read_bytes() for p in paths]
    frame = pd.DataFrame({"image": [paths[0], base64.b64encode(raw[1]).decode(), raw[2]]})
    out = model.predict(frame)
    assert list(out.columns) == ["label", "score", "rejected", "reason", *CLASSES] and not out["rejected"].any()
    assert out["reason"].isna().all()  # nothing rejected: no reason
    assert list(out["label"]) == _local_labels(populated, tiny_extractor, paths)
    assert np.allclose(out[CLASSES].sum(axis=1), 1.0, atol=1e-5)
    # the small local checkpoint and model config travel with the model, so it loads offline
    local = Path(mlflow.artifacts.download_artifacts(f"runs:/{populated['probe_run'].info.run_id}/model"))
    names = {p.name for p in (local / "artifacts").iterdir()}
    assert {"head", "tiny-rn.json", "tiny-rn.safetensors", "extractor.json"} <= names
    assert not list(local.rglob("*.pkl")) and not list(local.rglob("*.cloudpickle"))


@pytest.mark.parametrize("spec", ["runs:/{run_id}/head", "models:/colors-head/1"])
def test_predict_loads_a_head_from_mlflow(populated, colors, tiny_extractor, tiny_model, spec):
    head = spec.format(run_id=populated["probe_run"].info.run_id)
    paths = _images(colors)
    res = _invoke(["predict", *paths, "--head", head, "--model", tiny_model["config"], "--pretrained",
                   tiny_model["checkpoint"], "--device", "cpu", "--format", "json"],
                  env={"MLFLOW_TRACKING_URI": populated["uri"]})
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["mode"] == "probe"
    assert [r["label"] for r in doc["results"]] == _local_labels(populated, tiny_extractor, paths)


def test_a_head_from_mlflow_is_read_from_the_configs_tracking_store(populated, colors, tiny_extractor, tiny_model,
                                                                   tmp_path):
    """`tracking.uri` in the YAML (or --tracking-uri) names the store of runs:/ heads; no environment needed."""
    head = f"runs:/{populated['probe_run'].info.run_id}/head"
    paths = _images(colors)
    no_env = {"MLFLOW_TRACKING_URI": None}
    res = CliRunner().invoke(main, ["predict", *paths, "--head", head, "--config", str(populated["config"]),
                                    "--format", "json"], env=no_env, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert [r["label"] for r in json.loads(res.stdout)["results"]] == _local_labels(populated, tiny_extractor, paths)
    # a config whose store is elsewhere fails naming that store; --tracking-uri then wins over it
    other = write_config(tmp_path / "other.yaml", tiny_model, f"sqlite:///{tmp_path / 'empty.db'}", tmp_path / "a")
    res = CliRunner().invoke(main, ["predict", paths[0], "--head", head, "--config", str(other)], env=no_env)
    assert res.exit_code == 4 and "empty.db" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(main, ["predict", paths[0], "--head", head, "--config", str(other),
                                    "--tracking-uri", populated["uri"], "--format", "json"], env=no_env)
    assert res.exit_code == 0, res.output


def test_predict_video_and_serve_take_a_tracking_uri_for_their_head(populated, tiny_model, tmp_path, colors):
    from toolkit.demo.video import write_video

    clip = tmp_path / "clip.mp4"
    write_video(clip, [("standing", 0.5), ("squat", 1, 1.0)], seed=1, size=(48, 48), fps=8)
    head = "models:/colors-head/1"
    # no model flags: the head remembers its model
    res = CliRunner().invoke(main, ["predict-video", str(clip), "--head", head, "--tracking-uri", populated["uri"],
                                    "--device", "cpu", "--format", "json"], env={"MLFLOW_TRACKING_URI": None})
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["labels"] == CLASSES
    res = CliRunner().invoke(main, ["predict", _images(colors)[0], "--head",
                                    f"runs:/{populated['probe_run'].info.run_id}/head", "--tracking-uri",
                                    populated["uri"], "--format", "json"], env={"MLFLOW_TRACKING_URI": None})
    assert res.exit_code == 0 and json.loads(res.stdout)["mode"] == "probe", res.output
    assert "--tracking-uri" in CliRunner().invoke(main, ["serve", "--help"]).output


def test_predict_with_an_unknown_run_fails_cleanly(populated, colors):
    res = CliRunner().invoke(main, ["predict", _images(colors)[0], "--head", "runs:/0123456789abcdef/head"],
                             env={"MLFLOW_TRACKING_URI": populated["uri"]})
    assert res.exit_code == 4
    assert "runs:/0123456789abcdef/head" in res.output and "Traceback" not in res.output
    assert "--no-track" not in res.output and "check the run id" in res.output  # reading: --no-track can't help


def test_compare_ranks_prompt_and_probe_runs_with_gain(populated):
    d = populated["dir"]
    res = _invoke(["compare", "--config", populated["config"], "--format", "json", "--plot", d / "bars.png"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["experiment"] == "clipkit-colors" and doc["dataset"] == "colors"
    rows = doc["runs"]
    assert sorted(r["kind"] for r in rows) == ["probe", "prompt", "prompt"]
    accs = [r["accuracy"] for r in rows]
    assert accs == sorted(accs, reverse=True)
    by_id = {r.info.run_id: r for r in _runs(populated["uri"], "clipkit-colors")}
    probe = next(r for r in rows if r["kind"] == "probe")
    logged = by_id[probe["run_id"]].data.metrics
    zs = logged["zeroshot_test_accuracy"]  # the probe run's own zero-shot score on its test split
    assert doc["baseline"] == pytest.approx(zs)
    for r in rows:
        assert r["gain"] == pytest.approx(100 * (by_id[r["run_id"]].data.metrics["accuracy"] - zs))
        assert {"run_id", "kind", "params", "metrics"} <= set(r)
    assert probe["gain"] == pytest.approx(logged["gain_over_zeroshot"])  # the gain train-probe printed
    assert probe["params"]["method"] == "logreg"
    for name in ("bars.png", "bars-balanced_accuracy.png", "bars-macro_f1.png"):  # one chart per metric
        assert (d / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    table = _invoke(["compare", "--config", populated["config"], "--no-plot"]).stdout.splitlines()
    data_rows = [ln for ln in table if ln[:2].strip().isdigit()]
    assert [ln.split()[1] for ln in data_rows] == [r["kind"] for r in rows]
    assert rows[0]["run_id"] in data_rows[0]


def test_compare_unknown_metric_names_the_known_ones(populated):
    res = CliRunner().invoke(main, ["compare", "--config", populated["config"], "--metric", "acuracy", "--no-plot"])
    assert res.exit_code == 2 and "acuracy" in res.output and "balanced_accuracy" in res.output


# ---------------------------------------------------------------- failures and reachability

def test_a_failing_probe_run_ends_failed_with_the_error(tmp_path, mlflow_template_db, tiny_model, tiny_extractor, colors):
    from toolkit.tracking import records as run_records
    from toolkit.data.datasets import LabelledDataset
    from toolkit.fitting.probe import train_probe
    from toolkit.data.extraction import extract_store

    uri = new_store(mlflow_template_db, tmp_path)
    cfg = load_config(write_config(tmp_path / "cfg.yaml", tiny_model, uri, tmp_path / "art"))
    paths = sorted(str(p) for p in (colors / "train").rglob("*.png"))
    labels = [Path(p).parent.name for p in paths]
    no_val = LabelledDataset(colors, paths, labels, ["train", "test"] * (len(paths) // 2), CLASSES)
    store = extract_store(tiny_extractor, no_val, tmp_path / "store")  # real, but without a val split
    with pytest.raises(DataError):
        with run_records.probe_run(cfg, "broken") as run:
            train_probe(store, cfg.probe)
    r = _client(uri).get_run(run.run_id)
    assert r.info.status == "FAILED"
    assert "no validation rows" in r.data.tags["error"] and r.data.tags["error_type"] == "DataError"
    assert "error.txt" in _artifacts(uri, run.run_id)
    assert not [x for x in _runs(uri, "clipkit-broken") if x.info.status == "FINISHED"]


def test_a_failing_prompt_run_ends_failed_and_compare_ignores_it(tmp_path, mlflow_template_db, tiny_model):
    from toolkit.tracking import records as run_records
    from toolkit.tracking import adapter as tracking
    from toolkit.fitting.prompt_eval import PromptSet

    uri = new_store(mlflow_template_db, tmp_path)
    cfg = load_config(write_config(tmp_path / "cfg.yaml", tiny_model, uri, tmp_path / "art"))
    ps = PromptSet("p", {c: c for c in CLASSES}, ["{}"])
    with pytest.raises(KeyError):
        with run_records.prompt_run(cfg, "half", ps) as run:
            raise KeyError("lost a column")
    r = _client(uri).get_run(run.run_id)
    assert r.info.status == "FAILED" and "lost a column" in r.data.tags["error"]
    with pytest.raises(TrackingError, match="no finished prompt or probe runs"):
        rank(tracking.search_runs(cfg.tracking, "clipkit-half")[1], experiment="clipkit-half")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_fails_before_the_model_loads(colors, tmp_path):
    uri = f"http://127.0.0.1:{_free_port()}"
    # a model that doesn't exist: had the model loaded first, this would be a model error (exit 3)
    res = CliRunner().invoke(main, ["eval-prompts", str(colors), "--model", str(tmp_path / "nope.json"),
                                    "--tracking-uri", uri, "--store", str(tmp_path / "store")])
    assert res.exit_code == 4, res.output
    assert uri in res.output and "can't be reached" in res.output and "--no-track" in res.output
    assert not (tmp_path / "store").exists()


def test_tracking_uri_comes_from_the_environment(colors, tmp_path):
    uri = f"http://127.0.0.1:{_free_port()}"
    res = CliRunner().invoke(main, ["eval-prompts", str(colors), "--model", str(tmp_path / "nope.json")],
                             env={"MLFLOW_TRACKING_URI": uri})
    assert res.exit_code == 4 and uri in res.output


@pytest.mark.parametrize("uri, fragment", [("./mlruns", "old file store"),
                                           ("sqlite:////no/such/folder/mlflow.db", "does not exist")])
def test_check_tracking_refuses_unusable_stores(uri, fragment):
    from toolkit.config import TrackingConfig
    from toolkit.tracking.adapter import check_tracking

    with pytest.raises(TrackingError, match=fragment):
        check_tracking(TrackingConfig(uri=uri))
    check_tracking(TrackingConfig(uri=uri, enabled=False))  # tracking off: nothing to check


def test_no_track_records_nothing_and_flags_make_a_product(colors, tmp_path, tiny_model, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "names.txt").write_text("\n".join(CLASSES) + "\n")
    (tmp_path / "upper.txt").write_text("\n".join(c.upper() for c in CLASSES) + "\n")
    res = _invoke(["eval-prompts", colors, "--model", tiny_model["config"], "--pretrained", tiny_model["checkpoint"],
                   "--device", "cpu", "--templates", "none", "--templates", "people", "--labels", "names.txt",
                   "--labels", "upper.txt", "--no-track", "--format", "json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert sorted(r["prompt_set"] for r in doc["results"]) == ["names+none", "names+people", "upper+none",
                                                                "upper+people"]
    assert all(r["run_id"] is None for r in doc["results"]) and doc["experiment"] is None
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlartifacts").exists()
    # images were encoded once, into one feature store in train-probe's default cache
    assert len(list((tmp_path / "cache" / "clipkit" / "stores").iterdir())) == 1


def test_labels_that_are_not_classes_are_refused_before_the_model_loads(colors, tmp_path):
    (tmp_path / "labels.txt").write_text("a cat\na dog\na bird\n")
    res = CliRunner().invoke(main, ["eval-prompts", str(colors), "--labels", str(tmp_path / "labels.txt"),
                                    "--model", str(tmp_path / "nope.json"), "--no-track"])
    assert res.exit_code == 2 and "'a cat'" in res.output and "prompt-sets" in res.output


# ---------------------------------------------------------------- ranking (no MLflow)

def _run(run_id, kind, acc, dataset="d", digest="x", **metrics):
    return {"run_id": run_id, "name": f"{kind}:{run_id}", "kind": kind, "dataset": dataset, "start_time": 1,
            "tags": {"split_digest": digest}, "params": {}, "metrics": {"accuracy": acc, **metrics}}


def test_rank_orders_best_first_and_measures_gain_from_the_best_prompt():
    rep = rank([_run("a", "prompt", 0.5), _run("b", "probe", 0.9), _run("c", "prompt", 0.6)])
    assert [r["run_id"] for r in rep["runs"]] == ["b", "c", "a"]
    assert rep["baseline"] == 0.6 and [round(r["gain"], 6) for r in rep["runs"]] == [30.0, 0.0, -10.0]
    assert rep["notes"] == []


def test_rank_gives_each_probe_its_own_zero_shot_baseline_and_flags_mixed_splits():
    rep = rank([_run("a", "probe", 0.8, zeroshot_test_accuracy=0.4),
                _run("b", "probe", 0.7, digest="y", zeroshot_test_accuracy=0.5),
                _run("p", "prompt", 0.6, digest="y"),
                _run("c", "prompt", 0.9, dataset="other")], dataset="d")
    assert rep["baseline"] == 0.4 and rep["baseline_source"].startswith("probe")  # the best probe run's own
    assert [(r["run_id"], round(r["gain"], 6)) for r in rep["runs"]] == [("a", 40.0), ("b", 20.0), ("p", 20.0)]
    assert any("other" in n for n in rep["notes"]) and any("different image sets" in n for n in rep["notes"])
    assert any("its own zero-shot" in n for n in rep["notes"])
