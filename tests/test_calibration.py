"""Calibrated scores and "none of these": temperature scaling, ECE/NLL/Brier, thresholds chosen on val, and
rejected predictions in every output (JSON, table, CSV, HTTP), from heads made by train-probe and eval-prompts."""
from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from toolkit.heads import calibration as cal
from toolkit.cli import main
from toolkit.evaluation.compare import rank
from toolkit.config import ProbeConfig
from toolkit.errors import ConfigError
from toolkit.predictor import Predictor, reject_mask, result_row

from tracking_fixtures import COLORS, color_dataset, new_store, write_config

CLASSES = sorted(COLORS)


def blobs(n: int, seed: int, n_classes: int = 4, d: int = 8, spread: float = 1.3):
    """Gaussian classes with unit covariance: logits -||x - mu||^2 / 2 are the exact (calibrated) posterior."""
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(99).normal(0, spread, (n_classes, d))
    y = rng.integers(0, n_classes, n)
    x = means[y] + rng.normal(size=(n, d))
    return -0.5 * ((x[:, None, :] - means[None]) ** 2).sum(-1), y


# ---------------------------------------------------------------- metrics and temperature scaling

def test_ece_nll_brier_match_hand_computed_values():
    proba = np.array([[0.9, 0.1], [0.91, 0.09], [0.3, 0.7], [0.62, 0.38]])
    y = np.array([0, 1, 1, 1])  # right (0.9), wrong (0.91), right (0.7), wrong (0.62)
    # bins of width 1/15: 0.9 and 0.91 share (13/15, 14/15]: accuracy 1/2, confidence 0.905
    expected_ece = 2 / 4 * abs(0.5 - 0.905) + 1 / 4 * abs(1 - 0.7) + 1 / 4 * abs(0 - 0.62)
    assert cal.ece(proba, y) == pytest.approx(expected_ece)  # 0.4325
    assert cal.nll(proba, y) == pytest.approx(-(math.log(0.9) + math.log(0.09) + math.log(0.7) + math.log(0.38)) / 4)
    assert cal.brier(proba, y) == pytest.approx((0.02 + 2 * 0.91 ** 2 + 0.18 + 2 * 0.62 ** 2) / 4)  # 0.65625
    bins = cal.reliability_bins(proba, y)
    assert bins["count"].sum() == 4 and bins["count"][13] == 2 and bins["accuracy"][13] == 0.5
    m = cal.calibration_metrics(proba, y, bins=True)
    assert m["accuracy"] == 0.5 and m["reliability"]["count"][13] == 2 and m["reliability"]["accuracy"][0] is None


def test_a_perfect_classifier_has_zero_error():
    proba, y = np.eye(3)[[0, 1, 2, 1]], np.array([0, 1, 2, 1])
    assert cal.ece(proba, y) == 0 and cal.brier(proba, y) == 0 and cal.nll(proba, y) == pytest.approx(0, abs=1e-12)


def test_temperature_lowers_nll_on_held_out_data_for_an_over_confident_head():
    val_logits, y_val = blobs(1500, seed=1)
    test_logits, y_test = blobs(3000, seed=2)
    assert 0.6 < (val_logits.argmax(1) == y_val).mean() < 0.95  # decent, not perfect
    scaler = cal.TemperatureScaler().fit(5 * val_logits, y_val)  # over-confident: logits x 5
    assert 4.0 < scaler.temperature_ < 6.3  # the true posterior is at T = 5
    before = cal.nll(np.exp(cal.log_softmax(5 * test_logits)), y_test)
    after = cal.nll(scaler.predict_proba(5 * test_logits), y_test)
    assert after < 0.8 * before
    ece_before = cal.ece(np.exp(cal.log_softmax(5 * test_logits)), y_test)
    assert cal.ece(scaler.predict_proba(5 * test_logits), y_test) < ece_before / 2
    assert (scaler.predict_proba(5 * test_logits).argmax(1) == test_logits.argmax(1)).all()  # accuracy unchanged


