"""LinearProbe: scikit-learn parity, the C sweep, the Lightning head, zero-shot init, save/load, reports."""
from __future__ import annotations

import json

import numpy as np
import pytest

from toolkit.config import ProbeConfig
from toolkit.errors import ConfigError, HeadError
from toolkit.evaluation.metrics import evaluate
from toolkit.fitting.probe import fewshot_indices, train_probe
from toolkit.heads.linear import LinearProbe
from toolkit.data.store import write_store
from toolkit.heads.zeroshot import ZeroShotHead

IDENTITY = {"model": "synthetic", "pretrained": None, "weights_sha256": None, "embed_dim": 16, "image_size": [8, 8],
            "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic", "resize_mode": "shortest", "extra": {}}


def synthetic(n: int, d: int, n_classes: int, noise: float, seed: int = 0):
    """Unit-norm features: class means on the sphere plus isotropic noise, renormalized. Learnable, not separable."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(n_classes, d))
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    y = rng.integers(0, n_classes, n)
    x = means[y] + noise * rng.normal(size=(n, d)) / np.sqrt(d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y, means.astype(np.float32)


@pytest.fixture(scope="module")
def feats():
    x, y, means = synthetic(4000, 16, 6, noise=1.2)
    splits = np.array(["train"] * 1600 + ["val"] * 400 + ["test"] * 2000)
    return x, y, splits, means


@pytest.fixture()
def store(feats, tmp_path):
    x, y, splits, _ = feats
    return write_store(tmp_path / "store", x, [f"class{i}" for i in y], splits, IDENTITY)


def _plain_sklearn_accuracy(x, y, splits, C):
    from sklearn.linear_model import LogisticRegression

    fit = splits != "test"
    clf = LogisticRegression(C=C, max_iter=1000).fit(x[fit], y[fit])
    return float((clf.predict(x[~fit]) == y[~fit]).mean())


def test_logreg_matches_plain_sklearn_at_the_same_C(feats, store):
    x, y, splits, _ = feats
    result = train_probe(store, ProbeConfig(c_grid=[0.5]))
    assert result.params["C"] == 0.5 and [r["value"] for r in result.sweep] == [0.5]
    plain = _plain_sklearn_accuracy(x, y, splits, 0.5)
    assert abs(result.metrics["test"]["accuracy"] - plain) <= 0.005


def test_c_sweep_refines_around_the_best_and_matches_sklearn(feats, store):
    x, y, splits, _ = feats
    result = train_probe(store, ProbeConfig(c_min=1e-4, c_max=1e4, c_steps=9))
    values = [r["value"] for r in result.sweep]
    decades = {round(float(np.log10(v)), 6) for v in values}
    # the coarse grid (maybe stopped past the peak) + up to 3 rounds x 2 refined candidates
    assert len(values) <= 9 + 6 and any(d != round(d) for d in decades)
    best = max(result.sweep, key=lambda r: r["val_accuracy"])["val_accuracy"]
    chosen = next(r for r in result.sweep if r["value"] == result.params["C"])
    n_val = int((splits == "val").sum())  # the tie rule: within one val image of the best, the lowest val loss
    assert chosen["val_accuracy"] >= best - 1 / n_val - 1e-12 and result.params["refit"] == "train+val"
    plain = _plain_sklearn_accuracy(x, y, splits, result.params["C"])
    assert abs(result.metrics["test"]["accuracy"] - plain) <= 0.005
    assert result.metrics["test"]["accuracy"] > 0.8  # learnable: far above chance (1/6)


def test_linear_lightning_head_is_within_one_point_of_logreg(store):
    logreg = train_probe(store, ProbeConfig())
    linear = train_probe(store, ProbeConfig(method="linear", weight_decays=[0.0, 1e-3], patience=6))
    assert linear.params["weight_decay"] in (0.0, 1e-3) and linear.params["best_epoch"] >= 0
    assert [r["param"] for r in linear.sweep] == ["weight_decay", "weight_decay"]
    assert abs(linear.metrics["test"]["accuracy"] - logreg.metrics["test"]["accuracy"]) <= 0.01


def _zeroshot(means, n_classes):
    return ZeroShotHead([f"class{i}" for i in range(n_classes)][::-1], ["{}"], means[::-1], logit_scale=50.0)


def test_zeroshot_baseline_is_scored_on_the_same_test_split(feats, store, tmp_path):
    x, y, splits, means = feats
    zs = _zeroshot(means, 6)  # its classes in another order: columns must be realigned
    result = train_probe(store, ProbeConfig(c_grid=[1.0]), zeroshot_head=zs, report_dir=tmp_path / "report")
    test = splits == "test"
    expected = float((np.argmax(x[test] @ means.T, axis=1) == y[test]).mean())
    assert result.metrics["zeroshot_test"]["accuracy"] == pytest.approx(expected)
    gain = 100 * (result.metrics["test"]["accuracy"] - expected)
    assert result.metrics["gain_over_zeroshot"] == pytest.approx(gain)
    assert result.head.metrics["gain_over_zeroshot"] == pytest.approx(gain)
    report = result.report_dir
    assert report == tmp_path / "report"
    for name in ("report.json", "confusion_matrix.csv", "confusion_matrix.png", "zeroshot_confusion_matrix.png",
                 "sweep.png", "predictions.csv", "per_class.csv"):
        assert (report / name).is_file(), name
    doc = json.loads((report / "report.json").read_text())
    assert doc["metrics"]["test"]["n"] == 2000 and doc["params"]["C"] == 1.0
    assert len((report / "predictions.csv").read_text().splitlines()) == 2001


def test_zeroshot_init_starts_from_the_zeroshot_classifier(feats, store):
    """With a learning rate too small to move, the trained head IS the zero-shot classifier (x logit scale)."""
    x, y, splits, means = feats
    zs = _zeroshot(means, 6)
    cfg = ProbeConfig(method="linear", init="zeroshot", lr=1e-9, weight_decays=[0.0], max_epochs=2, fewshot=2)
    result = train_probe(store, cfg, zeroshot_head=zs)
    np.testing.assert_allclose(result.head.coef_, means * 50.0, atol=1e-4)
    assert result.params["n_train"] == 12  # 2 shots x 6 classes
    assert result.metrics["test"]["accuracy"] == pytest.approx(result.metrics["zeroshot_test"]["accuracy"])
    with pytest.raises(ConfigError, match="init zeroshot .* use it with method linear") as e:
        train_probe(store, ProbeConfig(method="logreg", init="zeroshot"), zeroshot_head=zs)
    assert e.value.field == "init"  # the CLI writes it --init (and --method), the server init


def test_fewshot_indices_take_k_per_class_seeded():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 10)
    idx = np.arange(23)
    picked = fewshot_indices(idx, labels, 4, seed=0)
    assert np.bincount(labels[picked]).tolist() == [4, 3, 4]
    assert picked.tolist() == fewshot_indices(idx, labels, 4, seed=0).tolist()
    assert picked.tolist() != fewshot_indices(idx, labels, 4, seed=1).tolist()


def test_binary_head_matches_sklearn_probabilities(tmp_path):
    from sklearn.linear_model import LogisticRegression

    x, y, _ = synthetic(600, 16, 2, noise=3.0, seed=1)
    splits = np.array(["train"] * 300 + ["val"] * 100 + ["test"] * 200)
    st = write_store(tmp_path / "bin", x, [["no", "yes"][i] for i in y], splits, IDENTITY)
    result = train_probe(st, ProbeConfig(c_grid=[2.0]))
    assert result.head.coef_.shape == (2, 16) and result.head.classes_ == ["no", "yes"]
    # the exact optimum as reference: the probe's final fit stops at scikit-learn's default tolerance (1e-4 on the
    # largest gradient entry), where scikit-learn itself stops up to 2e-3 (in probability) away from it
    clf = LogisticRegression(C=2.0, max_iter=1000, tol=1e-10).fit(x[:400], y[:400])
    from toolkit.heads.base import softmax  # the fitted model itself: predict_proba also applies the val temperature

    np.testing.assert_allclose(softmax(result.head.decision_function(x[400:])), clf.predict_proba(x[400:]), atol=2e-3)


def test_save_load_roundtrip_without_pickle(feats, store, tmp_path):
    x = feats[0]
    head = train_probe(store, ProbeConfig(c_grid=[1.0])).head
    head.save(tmp_path / "head")
    head.save(tmp_path / "head")  # replacing an existing head works (temp folder + rename)
    assert sorted(p.name for p in (tmp_path / "head").iterdir()) == ["head.json", "head.safetensors"]
    loaded = LinearProbe.load(tmp_path / "head")
    np.testing.assert_allclose(loaded.predict_proba(x[:50]), head.predict_proba(x[:50]), atol=1e-6)
    assert loaded.classes_ == head.classes_ and loaded.identity == store.identity
    assert loaded.params["C"] == 1.0 and loaded.method == "logreg" and "test_accuracy" in loaded.metrics
    assert loaded.predict(x[:3]) == head.predict(x[:3]) and loaded.describe()["kind"] == "probe"


def test_missing_or_corrupt_heads_raise_head_errors(feats, store, tmp_path):
    with pytest.raises(HeadError, match="not found"):
        LinearProbe.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(HeadError, match="not a head folder"):
        LinearProbe.load(tmp_path / "empty")
    head = train_probe(store, ProbeConfig(c_grid=[1.0])).head
    head.save(tmp_path / "h")
    (tmp_path / "h" / "head.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(HeadError, match="corrupt"):
        LinearProbe.load(tmp_path / "h")
    head.save(tmp_path / "h2")
    (tmp_path / "h2" / "head.json").write_text("{not json")
    with pytest.raises(HeadError, match="corrupt"):
        LinearProbe.load(tmp_path / "h2")


def test_evaluate_on_a_known_example():
    classes = ["a", "b", "c"]
    proba = np.eye(3)[[0, 0, 1, 1, 2, 0]]  # predicted: a a b b c a
    m = evaluate(["a", "a", "b", "b", "c", "c"], proba, classes)
    assert m["accuracy"] == pytest.approx(5 / 6)
    assert m["balanced_accuracy"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert m["confusion_matrix"] == [[2, 0, 0], [0, 2, 0], [1, 0, 1]]
    assert m["per_class"]["a"] == {"precision": pytest.approx(2 / 3), "recall": 1.0, "f1": pytest.approx(0.8),
                                   "support": 2}
