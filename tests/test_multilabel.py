"""Multi-label: datasets (CSV with '|', JSON Lines), metrics and thresholds, one-vs-rest logreg, heads (save/load,
two-way zero-shot), the Predictor's rows, and the CLI path demo-data -> train-probe -> predict on a tiny model."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from toolkit.data.multilabel import MultiLabelDataset, is_multilabel_source, load_any, load_multilabel
from toolkit.errors import ConfigError, DataError


def _images(folder, n: int):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray((rng.random((8, 8, 3)) * 255).astype("uint8")).save(folder / f"{i}.png")


ROWS = [("0.png", ["cat", "dog"], "train"), ("1.png", ["cat"], "train"), ("2.png", ["dog", "sofa"], "train"),
        ("3.png", ["sofa"], "val"), ("4.png", ["cat", "sofa"], "test"), ("5.png", ["dog"], "test")]


def _write(tmp_path, rows=ROWS, kind="csv"):
    _images(tmp_path, 6)
    if kind == "csv":
        p = tmp_path / "labels.csv"
        p.write_text("path,labels,split\n" + "".join(f"{a},{'|'.join(b)},{c}\n" for a, b, c in rows))
    else:
        p = tmp_path / "labels.jsonl"
        p.write_text("".join(json.dumps({"path": a, "labels": b, "split": c}) + "\n" for a, b, c in rows))
    return p


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_multilabel_files_are_recognised_and_read_alike(tmp_path, kind):
    p = _write(tmp_path, kind=kind)
    assert is_multilabel_source(p)
    ds = load_any(p)
    assert isinstance(ds, MultiLabelDataset) and ds.classes == ["cat", "dog", "sofa"]
    assert ds.label_sets[0] == ["cat", "dog"] and ds.splits == [r[2] for r in ROWS]
    assert ds.targets().tolist()[2] == [0, 1, 1]
    assert ds.counts()["train"] == {"cat": 2, "dog": 2, "sofa": 1}


def test_single_label_csv_is_not_multilabel(tmp_path):
    _images(tmp_path, 1)
    (tmp_path / "m.csv").write_text("path,label\n0.png,cat\n")
    assert not is_multilabel_source(tmp_path / "m.csv")


@pytest.mark.parametrize("rows, kind, words", [
    ([("0.png", [], "train")] + ROWS[1:], "csv", ["line 2 has no labels", "at least one label"]),
    ([("0.png", ["cat", ""], "train")] + ROWS[1:], "csv", ["empty label in 'cat|'", "remove the stray '|'"]),
    ([("0.png", ["cat|dog"], "train")] + ROWS[1:], "jsonl", ["'cat|dog' with '|' inside", "rename the label"]),
    (ROWS[:3] + [("3.png", ["bird"], "val")] + ROWS[4:], "csv", ["label 'bird' appears only in val",
                                                                  "add training images"]),
    ([(a, ["cat"], c) for a, _, c in ROWS], "csv", ["only one label", "at least two"]),
])
def test_bad_multilabel_input_is_one_line_with_the_fix(tmp_path, rows, kind, words):
    with pytest.raises(DataError) as e:
        load_multilabel(_write(tmp_path, rows, kind))
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_missing_splits_are_drawn_with_the_seed(tmp_path):
    rows = [(f"{i}.png", ["cat"] if i % 2 else ["cat", "dog"], "") for i in range(6)]
    p = _write(tmp_path, rows)
    a, b = load_multilabel(p, seed=1), load_multilabel(p, seed=1)
    assert a.splits == b.splits and {"train", "val", "test"} <= set(a.splits)


# ---------------------------------------------------------------- metrics

def test_metrics_match_scikit_learn():
    from sklearn.metrics import average_precision_score, f1_score

    from toolkit.evaluation.multilabel import average_precision, decide, evaluate_multilabel, f1_scores

    rng = np.random.default_rng(0)
    Y = (rng.random((50, 4)) < 0.4).astype(int)
    S = np.clip(Y * 0.3 + rng.random((50, 4)) * 0.7, 0, 1)
    assert np.allclose(average_precision(S, Y), average_precision_score(Y, S, average=None))
    D = decide(S, [0.5, 0.4, 0.6, 0.5])
    f = f1_scores(D, Y)
    assert f["micro_f1"] == pytest.approx(f1_score(Y, D, average="micro"))
    assert f["macro_f1"] == pytest.approx(f1_score(Y, D, average="macro"))
    m = evaluate_multilabel(S, Y, list("abcd"), 0.5)
    assert m["mAP"] == pytest.approx(average_precision_score(Y, S, average="macro"))
    assert set(m["per_class"]["a"]) >= {"ap", "f1", "threshold", "ece", "precision", "recall"}


def test_per_class_thresholds_beat_any_global_one_on_their_own_data():
    from toolkit.evaluation.multilabel import (
        best_global_threshold, choose_thresholds, decide, f1_scores, precision_threshold,
    )

    rng = np.random.default_rng(1)
    Y = (rng.random((80, 3)) < 0.5).astype(int)
    S = np.clip(Y * np.array([0.2, 0.5, 0.05]) + rng.random((80, 3)) * 0.5 + np.array([0.0, 0.3, 0.4]), 0, 1)
    th, rule = choose_thresholds(S, Y)
    per = f1_scores(decide(S, th), Y)["macro_f1"]
    g, g_f1 = best_global_threshold(S, Y)
    assert per >= g_f1 and rule["rule"] == "f1"
    t = precision_threshold(S[:, 1], Y[:, 1], 0.9)
    on = S[:, 1] >= t
    assert Y[on, 1].mean() >= 0.9 and on.sum() > 0


# ---------------------------------------------------------------- fitting and heads

def test_one_vs_rest_logreg_matches_scikit_learn_per_class():
    from sklearn.linear_model import LogisticRegression

    from toolkit.fitting.multilabel import fit_ovr

    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 6)).astype(np.float32)
    Y = (X[:, :3] + 0.5 * rng.normal(size=(60, 3)) > 0).astype(np.float32)
    coef, icpt, _ = fit_ovr(X, Y, C=[0.5, 2.0, 10.0], tol=1e-7)
    for k, C in enumerate([0.5, 2.0, 10.0]):
        ref = LogisticRegression(C=C, tol=1e-10, max_iter=10000).fit(X, Y[:, k])
        assert np.allclose(coef[k], ref.coef_[0], atol=2e-3) and icpt[k] == pytest.approx(ref.intercept_[0], abs=2e-3)


@pytest.fixture(scope="module")
def fitted():
    """A one-vs-rest head finished on val (Platt per class, best-F1 thresholds) on separable-ish toy features."""
    from toolkit.fitting.multilabel import OneVsRestLogReg, finish_head

    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 8)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    Y = (X[:, :3] + 0.05 * rng.normal(size=(120, 3)) > 0).astype(np.float32)
    est = OneVsRestLogReg(c_grid=[0.1, 1, 10, 100], per_class_c=True)
    head = est.fit(X[:80], Y[:80], X[80:100], Y[80:100], ["a", "b", "c"])
    return finish_head(head, est.result_.val_logits, Y[80:100], "platt"), X, Y, est


def test_fitted_head_learns_and_saves_exactly(fitted, tmp_path):
    from toolkit.evaluation.multilabel import average_precision
    from toolkit.heads.base import load_head

    head, X, Y, est = fitted
    assert np.nanmean(average_precision(head.predict_proba(X[100:]), Y[100:])) > 0.85
    assert head.calibration_method_ == "platt" and not np.allclose(head.thresholds_, 0.5)
    assert len(est.result_.params["C"]) == 3 and est.result_.sweep[0]["param"] == "C"
    head.save(tmp_path / "h")
    doc = json.loads((tmp_path / "h" / "head.json").read_text())
    assert doc["type"] == "multilabel-linear" and doc["multi_label"] and len(doc["thresholds"]) == 3
    back = load_head(tmp_path / "h")
    assert np.array_equal(back.predict_proba(X), head.predict_proba(X)) and back.predict(X) == head.predict(X)


def test_centred_head_scores_recentred_features_and_saves_its_centre(fitted, tmp_path):
    from toolkit.fitting.multilabel import OneVsRestLogReg
    from toolkit.heads.base import load_head

    _, X, Y, _ = fitted
    X = X + 0.8 * np.eye(8, dtype=np.float32)[0]  # a common direction every feature shares, as CLIP's do
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    head = OneVsRestLogReg(c_grid=[1, 10], center=True).fit(X[:80], Y[:80], X[80:100], Y[80:100], ["a", "b", "c"])
    mu = X[:80].mean(axis=0)
    z = (X - mu) / np.linalg.norm(X - mu, axis=1, keepdims=True)
    assert np.allclose(head.decision_function(X), z @ head.coef_.T + head.intercept_, atol=1e-4)
    assert np.isscalar(head.params["C"]) and head.params["centered"]  # one shared C by default
    back = load_head(head.save(tmp_path / "h"))
    assert np.array_equal(back.center_, head.center_) and np.array_equal(back.predict_proba(X), head.predict_proba(X))


def test_cache_head_adds_a_vote_per_class_and_never_loses_val_map_to_its_base(fitted, tmp_path):
    from toolkit.evaluation.multilabel import average_precision
    from toolkit.fitting.multilabel_cache import MultiLabelCache
    from toolkit.heads.base import load_head
    from toolkit.heads.multilabel import MultiLabelZeroShotHead
    from toolkit.heads.multilabel_cache import cache_vote

    _, X, Y, _ = fitted
    rng = np.random.default_rng(3)
    pos, neg = rng.normal(size=(2, 3, 8)).astype(np.float32)  # a weak zero-shot base: random prompt embeddings
    zs = MultiLabelZeroShotHead(["a", "b", "c"], ["{}"], ["x"] * 3, pos, neg, logit_scale=10.0)
    est = MultiLabelCache()
    head = est.fit(X[:80], Y[:80], X[80:100], Y[80:100], ["a", "b", "c"], zeroshot=zs)
    val_map = np.mean(average_precision(head.decision_function(X[80:100]), Y[80:100]))
    assert val_map >= np.mean(average_precision(zs.decision_function(X[80:100]), Y[80:100]))
    assert head.alpha_.max() > 0 and head.values_.min() == -1  # the cache votes, with +-1 labels
    big = cache_vote(np.array([[1.0, 0.2]]), 200.0, np.array([[1.0], [-1.0]]))  # a sharp vote: the nearest key
    assert big[0, 0] == pytest.approx(1.0)
    assert np.allclose(head.decision_function(X[:3]), zs.decision_function(X[:3]) + head.alpha_ * cache_vote(
        X[:3] @ X[:80].T, head.beta_, head.values_), atol=1e-4)
    back = load_head(head.save(tmp_path / "h"))
    assert json.loads((tmp_path / "h" / "head.json").read_text())["type"] == "multilabel-cache"
    assert np.array_equal(back.predict_proba(X), head.predict_proba(X))


@pytest.mark.parametrize("text, words", [
    ("a | x | y\n", ["line 1", "one 'class | negative prompt' per line"]),
    ("a\n", ["line 1", "'a'"]),
    ("b |  \n", ["line 1", "empty or invisible negative"]),
    ("cats | x\n", ["'cats', which is not a class", "did you mean 'cat'?"]),
    ("cat | x\nCat | y\n", ["line 2", "second negative"]),
])
def test_bad_negatives_file_is_one_line_with_the_fix(tmp_path, text, words):
    from toolkit.heads.prompts import load_negatives

    (tmp_path / "neg.txt").write_text(text)
    with pytest.raises(ConfigError) as e:
        load_negatives(tmp_path / "neg.txt", ["cat", "b"])
    assert "\n" not in str(e.value) and all(w in str(e.value) for w in words), str(e.value)


def test_negatives_file_names_classes_and_a_default(tmp_path):
    from toolkit.heads.prompts import DEFAULT_NEGATIVE, load_negatives

    (tmp_path / "neg.txt").write_text("# comment\nA Ball | an empty floor\n\n")
    assert load_negatives(tmp_path / "neg.txt", ["a ball", "a cap"]) == {"a ball": "an empty floor",
                                                                         "a cap": DEFAULT_NEGATIVE}
    (tmp_path / "neg.txt").write_text("* | a person\na cap | a bare head\n")
    assert load_negatives(tmp_path / "neg.txt", ["a ball", "a cap"]) == {"a ball": "a person", "a cap": "a bare head"}
    with pytest.raises(ConfigError, match="not found"):
        load_negatives(tmp_path / "missing.txt", ["a"])


def test_platt_calibration_lowers_val_log_loss(fitted):
    from toolkit.fitting.multilabel import fit_class_calibration
    from toolkit.heads.multilabel import sigmoid

    head, X, Y, est = fitted
    z, y = est.result_.val_logits * 5, Y[80:100]  # over-confident logits

    def nll(p):
        p = np.clip(p, 1e-9, 1 - 1e-9)
        return -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()

    for method in ("temperature", "platt"):
        a, b = fit_class_calibration(z, y, method)
        assert nll(sigmoid(a * z + b)) < nll(sigmoid(z))
        assert method == "platt" or np.all(b == 0)


def test_zeroshot_head_is_a_two_way_softmax_per_class(tiny_extractor):
    from toolkit.heads.base import softmax
    from toolkit.heads.multilabel import MultiLabelZeroShotHead

    head = MultiLabelZeroShotHead.from_extractor(tiny_extractor, ["a cat", "a dog"], ["a photo of {}."],
                                                 {"a dog": "a cat"})
    assert head.negatives == ["something else", "a cat"]
    x = tiny_extractor.encode_texts(["a dog on a sofa", "grass"])
    s = head.logit_scale
    for k in range(2):
        pair = np.stack([s * x @ head.pos_coef_[k], s * x @ head.neg_coef_[k]], axis=1)
        assert np.allclose(head.predict_proba(x)[:, k], softmax(pair)[:, 0], atol=1e-5)
    with pytest.raises(ConfigError, match="unknown class 'a bird'"):
        MultiLabelZeroShotHead.from_extractor(tiny_extractor, ["a cat", "a dog"], ["{}"], {"a bird": "x"})


def test_predictor_gives_every_label_above_its_threshold(tiny_extractor):
    from toolkit.heads.multilabel import MultiLabelLinearHead
    from toolkit.predictor import Predictor

    D = tiny_extractor.identity.embed_dim
    coef = np.zeros((3, D), np.float32)
    head = MultiLabelLinearHead(["a", "b", "c"], coef, [2.0, -2.0, 0.0], thresholds=[0.5, 0.5, 0.6],
                                identity=tiny_extractor.identity)
    rows = Predictor(tiny_extractor, head).predict_features(np.ones((2, D), np.float32) / np.sqrt(D))
    assert rows[0]["labels"] == ["a"] and rows[0]["label"] == "a"  # c is at 0.5 < its 0.6
    assert rows[0]["scores"]["b"] == pytest.approx(1 / (1 + np.exp(2)))
    with pytest.raises(ConfigError, match="multi-label"):
        Predictor(tiny_extractor, head).predict_features(np.ones((1, D), np.float32), reject_below=0.5)


# ---------------------------------------------------------------- the demo suite and the CLI

def test_demo_suite_is_seeded_and_several_labels_per_image(tmp_path):
    from toolkit.demo.attributes import iter_multilabel

    a = list(iter_multilabel(6, seed=2, size=32))
    b = list(iter_multilabel(6, seed=2, size=32))
    assert [np.asarray(x[2]).tobytes() for x in a] == [np.asarray(x[2]).tobytes() for x in b]
    assert [x[3] for x in a] == [x[3] for x in b] and max(len(x[3]) for x in a) >= 2


@pytest.fixture(scope="module")
def ml_cli(tiny_model, mlflow_template_db, tmp_path_factory):
    """demo-data --suite multilabel (8 per class, 32 px), then train-probe on it, tracked in a fresh MLflow store
    (the head registered as 'ml-head'), with per-class negatives from a file: {dir, uri, config, model, ...}."""
    from tracking_fixtures import new_store, write_config

    from toolkit.cli import main

    d = tmp_path_factory.mktemp("ml_cli")
    model = ["--model", tiny_model["config"], "--pretrained", tiny_model["checkpoint"], "--device", "cpu"]
    r = CliRunner().invoke(main, ["demo-data", str(d / "d"), "--suite", "multilabel", "--n-per-class", "8",
                                  "--size", "32"])
    assert r.exit_code == 0, r.output
    uri = new_store(mlflow_template_db, d / "mlflow")
    cfg = write_config(d / "cfg.yaml", tiny_model, uri, d / "mlartifacts", registered_model="ml-head")
    (d / "neg.txt").write_text("# negatives\n* | a person\na ball on the floor | an empty floor\n")
    r = CliRunner().invoke(main, ["train-probe", str(d / "d" / "labels.csv"), "--out", str(d / "h"), "--store",
                                  str(d / "s"), "--config", str(cfg), "--c-grid", "1,100", "--negatives",
                                  str(d / "neg.txt")])
    assert r.exit_code == 0, r.output
    return {"dir": d, "uri": uri, "config": str(cfg), "model": model, "train_output": r.output}


@pytest.mark.slow
def test_cli_demo_data_train_probe_predict(ml_cli):
    from toolkit.cli import main

    d, model = ml_cli["dir"], ml_cli["model"]
    rows = (d / "d" / "labels.csv").read_text().splitlines()
    assert rows[0] == "path,labels,split" and len(rows) == 33 and (d / "d" / "labels.jsonl").is_file()
    assert "mAP" in ml_cli["train_output"] and "thresholds" in ml_cli["train_output"]
    report = json.loads((d / "h" / "report" / "report.json").read_text())
    assert report["multi_label"] and report["metrics"]["test"]["mAP"] is not None
    assert report["metrics"]["zeroshot_test"]["mAP"] is not None
    r = CliRunner().invoke(main, ["predict", "--head", str(d / "h"), str(d / "d" / "images" / "test"),
                                  "--format", "json", "--engine", "torch", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output[r.output.index("{"):])
    head = json.loads((d / "h" / "head.json").read_text())
    for res in doc["results"]:
        assert res["labels"] == [c for c, t in zip(head["classes"], head["thresholds"]) if res["scores"][c] >= t]
    r = CliRunner().invoke(main, ["predict", "--head", str(d / "h"), str(d / "d" / "images" / "test"),
                                  "--format", "csv", "--engine", "torch", "--device", "cpu"])
    lines = [ln for ln in r.output.splitlines() if ln.startswith(("path", "/"))]
    assert lines[0].startswith("path,label,") and lines[1].split(",")[1] == "|".join(doc["results"][0]["labels"])
    # a single-label rule on multi-label data: one line, exit 2, the fix named
    r = CliRunner().invoke(main, ["train-probe", str(d / "s"), "--out", str(d / "h2"), "--no-track",
                                  "--target-coverage", "0.9", *model])
    assert r.exit_code == 2 and "--target-coverage" in r.output and "drop --target-coverage" in r.output
    r = CliRunner().invoke(main, ["eval-prompts", str(d / "s"), "--no-track", "--reject-below", "0.5", *model])
    assert r.exit_code == 2 and "drop --reject-below" in r.output and len(r.output.strip().splitlines()) == 1
    # POST /v1/predict on a real server gives the same labels as the CLI, and refuses reject_below
    import httpx

    from toolkit.serve.process import ServerProcess

    first = sorted((d / "d" / "images" / "test").iterdir())[0]
    with ServerProcess(["--head", str(d / "h"), "--device", "cpu", "--no-access-log"]) as srv:
        files = {"files": (first.name, first.read_bytes(), "image/png")}
        got = httpx.post(srv.url + "/v1/predict", files=files, timeout=60).json()
        cli = next(r for r in doc["results"] if r["path"].endswith(first.name))
        assert got["results"][0]["labels"] == cli["labels"]
        bad = httpx.post(srv.url + "/v1/predict", files=files, data={"reject_below": "0.5"}, timeout=60)
        assert bad.status_code == 422 and "multi-label" in bad.json()["error"]["message"]


@pytest.mark.slow
def test_multilabel_eval_prompts_and_evaluate_are_logged_and_agree(ml_cli):
    import mlflow

    from toolkit.cli import main

    d, cfg = ml_cli["dir"], ml_cli["config"]
    r = CliRunner().invoke(main, ["eval-prompts", str(d / "s"), "--config", cfg, "--templates", "none",
                                  "--templates", "people", "--negatives", str(d / "neg.txt"), "--format", "json",
                                  "--save-head", str(d / "zs")])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["multi_label"] and {x["prompt_set"] for x in doc["results"]} == {"none", "people"}
    kept = r.stderr.split("of prompt set '")[1].split("'")[0]  # --save-head keeps the best on val
    mlflow.set_tracking_uri(ml_cli["uri"])
    runs = {x.data.tags["mlflow.runName"]: x for x in mlflow.search_runs(search_all_experiments=True,
                                                                         output_format="list")}
    for res in doc["results"]:
        m = runs[f"prompt:{res['prompt_set']}"].data.metrics
        assert m["map"] == pytest.approx(res["metrics"]["mAP"]) and "threshold/outdoors" in m
    saved = json.loads((d / "zs" / "head.json").read_text())  # the file's negatives, '*' for the rest
    assert saved["type"] == "multilabel-zeroshot"
    assert dict(zip(saved["classes"], saved["negatives"]))["a ball on the floor"] == "an empty floor"
    assert saved["negatives"].count("a person") == len(saved["classes"]) - 1
    # evaluate re-scores the saved heads on the same test split: the numbers train-probe and eval-prompts gave
    r = CliRunner().invoke(main, ["evaluate", str(d / "s"), "--head", str(d / "h"), "--format", "json",
                                  "--device", "cpu", "--out", str(d / "ev")])
    assert r.exit_code == 0, r.output
    ev = json.loads(r.stdout)
    report = json.loads((d / "h" / "report" / "report.json").read_text())
    assert ev["mAP"] == pytest.approx(report["metrics"]["test"]["mAP"])
    assert ev["macro_f1"] == pytest.approx(report["metrics"]["test"]["macro_f1"])
    assert (d / "ev" / "predictions.csv").read_text().splitlines()[0].startswith("path,labels,predicted,")
    r = CliRunner().invoke(main, ["evaluate", str(d / "s"), "--head", str(d / "zs"), "--format", "json",
                                  "--device", "cpu"])
    assert r.exit_code == 0, r.output
    kept_map = next(x["metrics"]["mAP"] for x in doc["results"] if x["prompt_set"] == kept)
    assert json.loads(r.stdout)["mAP"] == pytest.approx(kept_map)
    # a multi-label head on single-label data, and a single-label option on multi-label data: one line each
    images = sorted((d / "d" / "images" / "test").iterdir())[:6]
    (d / "single.csv").write_text("path,label,split\n" + "".join(
        f"{p},{('cat', 'dog')[i % 2]},{('train', 'val', 'test')[i // 2]}\n" for i, p in enumerate(images)))
    r = CliRunner().invoke(main, ["evaluate", str(d / "single.csv"), "--head", str(d / "h"), "--device", "cpu"])
    assert r.exit_code == 2 and "the head is multi-label" in r.output and len(r.output.strip().splitlines()) == 1
    r = CliRunner().invoke(main, ["evaluate", str(d / "s"), "--head", str(d / "h"), "--reject-below", "0.5"])
    assert r.exit_code == 2 and "drop --reject-below" in r.output


@pytest.mark.slow
def test_pyfunc_model_of_a_multilabel_head_gives_every_label_on(ml_cli, tiny_extractor):
    import mlflow
    import pandas as pd

    from toolkit.heads.base import load_head
    from toolkit.predictor import Predictor

    d = ml_cli["dir"]
    mlflow.set_tracking_uri(ml_cli["uri"])
    model = mlflow.pyfunc.load_model("models:/ml-head/1")
    paths = [str(p) for p in sorted((d / "d" / "images" / "test").iterdir())[:4]]
    out = model.predict(pd.DataFrame({"image": paths}))
    head = load_head(d / "h")
    assert list(out.columns) == ["label", "labels", "score", "rejected", "reason", *head.classes_]
    local = Predictor(tiny_extractor, head).predict_paths(paths)
    assert [list(x) for x in out["labels"]] == [r["labels"] for r in local]
    assert np.allclose(out[head.classes_].to_numpy(), [[r["scores"][c] for c in head.classes_] for r in local],
                       atol=1e-5)
    assert not np.allclose(out[head.classes_].sum(axis=1), 1.0)  # independent probabilities, not a softmax


def test_video_label_segments_join_short_gaps_and_drop_flickers():
    from toolkit.video.multilabel import label_segments

    times = np.arange(10) * 0.5  # 2 fps
    sm = np.zeros((10, 2))
    sm[[1, 2, 4, 5, 6], 0] = 0.9  # on, a one-frame gap (0.5 s), on again
    sm[8, 1] = 0.9  # a single-frame flicker
    seg = label_segments(sm, times, ["mat", "ball"], [0.5, 0.5], min_segment_s=1.0, end_s=5.0)
    assert seg["mat"] == [{"start_s": 0.5, "end_s": 3.5, "mean_score": pytest.approx(0.9 * 5 / 6, abs=1e-6)}]
    assert seg["ball"] == []
    assert label_segments(sm, times, ["mat", "ball"], [0.5, 0.5])["ball"] == [
        {"start_s": 4.0, "end_s": 4.5, "mean_score": 0.9}]


def test_video_reps_count_each_labels_own_cycles_around_its_threshold():
    from toolkit.video.multilabel import label_reps, label_segments

    t = np.arange(60) * 0.1
    squat = 0.3 + 0.25 * np.sin(2 * np.pi * t / 1.5 - np.pi / 2)  # 4 cycles about 0.3, its threshold
    cap = 0.55 + 0.05 * np.sin(2 * np.pi * t / 0.4)  # always on, wobbling inside the band: no reps
    probs = np.stack([squat, cap], axis=1)
    classes, th = ["a person repeating a squat", "a person wearing a cap"], [0.3, 0.5]
    reps = label_reps(probs, classes, th, ["a person repeating a squat", "a person wearing a cap", "unknown"],
                      rep_window=1)
    assert len(reps["a person repeating a squat"]) == 4 and reps["a person wearing a cap"] == []
    assert "unknown" not in reps
    # with one global 0.5 band the squat (never above 0.55) would count nothing: its own threshold matters
    assert label_reps(probs, classes, [0.5, 0.5], classes, rep_window=1)["a person repeating a squat"] == []
    segs = label_segments(probs, t, classes, th, reps=reps)
    assert sum(s["reps"] for s in segs["a person repeating a squat"]) == 4
    assert segs["a person wearing a cap"] == [{"start_s": 0.0, "end_s": 5.9, "mean_score": pytest.approx(
        cap.mean(), abs=1e-6), "reps": 0}]