def test_a_calibrated_head_keeps_a_temperature_near_one_and_a_flawless_val_split_keeps_one():
    logits, y = blobs(3000, seed=3)
    assert cal.TemperatureScaler().fit(logits, y).temperature_ == pytest.approx(1.0, abs=0.12)
    right = np.eye(3)[[0, 1, 2]] * 4.0
    scaler = cal.TemperatureScaler().fit(right, np.array([0, 1, 2]))
    assert scaler.temperature_ == 1.0 and "every validation prediction is right" in scaler.note_


# ---------------------------------------------------------------- thresholds

@pytest.mark.parametrize("target", [0.7, 0.85, 0.95])
def test_the_threshold_for_a_target_precision_reaches_it_on_val_and_is_the_lowest(target):
    logits, y = blobs(800, seed=4)
    proba = np.exp(cal.log_softmax(logits))
    conf, correct = proba.max(1), proba.argmax(1) == y
    t = cal.choose_threshold(conf, correct, target_precision=target)
    assert t.reached and t.rule == "target_precision" and t.target == target
    keep = conf >= t.threshold
    assert correct[keep].mean() >= target and t.val_precision == pytest.approx(correct[keep].mean())
    assert t.val_coverage == pytest.approx(keep.mean())
    lower = conf[conf < t.threshold]  # every lower threshold (the next distinct confidence) misses the target
    for cut in np.unique(lower):
        assert correct[conf >= cut].mean() < target


def test_the_threshold_for_a_target_coverage_keeps_that_share():
    logits, y = blobs(800, seed=5)
    proba = np.exp(cal.log_softmax(logits))
    conf, correct = proba.max(1), proba.argmax(1) == y
    t = cal.choose_threshold(conf, correct, target_coverage=0.6)
    assert t.val_coverage >= 0.6 and (conf > t.threshold).mean() < 0.6  # the highest that keeps 60%
    assert t.val_precision > correct.mean()  # dropping the least confident raises precision


def test_an_unreachable_precision_says_so_and_keeps_the_best():
    conf = np.array([0.9, 0.8, 0.7, 0.6])
    t = cal.choose_threshold(conf, np.array([False, True, True, False]), target_precision=0.9)
    assert not t.reached and "no threshold reaches precision 0.9" in t.note
    assert t.threshold == pytest.approx(0.65) and t.val_precision == pytest.approx(2 / 3)  # halfway to 0.6


def test_threshold_arguments_are_checked():
    with pytest.raises(ConfigError, match="exactly one"):
        cal.choose_threshold(np.ones(3), np.ones(3, bool))
    with pytest.raises(ConfigError, match="1.5"):
        cal.choose_threshold(np.ones(3), np.ones(3, bool), target_precision=1.5)
    with pytest.raises(ConfigError, match="at most one"):
        cal.calibrate(np.eye(3), np.arange(3), target_precision=0.9, reject_below=0.5)
    with pytest.raises(Exception, match="at most one"):
        ProbeConfig(target_precision=0.9, target_coverage=0.5)


def test_calibrate_reports_before_and_after_and_the_rule():
    logits, y = blobs(600, seed=6)
    report = cal.calibrate(4 * logits, y, target_precision=0.97)  # val accuracy is 0.948: some are rejected
    assert report["temperature"] > 2
    assert report["val"]["after"]["nll"] < report["val"]["before"]["nll"]
    assert report["rejection"]["rule"] == "target_precision" and report["rejection"]["val_precision"] >= 0.97
    assert report["reject_below"] == report["rejection"]["threshold"]
    assert cal.calibrate(logits, y)["reject_below"] is None and cal.calibrate(logits, y)["rejection"] == {}


# ---------------------------------------------------------------- rows and the Predictor

def test_rejected_rows_keep_their_scores_and_have_no_label():
    probs = np.array([0.5, 0.3, 0.2])
    row = result_row(["a", "b", "c"], probs, 2, reject_below=0.6)
    assert row["label"] is None and row["rejected"] is True and row["score"] == 0.5
    assert row["scores"] == {"a": 0.5, "b": 0.3, "c": 0.2} and [t["label"] for t in row["top_k"]] == ["a", "b"]
    kept = result_row(["a", "b", "c"], probs, None, reject_below=0.5)  # at the threshold: accepted
    assert kept["label"] == "a" and kept["rejected"] is False
    assert result_row(["a", "b", "c"], probs, None)["rejected"] is False
    table = np.array([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]])
    assert reject_mask(table, 0.6).tolist() == [True, False, False]
    assert reject_mask(table, None).tolist() == [False] * 3 and reject_mask(table, 0).tolist() == [False] * 3


