"""The head contract (toolkit/heads/base.py): estimators that make heads, heads that never change, one loader for
every head type, today's head folders still readable; train-probe's steps one by one; errors that carry their
field, phrased by each edge in its own words."""
from __future__ import annotations

import json
import os
import tempfile

import numpy as np
import pytest
from click.testing import CliRunner

from toolkit.cli import main
from toolkit.config import ProbeConfig
from toolkit.data.store import write_store
from toolkit.errors import ConfigError, HeadError
from toolkit.heads.base import HEAD_TYPES, SavedHead, load_head
from toolkit.heads.cache import CacheHead
from toolkit.heads.linear import LinearProbe
from toolkit.heads.zeroshot import ZeroShotHead

CLASSES = ["a", "b", "c"]
IDENTITY = {"model": "synthetic", "pretrained": None, "weights_sha256": None, "embed_dim": 8, "image_size": [8, 8],
            "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic", "resize_mode": "shortest", "extra": {}}


def _unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def heads() -> dict[str, SavedHead]:
    """One head of every registered type, over 8-D features."""
    rng = np.random.default_rng(0)
    w = _unit(rng.normal(size=(3, 8)))
    return {"linear": LinearProbe(CLASSES, 4 * w, rng.normal(size=3)),
            "zeroshot": ZeroShotHead(CLASSES, ["a photo of {}"], w, 20.0),
            "cache": CacheHead(CLASSES, w, 20.0, _unit(rng.normal(size=(6, 8))), np.eye(3)[[0, 1, 2, 0, 1, 2]], 1.5, 4.0)}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1, 2], 40)
    x = _unit(rng.normal(size=(120, 8)) * 0.4 + np.eye(8)[y])
    splits = np.tile(["train"] * 6 + ["val"] * 2 + ["test"] * 2, 12)
    return write_store(tmp_path_factory.mktemp("contract") / "store", x, [CLASSES[i] for i in y], list(splits),
                       IDENTITY)


def test_every_head_type_is_registered_and_loads_through_load_head_and_its_own_load(heads, tmp_path):
    assert set(heads) <= set(HEAD_TYPES)  # (the multi-label types have their own tests)
    X = _unit(np.random.default_rng(2).normal(size=(5, 8)))
    for name, head in heads.items():
        folder = head.calibrated(0.5, 0.4, {"rule": "given"}).save(tmp_path / name)
        for back in (load_head(folder), type(head).load(folder)):
            assert type(back) is type(head) and back.temperature_ == 0.5 and back.reject_below_ == 0.4, name
            np.testing.assert_allclose(back.decision_function(X), head.decision_function(X), rtol=1e-5)
    with pytest.raises(HeadError, match="holds a linear head, not a cache one"):
        CacheHead.load(tmp_path / "linear")


def test_calibration_makes_a_new_head_and_leaves_the_old_one_as_it_was(heads):
    X = _unit(np.random.default_rng(3).normal(size=(4, 8)))
    for name, head in heads.items():
        before = head.predict_proba(X)
        hotter = head.calibrated(4.0, 0.6, {"rule": "given", "target": 0.6})
        assert hotter is not head and type(hotter) is type(head)
        assert (head.temperature_, head.reject_below_, head.rejection_) == (1.0, None, {}), name
        assert (hotter.temperature_, hotter.reject_below_) == (4.0, 0.6)
        np.testing.assert_allclose(head.predict_proba(X), before)  # the original scores are unchanged
        assert hotter.predict_proba(X).max() < before.max()  # a higher temperature flattens the scores
        noted = head.annotated(params={"C": 1.0}, metrics={"acc": 0.5})
        assert noted.params["C"] == 1.0 and "C" not in head.params and head.metrics == {}, name
    with pytest.raises(ValueError, match="temperature"):
        heads["linear"].calibrated(0.0)


def test_a_head_folder_written_before_the_contract_still_loads(tmp_path):
    """head.json as clipkit 0.1 wrote it (calibration keys without underscores): the format is unchanged."""
    from safetensors.numpy import save_file

    folder = tmp_path / "old"
    folder.mkdir()
    coef, intercept = np.eye(3, 8, dtype=np.float32), np.zeros(3, np.float32)
    save_file({"coef": coef, "intercept": intercept}, str(folder / "head.safetensors"))
    (folder / "head.json").write_text(json.dumps({
        "format": "clipkit-head", "format_version": 2, "type": "linear", "kind": "probe", "classes": CLASSES,
        "method": "logreg", "params": {"C": 1.0}, "metrics": {}, "embed_dim": 8, "identity": None,
        "calibration": {"temperature": 2.0, "reject_below": 0.5, "rejection": {"rule": "given", "target": 0.5}},
        "created": "2026-11-30T12:00:00+00:00"}))
    head = load_head(folder)
    assert isinstance(head, LinearProbe) and head.classes_ == CLASSES and head.params == {"C": 1.0}
    assert (head.temperature_, head.reject_below_, head.rejection_["rule"]) == (2.0, 0.5, "given")


