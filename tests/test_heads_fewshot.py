"""Few-shot heads: the cache head (Tip-Adapter, -F), WiSE-FT blending, auto selection, their head folders, and
`clipkit train-probe --method cache|blend|auto` then `clipkit predict --head` on a tiny real model."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from toolkit.heads.cache import CacheHead, one_hot
from toolkit.cli import main
from toolkit.config import ProbeConfig
from toolkit.fitting.fewshot import AutoEstimator, BlendEstimator, accuracy, blend_weights, fit_head
from toolkit.heads.base import load_head
from toolkit.heads.linear import LinearProbe
from toolkit.heads.zeroshot import ZeroShotHead

CLASSES = [f"class {i}" for i in range(5)]
FAST = {"c_steps": 5, "cache_epochs": 30, "auto_candidates": ["logreg", "cache", "cache-f", "blend"]}


def _unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)


def problem(seed: int = 0, zs_noise: float = 0.35, shots: int = 4, n_val: int = 10, n_test: int = 40):
    """5 classes in 32-D: features around unit class means; the zero-shot weights are the means plus noise
    (zs_noise 0.35: a weak zero-shot, ~55% accuracy; 0: a perfect one). -> (zero-shot head, train, val, test)."""
    rng = np.random.default_rng(seed)
    means = _unit(rng.normal(size=(len(CLASSES), 32)))

    def draw(n: int):
        y = np.repeat(np.arange(len(CLASSES)), n)
        return _unit(means[y] + rng.normal(size=(len(y), 32)) * 0.25), y

    zs = ZeroShotHead(CLASSES, ["{}"], _unit(means + rng.normal(size=means.shape) * zs_noise), 20.0)
    return zs, draw(shots), draw(n_val), draw(n_test)


def test_cache_head_with_alpha_zero_is_the_zero_shot_head():
    zs, (X, y), _, (X_test, _) = problem()
    head = CacheHead(CLASSES, zs.coef_, zs.logit_scale, X, one_hot(y, 5), alpha=0.0, beta=5.5)
    np.testing.assert_allclose(head.decision_function(X_test), zs.decision_function(X_test), rtol=1e-6)
    np.testing.assert_allclose(head.predict_proba(X_test), zs.predict_proba(X_test), rtol=1e-5)
    # alpha > 0 adds alpha * (scale / 100) * exp(-beta (1 - cos)) @ values: checked against the formula
    head = CacheHead(CLASSES, zs.coef_, zs.logit_scale, X, one_hot(y, 5), alpha=2.0, beta=5.5)
    cache = 2.0 * zs.logit_scale / 100 * np.exp(-5.5 * (1 - X_test @ X.T)) @ one_hot(y, 5)
    np.testing.assert_allclose(head.decision_function(X_test), zs.decision_function(X_test) + cache, rtol=1e-5)


def test_cache_head_beats_a_weak_zero_shot_and_fine_tuning_only_helps_on_val():
    zs, train, val, (X_test, y_test) = problem()
    cfg = ProbeConfig(fewshot=4, **FAST)
    zs_acc = accuracy(zs.predict_proba(X_test), y_test)
    cache = fit_head("cache", CLASSES, train, val, zs, cfg)
    assert cache.params["alpha"] > 0 and cache.head.keys_.shape == (20, 32)
    assert accuracy(cache.head.predict_proba(X_test), y_test) >= zs_acc + 0.1
    tuned = fit_head("cache-f", CLASSES, train, val, zs, cfg)
    assert tuned.params["finetune"] and tuned.params["finetune_epochs"] >= 1
    assert not np.allclose(tuned.head.keys_, train[0])  # the keys moved
    # the untrained keys compete as "epoch 0" and alpha, beta are searched again: val can only improve
    assert accuracy(tuned.val_proba, val[1]) >= accuracy(cache.val_proba, val[1])


def test_blend_endpoints_are_zero_shot_and_the_probe():
    zs, train, val, (X_test, _) = problem(1)
    probe = fit_head("logreg", CLASSES, train, val, zs, ProbeConfig(fewshot=4, c_steps=5))
    coef, b = blend_weights(zs, probe.head.coef_, probe.head.intercept_, 0.0)
    np.testing.assert_allclose(X_test @ coef.T + b, zs.decision_function(X_test), rtol=1e-5, atol=1e-5)
    coef, b = blend_weights(zs, probe.head.coef_, probe.head.intercept_, 1.0)
    np.testing.assert_allclose(X_test @ coef.T + b, probe.head.decision_function(X_test), rtol=1e-5, atol=1e-5)
    for alpha, twin in ((0.0, zs), (1.0, probe.head)):
        fit = fit_head("blend", CLASSES, train, val, zs, ProbeConfig(fewshot=4, c_steps=5, blend_alphas=[alpha]))
        assert isinstance(fit.head, LinearProbe) and fit.head.method == "blend" and fit.params["alpha"] == alpha
        np.testing.assert_allclose(fit.head.predict_proba(X_test), twin.predict_proba(X_test), atol=1e-5)
    est = BlendEstimator(ProbeConfig(fewshot=4, c_steps=5))
    head = est.fit(*train, *val, classes=CLASSES, zeroshot=zs)
    chosen = est.result_
    assert chosen.head is head and est.cfg.blend_alphas == ProbeConfig().blend_alphas  # fit leaves __init__'s as is
    assert 0 <= chosen.params["alpha"] <= 1 and chosen.params["base"] == "logreg"
    assert [r["value"] for r in chosen.sweep] == sorted(ProbeConfig().blend_alphas)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("zs_noise", [0.0, 0.35])
def test_auto_is_never_worse_than_zero_shot_on_val(seed, zs_noise):
    zs, train, val, _ = problem(seed, zs_noise)
    fit = fit_head("auto", CLASSES, train, val, zs, ProbeConfig(fewshot=4, **FAST))
    sel = fit.selection
    assert sel["mode"] == "val" and list(sel["candidates"])[0] == "zeroshot"
    assert accuracy(fit.val_proba, val[1]) >= accuracy(zs.predict_proba(val[0]), val[1])
    best = max(c["val_accuracy"] for c in sel["candidates"].values())
    assert sel["candidates"][sel["chosen"]]["val_accuracy"] == best


def test_auto_returns_the_zero_shot_head_when_nothing_beats_it():
    zs, (X, y), val, (X_test, _) = problem(0, zs_noise=0.0)
    shuffled = np.random.default_rng(0).permutation(y)  # labels that teach nothing
    est = AutoEstimator(ProbeConfig(fewshot=4, **FAST))
    head = est.fit(X, shuffled, *val, classes=CLASSES, zeroshot=zs)
    fit = est.result_
    assert fit.selection["chosen"] == "zeroshot" and isinstance(head, ZeroShotHead) and fit.head is head
    np.testing.assert_allclose(fit.head.predict_proba(X_test), zs.predict_proba(X_test), rtol=1e-6)


def test_auto_uses_k_fold_over_train_and_val_when_val_is_small():
    zs, train, val, _ = problem(3, n_val=2)
    fit = fit_head("auto", CLASSES, train, val, zs, ProbeConfig(fewshot=4, auto_folds=3, **FAST))
    sel = fit.selection
    assert sel["mode"] == "3-fold" and sel["folds"] == 3 and sel["min_val_per_class"] == 2
    assert all(len(c["fold_accuracies"]) == 3 for c in sel["candidates"].values())
    assert sel["candidates"][sel["chosen"]]["val_accuracy"] >= sel["candidates"]["zeroshot"]["val_accuracy"]
    assert fit.params["chosen"] == sel["chosen"] and fit.params["selection"] == "3-fold"


def _heads(tmp_path):
    zs, train, val, _ = problem()
    cfg = ProbeConfig(fewshot=4, **FAST)
    shuffled = (train[0], np.random.default_rng(0).permutation(train[1]))
    perfect = problem(0, zs_noise=0.0)[0]
    return {"cache": fit_head("cache", CLASSES, train, val, zs, cfg).head,
            "cache-f": fit_head("cache-f", CLASSES, train, val, zs, cfg).head,
            "blend": fit_head("blend", CLASSES, train, val, zs, cfg).head,
            "auto-zeroshot": fit_head("auto", CLASSES, shuffled, val, perfect, cfg).head}


def test_every_head_type_saves_and_loads_with_the_same_scores(tmp_path):
    X = problem()[3][0]
    for name, head in _heads(tmp_path).items():
        folder = head.save(tmp_path / name)
        assert sorted(p.name for p in folder.iterdir()) == ["head.json", "head.safetensors"]
        doc = json.loads((folder / "head.json").read_text())
        back = load_head(folder)
        assert type(back) is type(head) and back.classes_ == CLASSES and back.method == head.method, name
        assert back.params == json.loads(json.dumps(head.params)), name
        np.testing.assert_allclose(back.predict_proba(X), head.predict_proba(X), rtol=1e-5, atol=1e-7)
        if doc["type"] == "cache":
            assert doc["alpha"] == head.alpha_ and doc["n_keys"] == 20 and back.keys_.shape == (20, 32)


def test_a_cache_head_with_keys_of_another_width_is_refused(tmp_path):
    from toolkit.errors import HeadError

    head = _heads(tmp_path)["cache"]
    folder = head.save(tmp_path / "cache")
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(folder / "head.safetensors"))
    save_file({**tensors, "keys": tensors["keys"][:, :16].copy()}, str(folder / "head.safetensors"))
    with pytest.raises(HeadError, match="corrupt"):
        load_head(folder)


# ---------------------------------------------------------------- the CLI on a tiny real model

@pytest.fixture(scope="module")
def colors(tmp_path_factory):
    from tracking_fixtures import color_dataset

    return color_dataset(tmp_path_factory.mktemp("fewshot") / "colors")


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    """One feature store for the CLI tests: the first extracts, the others reuse it."""
    return tmp_path_factory.mktemp("fewshot-store") / "store"


@pytest.fixture(scope="module")
def config(tiny_model, tmp_path_factory):
    import yaml

    path = tmp_path_factory.mktemp("cfg") / "cfg.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"name": tiny_model["config"], "pretrained": tiny_model["checkpoint"], "device": "cpu",
                  "batch_size": 8, "num_workers": 0},
        "prompts": {"templates": "none"}, "probe": FAST, "tracking": {"enabled": False}}))
    return str(path)


@pytest.mark.parametrize("method", [["cache"], ["cache", "--finetune"], ["blend"], ["auto"]])
def test_train_probe_method_then_predict_with_the_head(method, colors, config, store_dir, tmp_path):
    from toolkit.data.store import FeatureStore

    out, store = tmp_path / "head", store_dir
    r = CliRunner().invoke(main, ["train-probe", str(colors), "--out", str(out), "--store", str(store),
                                  "--config", config, "--method", *method], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report" / "report.json").read_text())
    head = load_head(out)
    assert report["params"]["method"] == method[0] and "gain" in r.stdout
    if method[0] == "auto":  # val has 4 per class (< 5): chosen by 5-fold CV over train + val
        sel = report["metrics"]["selection"]
        assert sel["mode"] == "5-fold" and set(sel["candidates"]) == {"zeroshot", *FAST["auto_candidates"]}
        assert f"-> {sel['chosen']}" in r.stdout and "candidates (5-fold" in r.stdout
        assert (out / "report" / "candidates.png").stat().st_size > 0  # every candidate it compared, drawn
    elif method[0] == "cache":
        assert isinstance(head, CacheHead) and head.params["finetune"] == ("--finetune" in method)
    img = colors / "test" / "a red square" / "0.png"
    p = CliRunner().invoke(main, ["predict", str(img), "--head", str(out), "--config", config, "--format", "json"],
                           catch_exceptions=False)
    assert p.exit_code == 0, p.output
    scores = json.loads(p.stdout)["results"][0]["scores"]
    st = FeatureStore.open(store)
    row = [str(x) for x in st.paths].index(str(img))
    expected = head.predict_proba(np.asarray(st.features[row:row + 1]))[0]
    # one image encoded alone vs in a batch of 8 differs by ~1e-6 in fp32 (the batch composition changes the
    # reductions); a cache head's exp(-beta (1 - similarity)) amplifies that to ~1e-4 in probability
    np.testing.assert_allclose([scores[c] for c in head.classes_], expected, atol=5e-4)


def test_finetune_without_the_cache_method_is_refused_before_the_model_loads(colors, config, tmp_path):
    r = CliRunner().invoke(main, ["train-probe", str(colors), "--out", str(tmp_path / "h"), "--store",
                                  str(tmp_path / "s"), "--config", config, "--method", "blend", "--finetune"])
    assert r.exit_code == 2 and "--method cache, not blend" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "s").exists()  # nothing was extracted