@pytest.fixture()
def reject_head(tiny_extractor, image_dir):
    """(a probe head over the tiny model whose threshold rejects about half of the `image_dir` images,
    {path: top score})."""
    from toolkit.heads.linear import LinearProbe

    rng = np.random.default_rng(0)
    head = LinearProbe(["squat", "plank", "rest"], 8 * rng.normal(size=(3, 32)).astype(np.float32),
                       identity=tiny_extractor.identity, temperature=1.5)
    files = sorted(str(p) for p in image_dir.rglob("*") if p.is_file())
    scores = {r["path"]: r["score"] for r in Predictor(tiny_extractor, head).predict_paths(files)}
    return head.calibrated(head.temperature_, float(np.median(list(scores.values())))), scores


def test_the_predictor_applies_the_heads_threshold_and_a_per_call_override(tiny_extractor, reject_head):
    head, scores = reject_head
    p = Predictor(tiny_extractor, head)
    assert p.threshold() == head.reject_below_ and p.threshold(0) is None and p.threshold(0.3) == 0.3
    with pytest.raises(ConfigError, match="1.5"):
        p.threshold(1.5)
    rows = p.predict_paths(list(scores))
    assert [r["rejected"] for r in rows] == [scores[r["path"]] < head.reject_below_ for r in rows]
    assert 0 < sum(r["rejected"] for r in rows) < len(rows)
    assert not any(r["rejected"] for r in p.predict_paths(list(scores), reject_below=0))
    assert all(r["rejected"] for r in p.predict_paths(list(scores), reject_below=1.0))


# ---------------------------------------------------------------- the CLI and the server

@pytest.fixture()
def saved_reject_head(reject_head, tmp_path):
    head, scores = reject_head
    return head.save(tmp_path / "head"), scores, head.reject_below_


def _predict(tiny_model, *args):
    extra = ["--model", tiny_model["config"], "--pretrained", tiny_model["checkpoint"], "--device", "cpu",
             "--precision", "fp32"]
    return CliRunner().invoke(main, ["predict", *map(str, args), *extra], catch_exceptions=False)