def test_estimators_keep_their_hyper_parameters_and_return_the_fitted_head(store):
    from toolkit.fitting.fewshot import CacheEstimator, LogregEstimator, estimator_for
    from toolkit.fitting.probe import probe_data

    cfg = ProbeConfig(c_grid=[1.0], cache_alphas=[0.0, 1.0], cache_betas=[1.0], cache_epochs=2)
    data = probe_data(store, cfg)
    zs = ZeroShotHead(CLASSES, ["{}"], np.eye(3, 8, dtype=np.float32), 20.0)
    for est in (LogregEstimator(cfg), CacheEstimator(cfg), estimator_for("cache-f", cfg)):
        before = dict(vars(est))
        head = est.fit(*data.arrays["train"], *data.arrays["val"], classes=CLASSES, zeroshot=zs)
        assert {k: v for k, v in vars(est).items() if k != "result_"} == before  # fit sets result_ only
        assert est.result_.head is head and head.classes_ == CLASSES and est.result_.val_proba.shape == (24, 3)
    assert est.finetune and isinstance(head, CacheHead) and head.alpha_ == est.result_.params["alpha"]
    with pytest.raises(ConfigError, match="unknown head method 'svm'"):
        estimator_for("svm", cfg)


def test_train_probe_steps_run_one_by_one_and_write_no_report_unless_asked(store, tmp_path, monkeypatch):
    from toolkit.evaluation.report import write_report
    from toolkit.fitting.probe import calibrate_probe, evaluate_probe, fit_probe, probe_data, train_probe

    cfg = ProbeConfig(c_grid=[1.0], target_coverage=0.5)
    data = probe_data(store, cfg)
    fit = fit_probe(data, cfg)
    cal = calibrate_probe(fit, data, cfg)
    assert fit.head.temperature_ == 1.0 and fit.head.reject_below_ is None  # the fitted head is left as is
    assert cal.head.reject_below_ == cal.reports["probe"]["reject_below"] and cal.head.reject_below_ > 0
    result = evaluate_probe(fit, cal, data, cfg)
    assert result.report_dir is None and result.head.metrics["n_test"] == 24
    assert fit.fit_s > 0 and result.timings["fit_s"] == fit.fit_s  # the summary's "fit in X s" is the fit's time
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    steps: list[str] = []
    again = train_probe(store, cfg, step=steps.append)  # what `train-probe --progress` shows on stderr
    assert again.report_dir is None and os.listdir(tmp_path / "tmp") == []  # no hidden temporary report
    assert [s.split()[0] for s in steps] == ["fitting", "calibrating", "scoring"] and "train images" in steps[0]
    np.testing.assert_allclose(again.head.coef_, result.head.coef_)
    folder = write_report(result, tmp_path / "report")
    doc = json.loads((folder / "report.json").read_text())
    assert doc["params"]["C"] == 1.0 and len((folder / "predictions.csv").read_text().splitlines()) == 25


def test_errors_carry_their_field_and_each_edge_names_it_its_own_way():
    from toolkit.cli.common import flag_name
    from toolkit.heads.calibration import choose_threshold
    from toolkit.serve.errors import toolkit_error_parts

    with pytest.raises(ConfigError) as e:
        choose_threshold(np.ones(3), np.ones(3, bool), target_precision=1.5)
    assert e.value.field == "target_precision" and "--" not in e.value.message
    assert e.value.phrased(flag_name).startswith("--target-precision 1.5")
    status, code, message = toolkit_error_parts(e.value)
    assert status == 422 and code == "invalid_request" and message.startswith("target_precision 1.5")


def test_the_cli_names_the_flag_of_a_library_error(store, tmp_path):
    r = CliRunner().invoke(main, ["train-probe", str(store.path), "--out", str(tmp_path / "h"), "--no-track",
                                  "--method", "logreg", "--init", "zeroshot", "--model", "none.json"])
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("error: --init zeroshot starts the linear head") and "--method linear" in r.stderr


def test_the_cache_root_honours_xdg_cache_home(tmp_path):
    from toolkit.runtime import cache_root

    assert cache_root({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "clipkit"
    assert cache_root({}).parts[-2:] == (".cache", "clipkit")
