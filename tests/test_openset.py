"""Out-of-set ("unfamiliar") detection, issue 22: the scores on synthetic features with planted unknowns, the
held-out-class selection, the detector saved with a head, and the rejection reason through the Predictor, the
CLI (train-probe --keep-known, predict) and a real `clipkit serve` process."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from toolkit.errors import ConfigError, HeadError
from toolkit.fitting.openset import Candidate, auroc, build_detector, fit_openset, k_cap, pick, with_cap
from toolkit.heads.base import load_head
from toolkit.heads.linear import LinearProbe
from toolkit.heads.openset import (DETECTORS, OpenSetDetector, class_gaussian, energy_score, knn_similarity,
                                   mahalanobis_score, max_logit, max_softmax, mcm_score, neglabel_score,
                                   relative_mahalanobis_score, with_detector, with_zeroshot_default, zeroshot_default)
from toolkit.predictor import Predictor, result_row

DIM, N_KNOWN = 16, 4


def cloud(rng, axis: int, n: int, noise: float = 0.2) -> np.ndarray:
    """n unit vectors around basis vector `axis` (a class), float32."""
    x = np.eye(DIM)[axis] + noise * rng.normal(size=(n, DIM)) / np.sqrt(DIM) * 4
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def planted():
    """Known classes on axes 0..3 (train, val, test); unknowns planted on axes 8 and 9; 'text' = the class axes,
    negative words on axes 10..15; a linear head whose logits are 5 x cosine to the class axes."""
    rng = np.random.default_rng(0)
    split = {s: (np.concatenate([cloud(rng, c, n) for c in range(N_KNOWN)]), np.repeat(np.arange(N_KNOWN), n))
             for s, n in (("train", 30), ("val", 15), ("test", 15))}
    unknown = np.concatenate([cloud(rng, 8, 30), cloud(rng, 9, 30)])
    text = np.eye(DIM, dtype=np.float32)[:N_KNOWN]
    negatives = np.eye(DIM, dtype=np.float32)[10:]
    head = LinearProbe([f"class {c}" for c in range(N_KNOWN)], 5 * text)
    return split, unknown, text, negatives, head


def test_every_score_separates_planted_unknowns(planted):
    split, unknown, text, negatives, head = planted
    (X_tr, y_tr), (X_te, _) = split["train"], split["test"]
    means, precision = class_gaussian(X_tr, y_tr, N_KNOWN)
    lk, lu = head.decision_function(X_te), head.decision_function(unknown)
    scores = {
        "knn": (knn_similarity(X_te, X_tr, 5), knn_similarity(unknown, X_tr, 5)),
        "mahalanobis": (mahalanobis_score(X_te, means, precision), mahalanobis_score(unknown, means, precision)),
        "energy": (energy_score(lk), energy_score(lu)), "maxlogit": (max_logit(lk), max_logit(lu)),
        "msp": (max_softmax(lk), max_softmax(lu)),
        "mcm": (mcm_score(X_te, text, 0.1), mcm_score(unknown, text, 0.1)),
        "neglabel": (neglabel_score(X_te, text, negatives, 0.1), neglabel_score(unknown, text, negatives, 0.1)),
    }
    bg = class_gaussian(X_tr, np.zeros(len(X_tr), np.int64), 1)  # one Gaussian of every training feature
    scores["relmahalanobis"] = tuple(relative_mahalanobis_score(X, means, precision, *bg) for X in (X_te, unknown))
    combined = build_detector(Candidate("combined", {"k": 5}), X_tr, y_tr, N_KNOWN, None, None, split["val"][0])
    scores["combined"] = (combined.score(X_te), combined.score(unknown))
    rel = build_detector(Candidate("combined_rel", {"k": 5}), X_tr, y_tr, N_KNOWN, None, None, split["val"][0])
    scores["combined_rel"] = (rel.score(X_te), rel.score(unknown))
    assert set(scores) == set(DETECTORS) and set(rel.arrays_) == {"bank", "means", "precision", "bg_mean",
                                                                   "bg_precision"}
    # relative Mahalanobis: the class distance minus the background's, so it is not the plain score
    np.testing.assert_allclose(scores["relmahalanobis"][1], scores["mahalanobis"][1]
                               - mahalanobis_score(unknown, *bg), rtol=1e-4, atol=1e-3)
    # its parts are z-normalised on the known val images it was given: the sum has mean 0 there, and it is the
    # sum of the two parts' z-scores everywhere
    assert abs(combined.score(split["val"][0]).mean()) < 1e-4
    loc, scale = combined.params["loc"], combined.params["scale"]
    np.testing.assert_allclose(combined.score(unknown), (scores["knn"][1] - loc[0]) / scale[0]
                               + (scores["mahalanobis"][1] - loc[1]) / scale[1], rtol=1e-4, atol=1e-4)
    for kind, (known, unk) in scores.items():
        assert auroc(known, unk) > 0.95, kind  # higher = more familiar, for every score
    # unknowns drawn like a known class can't be told apart: chance, not a detector artefact
    rng = np.random.default_rng(5)
    assert 0.3 < auroc(knn_similarity(X_te, X_tr, 5), knn_similarity(cloud(rng, 0, 60), X_tr, 5)) < 0.8


def test_auroc_counts_ties_half_as_mann_whitney():
    rng = np.random.default_rng(1)
    a, b = np.round(rng.normal(1, 1, 40), 1), np.round(rng.normal(0, 1, 50), 1)  # many ties
    brute = np.mean([(x > y) + 0.5 * (x == y) for x in a for y in b])
    assert auroc(a, b) == pytest.approx(brute)
    assert auroc([1, 1], [1, 1]) == 0.5 and auroc([2, 3], [0, 1]) == 1.0


def test_pick_caps_k_and_takes_the_smoothest_within_one_standard_error():
    assert k_cap(np.repeat([0, 1, 2], [20, 16, 30])) == 16  # the smallest class: its k-th neighbour stays in it
    assert k_cap(np.repeat([0, 1], [3000, 3000]), max_bank=1000) == 500  # a subsampled bank keeps 500 a class
    assert with_cap((1, 5, 10, 20), 16) == (1, 5, 10, 16, 20) and with_cap((1, 5), 16) == (1, 5)
    per = lambda *a: {"per_class": dict(zip("abc", a))}  # noqa: E731
    table = {"knn(k=10)": {"auroc": 0.80, **per(0.7, 0.9, 0.8)},  # the best: standard error 0.1 / sqrt(3) = 0.058
             "knn(k=20)": {"auroc": 0.78, **per(0.7, 0.8, 0.84)},
             "combined(k=20)": {"auroc": 0.76, **per(0.7, 0.8, 0.78)},
             "combined_rel(k=20)": {"auroc": 0.70, **per(0.6, 0.7, 0.8)},  # outside the band
             "combined(k=50)": {"auroc": 0.79, **per(0.7, 0.9, 0.77)}}  # within it, but k above the cap
    pool = [Candidate(n.split("(")[0], {"k": int(n[n.index("=") + 1:-1])}) for n in table]
    chosen, how = pick(pool, table, cap=30)
    # the largest k in the band, the sum before kNN alone at equal k, though kNN's held-out AUROC is higher
    assert chosen.name == "combined(k=20)" and how["best_heldout"] == "knn(k=10)"
    assert how["heldout_se"] == pytest.approx(0.1 / np.sqrt(3)) and how["k_cap"] == 30
    assert set(how["within_se"]) == {"knn(k=10)", "knn(k=20)", "combined(k=20)"}
    assert pick(pool, table, cap=60)[0].name == "combined(k=50)"  # allowed once the classes are larger


def test_heldout_class_selection_chooses_a_knn_setting_and_keeps_the_known_share(planted):
    split, unknown, text, negatives, head = planted
    fit = fit_openset(*split["train"], *split["val"], head.classes_, head.decision_function, text, negatives,
                      keep_known=0.9)
    rep = fit.report()
    # every kind was scored held out; the pick comes from the kNN settings and its sums (the default), by `pick`
    assert {name.split("(")[0] for name in rep["candidates"]} == set(DETECTORS)
    sel = rep["selection"]
    assert rep["detector"] in ("knn", "combined", "combined_rel") and rep["chosen"] in sel["within_se"]
    assert sel["chosen_from"] == ["combined", "combined_rel", "knn"] and sel["k_cap"] == 30  # 30 a class
    assert rep["candidates"][rep["chosen"]] >= rep["candidates"][sel["best_heldout"]] - sel["heldout_se"] - 1e-12
    assert fit.detector.params["k"] == max(int(n.split("=")[1][:-1]) for n in sel["within_se"]) <= 30
    assert rep["heldout_auroc"] > 0.9 and set(fit.candidates[fit.chosen]["per_class"]) == set(head.classes_)
    det = fit.detector
    kept = 1 - det.unfamiliar(split["val"][0]).mean()
    assert 0.9 <= kept < 0.97 and rep["selection"]["val_known_kept"] == pytest.approx(kept)
    assert det.unfamiliar(unknown).mean() > 0.9 and det.unfamiliar(split["test"][0]).mean() < 0.2
    # a target precision on the pooled held-out folds instead
    strict = fit_openset(*split["train"], *split["val"], head.classes_, target_precision=0.99)
    assert strict.detector.selection_["rule"] == "target_precision" and strict.detector.threshold_ is not None
    assert strict.detector.unfamiliar(unknown).mean() > 0.9


@pytest.mark.parametrize("kwargs, fragment", [({"keep_known": 0.9, "target_precision": 0.9}, "exactly one"),
                                              ({"keep_known": 1.5}, "keep_known 1.5"),
                                              ({"keep_known": 0.9, "classes": ["a", "b"]}, "at least 3")])
def test_bad_selection_settings_name_the_field(planted, kwargs, fragment):
    split = planted[0]
    classes = kwargs.pop("classes", planted[4].classes_)
    with pytest.raises(ConfigError, match=fragment):
        fit_openset(*split["train"], *split["val"], classes, **kwargs)


def test_detector_saved_with_the_head_and_old_heads_still_load(planted, tmp_path):
    split, unknown, text, _, head = planted
    det = OpenSetDetector("knn", {"k": 5}, {"bank": split["train"][0]}, threshold=0.8, selection={"rule": "given"})
    with_detector(head, det).save(tmp_path / "new")
    head.save(tmp_path / "old")  # no detector: as every head saved before issue 22
    loaded = load_head(tmp_path / "new")
    assert loaded.openset_.kind == "knn" and loaded.openset_.threshold_ == 0.8 and loaded.openset_.params == {"k": 5}
    np.testing.assert_allclose(loaded.openset_.score(unknown), det.score(unknown), rtol=1e-6)
    assert json.loads((tmp_path / "new" / "head.json").read_text())["openset"]["arrays"] == {"bank": [120, DIM]}
    assert loaded.describe()["openset"]["kind"] == "knn"
    assert load_head(tmp_path / "old").openset_ is None and head.openset_ is None  # the original is unchanged
    comb = build_detector(Candidate("combined", {"k": 5}), *split["train"], N_KNOWN, None, None, split["val"][0])
    with_detector(head, comb.with_threshold(0.0)).save(tmp_path / "combined")  # params loc, scale round-trip
    back = load_head(tmp_path / "combined").openset_
    assert back.kind == "combined" and back.params == comb.params and back.threshold_ == 0.0
    np.testing.assert_allclose(back.score(unknown), comb.score(unknown), rtol=1e-5)
    doc = json.loads((tmp_path / "new" / "head.json").read_text())
    doc["openset"]["arrays"]["bank"] = [7, DIM]  # head.json and the tensor disagree: refused, in one line
    (tmp_path / "new" / "head.json").write_text(json.dumps(doc))
    with pytest.raises(HeadError, match="openset.bank"):
        load_head(tmp_path / "new")


def test_result_rows_say_why():
    probs = np.array([0.5, 0.3, 0.2])
    assert result_row(["a", "b", "c"], probs, None)["reason"] is None
    low = result_row(["a", "b", "c"], probs, None, reject_below=0.6)
    far = result_row(["a", "b", "c"], probs, None, reject_below=0.6, unfamiliar=True)
    assert (low["rejected"], low["reason"], low["label"]) == (True, "low_confidence", None)
    assert (far["rejected"], far["reason"], far["label"]) == (True, "unfamiliar", None)  # unfamiliar wins
    assert far["scores"] == low["scores"]


def test_predictor_rejects_unfamiliar_features(tiny_extractor):
    rng = np.random.default_rng(2)
    X = cloud(rng, 0, 8) @ np.eye(DIM, 32, dtype=np.float32)  # into the tiny model's 32-d space
    bank = X[:4]
    head = LinearProbe(["a", "b", "c"], np.eye(3, 32, dtype=np.float32) * 5)
    det = OpenSetDetector("knn", {"k": 1}, {"bank": bank}, threshold=0.5)
    pred = Predictor(tiny_extractor, with_detector(head, det))
    far = np.eye(32, dtype=np.float32)[20:22]  # orthogonal to the bank
    rows = pred.predict_features(np.concatenate([X[4:6], far]))
    assert [r["reason"] for r in rows] == [None, None, "unfamiliar", "unfamiliar"]
    assert [r["label"] is None for r in rows] == [False, False, True, True]


def test_zeroshot_default_mcm_threshold_from_text(tiny_extractor, tmp_path):
    from toolkit.heads.openset import negative_embeddings
    from toolkit.heads.zeroshot import ZeroShotHead

    zs = ZeroShotHead.from_extractor(tiny_extractor, ["a red thing", "a blue thing", "a green thing"], ["{}"])
    neg = negative_embeddings(tiny_extractor, tmp_path)  # encoded once, cached on disk under the model's key
    cached = list(tmp_path.glob("negatives-*.npy"))
    assert len(cached) == 1 and np.array_equal(np.load(cached[0]), neg)
    np.testing.assert_array_equal(negative_embeddings(tiny_extractor, tmp_path), neg)
    head = with_zeroshot_default(zs, tiny_extractor)
    det = head.openset_
    assert det.kind == "mcm" and det.selection_["rule"] == "zeroshot_default"
    assert det.threshold_ == pytest.approx(np.quantile(mcm_score(neg, zs.coef_, 1.0), 0.5))
    assert zeroshot_default(zs.coef_).threshold_ is None  # no negatives: scores only
    assert with_zeroshot_default(head, tiny_extractor) is head  # a head with a detector keeps its own


def test_saved_zeroshot_head_gets_the_default_detector_and_says_so(tiny_extractor, tmp_path):
    from toolkit.config import Config
    from toolkit.heads.zeroshot import ZeroShotHead
    from toolkit.predictor import build_predictor, image_document

    ZeroShotHead.from_extractor(tiny_extractor, ["a red thing", "a blue thing"], ["{}"]).save(tmp_path / "zs")
    cfg = Config()
    pred = build_predictor(cfg, head=str(tmp_path / "zs"), extractor=tiny_extractor, cache_dir=tmp_path / "neg")
    assert pred.head.openset_.kind == "mcm" and pred.head.openset_.threshold_ is not None
    assert len(list((tmp_path / "neg").glob("negatives-*.npy"))) == 1  # the words, cached on disk for next time
    doc = image_document(pred, [])
    assert doc["unfamiliar"] == {"detector": "mcm", "threshold": pred.head.openset_.threshold_,
                                 "rule": "zeroshot_default"}
    # request-time labels on the served head get it too; prompts.unfamiliar off: none, and the document says so
    assert pred.head_for(["a green thing", "a grey thing"]).openset_.selection_["rule"] == "zeroshot_default"
    off = cfg.model_copy(update={"prompts": cfg.prompts.model_copy(update={"unfamiliar": "off"})})
    plain = build_predictor(off, head=str(tmp_path / "zs"), extractor=tiny_extractor)
    assert plain.head.openset_ is None and image_document(plain, [])["unfamiliar"] is None


# ---------------------------------------------------------------- CLI and a real server

def _model_args(model: dict) -> list[str]:
    return ["--model", model["config"], "--pretrained", model["checkpoint"], "--device", "cpu"]


@pytest.fixture(scope="module")
def keep_known_head(tiny_model, tmp_path_factory):
    """`clipkit train-probe --keep-known 0.9` on four colour classes of 10 images (tiny model)."""
    from PIL import Image

    from toolkit.cli import main

    tmp = tmp_path_factory.mktemp("openset")
    rng = np.random.default_rng(0)
    for c, rgb in {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "grey": (128, 128, 128)
                   }.items():
        (tmp / "data" / c).mkdir(parents=True)
        for i in range(10):
            arr = np.clip(np.array(rgb) + rng.normal(0, 40, (24, 24, 3)), 0, 255).astype("uint8")
            Image.fromarray(arr).save(tmp / "data" / c / f"{i}.png")
    r = CliRunner().invoke(main, ["train-probe", str(tmp / "data"), "--out", str(tmp / "head"), "--store",
                                  str(tmp / "store"), "--no-track", "--templates", "none", "--keep-known", "0.9",
                                  *_model_args(tiny_model)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return tmp, r.output


@pytest.mark.slow  # trains a head through the CLI (the fixture, shared with the server test)
def test_train_probe_keep_known_saves_and_reports_the_detector(keep_known_head):
    tmp, output = keep_known_head
    doc = json.loads((tmp / "head" / "head.json").read_text())["openset"]
    assert doc["kind"] in ("knn", "combined", "combined_rel") and doc["selection"]["rule"] == "keep_known"
    assert doc["selection"]["pick_rule"] == "one standard error, smoothest" and doc["params"]["k"] <= \
        doc["selection"]["k_cap"]
    assert doc["selection"]["target"] == 0.9
    report = json.loads((tmp / "head" / "report" / "report.json").read_text())["metrics"]["calibration"]["openset"]
    # the zero-shot baseline's texts and the negative words make MCM and NegLabel candidates too
    assert {n.split("(")[0] for n in report["candidates"]} >= {"knn", "combined", "mcm", "neglabel"}
    assert report["threshold"] == doc["threshold"] and 0 <= report["heldout_auroc"] <= 1
    assert report["selection"]["val_known_kept"] >= 0.9 - 1e-9
    line = next(x for x in output.splitlines() if x.startswith("unfamiliar"))
    assert report["chosen"] in line and "held-out-class AUROC" in line
    head = load_head(tmp / "head")
    assert head.metrics["openset_heldout_auroc"] == pytest.approx(report["heldout_auroc"])


def _strict_copy(tmp, name: str):
    """The trained head with a threshold no image passes (cosine similarity is at most 1): all unfamiliar."""
    head = load_head(tmp / "head")
    with_detector(head, head.openset_.with_threshold(2.0)).save(tmp / name)
    return tmp / name


@pytest.mark.slow
def test_reason_through_the_cli_and_a_real_server(keep_known_head, tiny_model, image_dir):
    import csv
    import io

    import httpx

    from toolkit.cli import main
    from toolkit.serve.process import ServerProcess

    tmp, _ = keep_known_head
    strict = _strict_copy(tmp, "strict")
    r = CliRunner().invoke(main, ["predict", str(image_dir), "--head", str(strict), "--format", "csv",
                                  *_model_args(tiny_model)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert len(rows) == 6 and {(x["rejected"], x["reason"], x["label"]) for x in rows} == {("true", "unfamiliar", "")}
    r = CliRunner().invoke(main, ["predict", str(image_dir), "--head", str(strict), *_model_args(tiny_model)],
                           catch_exceptions=False)
    assert r.stdout.count("none of these (unfamiliar)") == 6
    server = ServerProcess(["--head", str(strict), *_model_args(tiny_model), "--no-access-log"])
    try:
        server.start().wait_ready()
        files = [("files", (p.name, p.read_bytes())) for p in sorted(image_dir.rglob("*.png"))]
        doc = httpx.post(f"{server.url}/v1/predict", files=files, timeout=60).json()
        assert [(x["rejected"], x["reason"], x["label"]) for x in doc["results"]] == [(True, "unfamiliar", None)] * 3
        assert doc["unfamiliar"]["threshold"] == 2.0 and doc["unfamiliar"]["rule"] == "keep_known"
        info = httpx.get(f"{server.url}/v1/info", timeout=30).json()
        assert info["head"]["openset"]["threshold"] == 2.0
    finally:
        server.terminate()


def test_video_analysis_rejects_an_unfamiliar_stretch_and_says_so():
    from toolkit.video.reps import analyze

    n = 30
    probs = np.tile([0.9, 0.1], (n, 1))
    times = np.arange(n) / 10.0
    far = np.zeros(n, bool)
    far[10:20] = True
    far[25] = True  # one stray frame: outvoted by its window
    res = analyze(probs, times, ["a", "b"], window=3, unfamiliar=far)
    assert [(s["label"], s["frames"]) for s in res["segments"]] == [("a", 10), (None, 10), ("a", 10)]
    assert res["unfamiliar"][10:20].all() and not res["unfamiliar"][25]
    assert [s["label"] for s in analyze(probs, times, ["a", "b"], window=3)["segments"]] == ["a"]