def test_predict_json_table_and_csv_show_rejections(tiny_model, saved_reject_head, image_dir):
    folder, scores, threshold = saved_reject_head
    r = _predict(tiny_model, image_dir, "--head", folder, "--format", "json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["reject_below"] == pytest.approx(threshold)
    for row in doc["results"]:
        assert row["rejected"] is (row["score"] < threshold)
        assert (row["label"] is None) is row["rejected"] and len(row["scores"]) == 3 and row["top_k"]
    n_rejected = sum(row["rejected"] for row in doc["results"])
    assert 0 < n_rejected < len(doc["results"])

    table = _predict(tiny_model, image_dir, "--head", folder, "--unknown-label", "something else").stdout
    assert table.count("something else") == n_rejected and "none of these" not in table
    assert _predict(tiny_model, image_dir, "--head", folder).stdout.count("none of these") == n_rejected

    rows = list(csv.DictReader(io.StringIO(_predict(tiny_model, image_dir, "--head", folder, "--format", "csv").stdout)))
    assert list(rows[0])[:5] == ["path", "label", "score", "rejected", "error"]
    assert sum(row["rejected"] == "true" for row in rows) == n_rejected
    assert all((row["label"] == "") == (row["rejected"] == "true") for row in rows)

    none = json.loads(_predict(tiny_model, image_dir, "--head", folder, "--format", "json", "--reject-below", "0").stdout)
    assert none["reject_below"] is None and not any(row["rejected"] for row in none["results"])
    bad = CliRunner().invoke(main, ["predict", str(image_dir), "--reject-below", "2"])
    assert bad.exit_code == 2 and "--reject-below" in bad.output


def test_http_predict_rejects_like_the_cli_with_a_per_request_override(tiny_model, tiny_extractor, saved_reject_head):
    from fastapi.testclient import TestClient

    from test_serve_app import encoded, make_cfg, noise, wait_ready
    from toolkit.heads.base import load_head
    from toolkit.serve import create_app

    folder, _, threshold = saved_reject_head
    files = [("files", (f"n{i}.png", encoded(noise(i), "PNG"))) for i in range(6)]
    with TestClient(create_app(make_cfg(tiny_model), head=str(folder))) as c:
        wait_ready(c)
        assert c.get("/v1/info").json()["head"]["calibration"]["reject_below"] == pytest.approx(threshold)
        body = c.post("/v1/predict", files=files).json()
        assert body["reject_below"] == pytest.approx(threshold)
        for row in body["results"]:
            assert row["rejected"] is (row["score"] < threshold) and (row["label"] is None) is row["rejected"]
            assert sum(row["scores"].values()) == pytest.approx(1, abs=1e-5)
        local = Predictor(tiny_extractor, load_head(folder)).predict_images([noise(i) for i in range(6)])
        assert [r["rejected"] for r in body["results"]] == [r["rejected"] for r in local]
        off = c.post("/v1/predict", files=files, data={"reject_below": "0"}).json()
        assert off["reject_below"] is None and not any(r["rejected"] for r in off["results"])
        strict = c.post("/v1/predict", files=files, data={"reject_below": "0.999"}).json()
        assert all(r["rejected"] and r["label"] is None for r in strict["results"])
        bad = c.post("/v1/predict", files=files, data={"reject_below": "1.5"})
        assert bad.status_code == 422 and "reject_below" in bad.json()["error"]["message"]
        nan = c.post("/v1/predict", files=files, data={"reject_below": "nan"})  # not "should be <= 1"
        assert nan.status_code == 422 and "finite" in nan.json()["error"]["message"]
        schema = c.get("/openapi.json").json()["components"]["schemas"]
        assert "rejected" in schema["ImageResult"]["properties"]


# ---------------------------------------------------------------- eval-prompts, train-probe, MLflow, compare

@pytest.fixture(scope="module")
def tracked(tmp_path_factory, tiny_model, mlflow_template_db):
    """eval-prompts (--save-head, --target-coverage) and train-probe (--target-precision) on the colour
    dataset, both logged to one fresh SQLite store."""
    d = tmp_path_factory.mktemp("calibrated")
    colors = color_dataset(d / "colors")
    uri = new_store(mlflow_template_db, d / "mlflow")
    cfg = write_config(d / "cfg.yaml", tiny_model, uri, d / "mlartifacts", register_head=False)
    run = CliRunner().invoke
    ev = run(main, ["eval-prompts", str(colors), "--config", str(cfg), "--store", str(d / "store"),
                    "--target-coverage", "0.5", "--save-head", str(d / "zs-head"), "--format", "json"],
             catch_exceptions=False)
    assert ev.exit_code == 0, ev.output
    tp = run(main, ["train-probe", str(colors), "--config", str(cfg), "--store", str(d / "store"),
                    "--out", str(d / "head"), "--target-precision", "0.9"], catch_exceptions=False)
    assert tp.exit_code == 0, tp.output
    return {"dir": d, "colors": colors, "uri": uri, "config": cfg, "eval": ev, "probe": tp}


def _runs(uri: str):
    import mlflow

    mlflow.set_tracking_uri(uri)
    return {r.data.tags["kind"]: r for r in mlflow.search_runs(experiment_names=["clipkit-colors"],
                                                                 output_format="list")}


@pytest.mark.slow  # end to end: eval-prompts, train-probe and MLflow (~30 s)
def test_train_probe_reports_calibration_in_report_json_summary_and_mlflow(tracked):
    d, out = tracked["dir"], tracked["probe"].output
    assert "calibration" in out and "ECE (test)" in out and "none of these" in out and "target precision 0.9" in out
    report = json.loads((d / "head" / "report" / "report.json").read_text())
    c = report["metrics"]["calibration"]
    for name in ("probe", "zeroshot"):
        for split in ("val", "test"):
            assert {"ece", "nll", "brier"} <= set(c[name][split]["before"]) and c[name][split]["after"]["n"] == 12
    assert c["probe"]["rejection"]["rule"] == "target_precision" and c["probe"]["val_scores"].startswith("pre-refit")
    assert (d / "head" / "report" / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    head = json.loads((d / "head" / "head.json").read_text())["calibration"]
    assert head["reject_below"] == c["probe"]["reject_below"] and head["temperature"] == c["probe"]["temperature"]
    assert head["rejection"]["val_precision"] >= 0.9 or not head["rejection"]["reached"]

    import mlflow

    run = _runs(tracked["uri"])["probe"]
    m = run.data.metrics
    assert {"val_ece_before", "val_ece", "test_ece", "test_nll", "test_brier", "test_ece_before", "temperature",
            "zeroshot_test_ece", "zeroshot_temperature", "ece", "nll", "brier"} <= set(m)
    assert m["ece"] == pytest.approx(c["probe"]["test"]["after"]["ece"])
    assert m["zeroshot_test_nll_before"] == pytest.approx(c["zeroshot"]["test"]["before"]["nll"])
    assert run.data.params["rejection"] == "target_precision=0.9"
    arts = {f.path for f in mlflow.MlflowClient(tracked["uri"]).list_artifacts(run.info.run_id)}
    assert "reliability.png" in arts


@pytest.mark.slow  # end to end: eval-prompts, train-probe and MLflow (~30 s)
def test_eval_prompts_calibrates_and_saves_a_head_that_predicts_and_serves(tracked, tiny_model):
    from fastapi.testclient import TestClient

    from test_serve_app import make_cfg, wait_ready
    from toolkit.heads.base import load_head
    from toolkit.serve import create_app

    d = tracked["dir"]
    row = json.loads(tracked["eval"].stdout)["results"][0]
    assert {"temperature", "ece", "ece_before", "nll", "brier", "val_ece"} <= set(row["calibration"])
    assert row["rejection"]["rule"] == "target_coverage" and row["rejection"]["val_coverage"] >= 0.5
    assert "saved the calibrated zero-shot head" in tracked["eval"].stderr
    head = load_head(d / "zs-head")
    assert head.kind == "zeroshot" and head.classes_ == CLASSES
    assert head.temperature_ == pytest.approx(row["calibration"]["temperature"])
    assert head.reject_below_ == pytest.approx(row["rejection"]["threshold"])
    prompt = _runs(tracked["uri"])["prompt"]
    assert {"ece", "ece_before", "nll", "brier", "temperature", "val_ece"} <= set(prompt.data.metrics)

    test_images = sorted((tracked["colors"] / "test").rglob("*.png"))
    r = CliRunner().invoke(main, ["predict", *map(str, test_images), "--config", str(tracked["config"]), "--head",
                                  str(d / "zs-head"), "--format", "json", "--precision", "fp32"],
                             catch_exceptions=False)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["mode"] == "zeroshot" and doc["labels"] == CLASSES
    assert doc["reject_below"] == pytest.approx(head.reject_below_)
    # the saved zero-shot head also gets the default "unfamiliar" detector (issue 22) and says so; a rejection
    # is either under the calibrated threshold or unfamiliar, and says which
    assert doc["unfamiliar"]["rule"] == "zeroshot_default"
    assert all(row["rejected"] is (row["score"] < head.reject_below_ or row["reason"] == "unfamiliar")
               for row in doc["results"])
    assert all((row["reason"] == "low_confidence") is (row["score"] < head.reject_below_ and
                                                       row["reason"] != "unfamiliar") for row in doc["results"])

    with TestClient(create_app(make_cfg(tiny_model), head=str(d / "zs-head"))) as c:
        wait_ready(c)
        files = [("files", (p.name, p.read_bytes())) for p in test_images]
        body = c.post("/v1/predict", files=files).json()
        assert body["labels"] == CLASSES and body["reject_below"] == pytest.approx(head.reject_below_)
        by_path = {row["path"]: row for row in doc["results"]}
        for p, row in zip(test_images, body["results"]):
            assert row["score"] == pytest.approx(by_path[str(p)]["score"], abs=1e-4)
            assert row["rejected"] is by_path[str(p)]["rejected"] and (row["label"] is None) is row["rejected"]


@pytest.mark.slow  # end to end: eval-prompts, train-probe and MLflow (~30 s)
@pytest.mark.parametrize("metric", ["ece", "nll", "brier"])
def test_compare_ranks_calibration_errors_lowest_first(tracked, metric):
    res = CliRunner().invoke(main, ["compare", "--config", str(tracked["config"]), "--metric", metric,
                                    "--format", "json", "--no-plot"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    values = [r[metric] for r in doc["runs"]]
    assert len(values) == 2 and values == sorted(values) and doc["lower_is_better"] is True
    table = CliRunner().invoke(main, ["compare", "--config", str(tracked["config"]), "--metric", metric,
                                      "--plot", str(tracked["dir"] / f"{metric}.png")]).stdout
    assert "lower is better" in table and (tracked["dir"] / f"{metric}.png").is_file()


def test_rank_puts_the_lowest_error_first_with_a_positive_gain_for_less_error():
    runs = [{"run_id": f"r{i}", "name": f"run{i}", "kind": kind, "dataset": "d", "start_time": i, "tags": {},
             "params": {}, "metrics": {"ece": v, "nll": 3 * v}} for i, (kind, v) in
            enumerate([("prompt", 0.20), ("probe", 0.05), ("prompt", 0.10)])]
    doc = rank(runs, "ece")
    assert [r["ece"] for r in doc["runs"]] == [0.05, 0.10, 0.20] and doc["baseline"] == 0.10
    assert [round(r["gain"], 6) for r in doc["runs"]] == [5.0, 0.0, -10.0]  # points of ECE saved
    nll = rank(runs, "nll")
    assert [round(r["gain"], 6) for r in nll["runs"]] == [0.15, 0.0, -0.3]  # nll gains in nats, not points
    assert [r["accuracy"] for r in rank([{**r, "metrics": {"accuracy": r["metrics"]["ece"]}} for r in runs],
                                        "accuracy")["runs"]] == [0.20, 0.10, 0.05]


def test_reliability_diagram_is_written(tmp_path):
    from toolkit.evaluation import plots
    from toolkit.evaluation.metrics import reliability_panels

    logits, y = blobs(400, seed=7)
    report = cal.split_report(5 * logits, y, 4.0, reject_below=0.8)
    assert report["selective"]["coverage"] < 1
    panels = reliability_panels({"probe": {"temperature": 4.0, "test": report}})
    assert [p["ece"] for p in panels] == [report["before"]["ece"], report["after"]["ece"]]
    path = plots.reliability_png(panels, tmp_path / "rel.png")
    assert path.read_bytes()[:4] == b"\x89PNG" and not list(tmp_path.glob(".*"))  # no temp file left
    with Image.open(path) as im:
        assert im.width > 600 and im.height > 300


@pytest.mark.browser
@pytest.mark.slow
def test_the_web_page_shows_none_of_these_for_a_rejected_image(tiny_model, tiny_extractor, tmp_path):
    import yaml
    from playwright.sync_api import expect, sync_playwright

    from test_serve_browser import CHROMIUM, CHROMIUM_ARGS
    from toolkit.serve.process import ServerProcess
    from toolkit.heads.zeroshot import ZeroShotHead

    head = ZeroShotHead.from_extractor(tiny_extractor, ["a red square", "a blue circle", "a green triangle"], ["{}"])
    head = head.calibrated(1.0, 0.99)  # the tiny random model is never that sure: every image is rejected
    folder = head.save(tmp_path / "head")
    cfg = tmp_path / "serve.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"name": tiny_model["config"], "pretrained": tiny_model["checkpoint"],
                                             "device": "cpu", "num_workers": 0}}))
    img = tmp_path / "red.png"
    Image.new("RGB", (64, 48), (220, 20, 20)).save(img)
    with ServerProcess(["--config", str(cfg), "--head", str(folder), "--no-access-log"]) as srv, \
            sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(srv.url + "/")
        expect(page.locator("#model-info")).to_contain_text('"none of these" under 99.0%', timeout=30_000)
        page.set_input_files("#file", str(img))
        expect(page.locator("#status")).to_contain_text("Best: none of these", timeout=30_000)
        assert "under the 99.0% threshold" in page.locator("#status").inner_text()
        assert page.locator("#bars .bar-row").count() == 3  # the scores are still shown
        browser.close()
