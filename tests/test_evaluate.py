"""`clipkit evaluate` and its library (toolkit/evaluation/evaluate.py, gallery.py), the threshold rule that never
sits on the last val score, and the one rerun rule (--overwrite) of commands that write an output."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from toolkit.cli import main
from toolkit.evaluation import evaluate as ev
from toolkit.heads import calibration as cal


# ---------------------------------------------------------------- intervals

def test_wilson_interval_matches_known_values_and_stays_in_range():
    lo, hi = ev.wilson(60, 60)  # all right: not a zero-width interval at 100%
    assert hi == 1.0 and lo == pytest.approx(0.9398, abs=1e-3)
    lo, hi = ev.wilson(50, 100)
    assert (lo, hi) == pytest.approx((0.4038, 0.5962), abs=1e-3)  # the textbook value
    assert ev.wilson(0, 0) == (None, None) and ev.wilson(0, 10)[0] == 0.0


def test_metrics_equal_scikit_learn_and_bootstrap_intervals_hold_them():
    from sklearn.metrics import balanced_accuracy_score, f1_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    proba = rng.random((300, 3)) + 0.5 * np.eye(3)[y]  # about 80% right
    classes = ["a", "b", "c"]
    r = ev.evaluate_predictions([classes[i] for i in y], proba, classes)
    pred = proba.argmax(1)
    assert r["accuracy"]["value"] == pytest.approx((pred == y).mean())
    assert r["balanced_accuracy"]["value"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert r["macro_f1"]["value"] == pytest.approx(f1_score(y, pred, average="macro"))
    for k in ("accuracy", "balanced_accuracy", "macro_f1"):
        assert r[k]["low"] < r[k]["value"] < r[k]["high"]
        assert r[k]["high"] - r[k]["low"] < 0.15  # 300 images: a few points either side
    assert sum(m["support"] for m in r["per_class"].values()) == 300 and r["warnings"] == []


def test_a_small_split_and_small_classes_are_warned_about():
    r = ev.evaluate_predictions(["a"] * 40 + ["b"] * 5, np.eye(2)[[0] * 40 + [1] * 5], ["a", "b"], split="val")
    assert any("val split has only 45 images" in w for w in r["warnings"])
    assert any("fewer than 10 val images ('b' 5)" in w for w in r["warnings"])


def test_mistakes_are_listed_most_confident_first_with_rejections_last():
    proba = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.55, 0.45]])
    rows = ev.mistakes(["p0", "p1", "p2", "p3"], ["b", "a", "b", "a"], proba, ["a", "b"], reject_below=0.6)
    assert [r["path"] for r in rows] == ["p0", "p1", "p3"]  # p3 is right but rejected: listed last
    assert rows[0]["predicted"] == "a" and rows[0]["true_score"] == pytest.approx(0.1) and rows[2]["rejected"]


# ---------------------------------------------------------------- the threshold rule

def test_a_target_every_val_image_reaches_rejects_nothing_instead_of_the_last_val_score():
    conf = np.array([0.9995, 0.9990, 0.9985, 0.998])  # a perfect val split (the demo data): all right
    t = cal.choose_threshold(conf, np.ones(4, bool), target_precision=0.95)
    assert t.threshold == 0.0 and t.reached and t.val_coverage == 1.0  # was 0.998: rejected real video frames
    assert "nothing is rejected" in t.note and "target_coverage" in t.note
    assert cal.calibrate(np.log(np.array([[0.999, 0.001], [0.001, 0.999]])), np.array([0, 1]),
                         target_precision=0.95)["reject_below"] is None


def test_a_reached_target_keeps_a_margin_below_the_last_kept_val_score():
    conf = np.array([0.95, 0.9, 0.8, 0.7])
    t = cal.choose_threshold(conf, np.array([True, True, True, False]), target_precision=0.9)
    assert t.threshold == pytest.approx(0.75) and t.val_coverage == 0.75  # halfway between 0.8 and 0.7
    assert t.warning == "" and t.tradeoff == []


def test_a_target_that_costs_most_coverage_warns_with_the_tradeoff_table():
    rng = np.random.default_rng(1)
    conf = np.sort(rng.uniform(0.3, 1.0, 200))[::-1]
    correct = rng.random(200) < np.linspace(0.99, 0.3, 200)  # precision falls fast below the top few
    t = cal.choose_threshold(conf, correct, target_precision=0.99)
    assert t.val_coverage < cal.COSTLY_COVERAGE and "keeps only" in t.warning and "target_coverage" in t.warning
    coverages = [row["coverage"] for row in t.tradeoff]
    assert coverages[0] == 1.0 and coverages == sorted(coverages, reverse=True)
    lines = cal.tradeoff_lines(t.to_dict())
    assert lines[0].startswith("warning: target precision 0.99 keeps only") and len(lines) == 2 + len(t.tradeoff)


# ---------------------------------------------------------------- the command

@pytest.fixture()
def labelled_dir(tmp_path):
    """DATA/<label>/*.png: two classes of six distinct random images each (the tiny model gets some wrong)."""
    rng = np.random.default_rng(3)
    for label, tint in (("red thing", 0), ("blue thing", 2)):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(6):
            arr = (rng.random((36, 36, 3)) * 120).astype("uint8")
            arr[..., tint] += 120
            Image.fromarray(arr).save(tmp_path / "data" / label / f"{i}.png")
    return tmp_path / "data"


def _evaluate(tiny_model, *args):
    extra = ["--model", tiny_model["config"], "--pretrained", tiny_model["checkpoint"], "--device", "cpu",
             "--precision", "fp32", "--templates", "none"]
    return CliRunner().invoke(main, ["evaluate", *map(str, args), *extra], catch_exceptions=False)


def test_evaluate_writes_metrics_a_gallery_and_refuses_to_overwrite(tiny_model, labelled_dir, tmp_path):
    out = tmp_path / "eval"
    r = _evaluate(tiny_model, labelled_dir, "--split", "all", "--out", out)
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "evaluation.json").read_text())
    assert doc["n"] == 12 and doc["split"] == "all" and set(doc["classes"]) == {"red thing", "blue thing"}
    assert "accuracy" in r.stdout and "[" in r.stdout  # the value with its interval
    assert "all split has only 12 images" in r.stderr
    n_wrong = sum(row == "false" for row in (line.rsplit(",", 1)[1] for line in
                                             (out / "predictions.csv").read_text().splitlines()[1:]))
    page = (out / "errors.html").read_text()
    assert page.count('class="card"') == n_wrong and f"{n_wrong} mistakes" in page
    assert len(list((out / "thumbs").glob("*.png"))) == n_wrong and (out / "confusion_matrix.png").stat().st_size
    again = _evaluate(tiny_model, labelled_dir, "--split", "all", "--out", out)
    assert again.exit_code == 2 and "--overwrite" in again.stderr and "not empty" in again.stderr
    assert _evaluate(tiny_model, labelled_dir, "--split", "all", "--out", out, "--overwrite").exit_code == 0


def test_evaluate_names_a_missing_split_and_a_class_the_head_lacks(tiny_model, tiny_extractor, labelled_dir, tmp_path):
    from toolkit.heads.zeroshot import ZeroShotHead

    r = _evaluate(tiny_model, labelled_dir / "red thing")  # images, but no class folders
    assert r.exit_code == 2 and "no class folders" in r.stderr
    head = ZeroShotHead.from_extractor(tiny_extractor, ["red thing", "green thing"], ["{}"])
    folder = head.save(tmp_path / "head")
    r = _evaluate(tiny_model, labelled_dir, "--split", "all", "--head", folder)
    assert r.exit_code == 2 and "'blue thing'" in r.stderr and "green thing" in r.stderr


def test_demo_video_and_export_refuse_an_existing_output(tmp_path):
    target = tmp_path / "v.mp4"
    target.write_bytes(b"keep me")
    r = CliRunner().invoke(main, ["demo-video", str(target), "--schedule", "standing:0.3"])
    assert r.exit_code == 2 and "already exists" in r.stderr and "--overwrite" in r.stderr
    assert target.read_bytes() == b"keep me"
    r = CliRunner().invoke(main, ["demo-video", str(target), "--schedule", "standing:0.3", "--size", "32",
                                  "--overwrite"])
    assert r.exit_code == 0, r.output and target.stat().st_size > 7


# ---------------------------------------------------------------- pictures

def test_thirteen_classes_get_thirteen_colours_and_a_class_keeps_its_colour():
    from toolkit.demo import LABELS
    from toolkit.evaluation.plots import class_colors

    labels = list(LABELS.values())  # 15: the novel suite's 13 and the two other activities
    colors = class_colors(labels)
    assert len(set(colors.values())) == len(labels) and "#7f7f7f" not in colors.values()  # grey means rejected
    assert class_colors(list(reversed(labels))) == colors  # not by position: the same in every plot
    assert len(set(class_colors([f"class {i}" for i in range(40)]).values())) == 40


def test_the_annotated_frame_shows_its_own_label_and_score():
    from toolkit.video.overlay import _own_label

    frame = {"label": "a person repeating a squat", "score": 0.0,  # inside a squat segment, but saw standing
             "smoothed": {"a person repeating a squat": 0.0, "a person standing": 0.93}}
    assert _own_label(frame) == ("a person standing", 0.93)
    assert _own_label({"label": None, "score": 0.41, "smoothed": {"a": 0.41}}) == (None, 0.41)


# ---------------------------------------------------------------- clipkit stores

def test_stores_lists_the_cached_stores_and_cleans_them(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert "no feature stores in" in CliRunner().invoke(main, ["stores"]).stdout
    store = tmp_path / "clipkit" / "stores" / "demo-0123456789ab"
    store.mkdir(parents=True)
    (store / "features.npy").write_bytes(b"\0" * 4096)
    (store / "meta.json").write_text(json.dumps({"count": 16, "dataset_root": "/data/demo",
                                                 "identity": {"model": "/m/clipkit-demo.json", "pretrained": "w"}}))
    (tmp_path / "clipkit" / "stores" / "half-done").mkdir()  # an interrupted extraction: listed as unfinished
    r = CliRunner().invoke(main, ["stores"])
    assert r.exit_code == 0 and "2 stores" in r.stdout and "16 images" in r.stdout and "unfinished" in r.stdout
    assert "clipkit-demo.json / w" in r.stdout and "/data/demo" in r.stdout
    doc = json.loads(CliRunner().invoke(main, ["stores", "--format", "json"]).stdout)
    assert {s["images"] for s in doc["stores"]} == {16, None} and max(s["bytes"] for s in doc["stores"]) >= 4096
    kept = CliRunner().invoke(main, ["stores", "--clean", "--older-than", "1"])
    assert "deleted 0 stores" in kept.stdout and store.is_dir()  # both were written just now
    gone = CliRunner().invoke(main, ["stores", "--clean"])
    assert "deleted 2 stores" in gone.stdout and not store.exists()
