"""Training a head on a feature store: splits (few-shot draws included), the fit (every method, through
fewshot.fit_head), calibration on val, scores against zero-shot on test, and the report (`train_probe`).

The heads themselves live in linear_head.py (LinearProbe, re-exported here), cache_head.py and zeroshot.py.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from toolkit.config import ProbeConfig
from toolkit.errors import ConfigError, DataError
from toolkit.heads.base import FitResult, SavedHead
from toolkit.heads.linear import LinearProbe  # noqa: F401  (re-exported: the head train_probe mostly returns)
from toolkit.fitting.logreg import fit_logreg  # noqa: F401  (re-exported)

# ---------------------------------------------------------------- training on a store

@dataclass
class ProbeResult:
    """Everything one training run produced; self-describing, so it can be logged as is (see tracking.py)."""

    head: SavedHead  # LinearProbe (logreg, linear, blend), CacheHead, or (auto) ZeroShotHead
    metrics: dict[str, Any]  # 'val', 'test', 'zeroshot_test' (evaluate() dicts), 'gain_over_zeroshot' (points),
    #   'calibration': {probe, zeroshot} calibration.calibrate_head reports (temperature, val/test before/after)
    sweep: list[dict[str, Any]]  # {param, value, val_accuracy, val_loss}
    report_dir: Optional[Path]  # report.json, confusion matrices (CSV, PNG), sweep.png, predictions.csv, per_class.csv
    params: dict[str, Any]  # method, chosen hyper-parameters, seed, fewshot, split sizes
    config: dict[str, Any]  # the ProbeConfig used
    store_path: Optional[str] = None
    timings: dict[str, float] = field(default_factory=dict)

    def scalar_metrics(self) -> dict[str, float]:
        """Flat numbers for a metrics table: test_accuracy, zeroshot_test_accuracy, gain_over_zeroshot, ..."""
        out: dict[str, float] = {}
        for part in ("val", "test", "zeroshot_test"):
            for k in ("accuracy", "balanced_accuracy", "macro_f1"):
                v = (self.metrics.get(part) or {}).get(k)
                if v is not None:
                    out[f"{part}_{k}"] = float(v)
        if self.metrics.get("gain_over_zeroshot") is not None:
            out["gain_over_zeroshot"] = float(self.metrics["gain_over_zeroshot"])
        for name, c in ((self.metrics.get("selection") or {}).get("candidates") or {}).items():
            out[f"candidate/{name}/val_accuracy"] = float(c["val_accuracy"])  # auto's candidates
        from toolkit.heads.calibration import scalar_metrics  # temperature, {val,test}_{ece,nll,brier}[_before], ...

        cal = self.metrics.get("calibration") or {}
        return {**out, **scalar_metrics(cal.get("probe")), **scalar_metrics(cal.get("zeroshot"), "zeroshot_")}


def fewshot_indices(train_idx: np.ndarray, labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """K training rows per class (all of a class's rows when it has fewer), drawn with `seed`; sorted."""
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(train_idx[labels[train_idx] == c])[:k] for c in sorted(set(labels[train_idx]))]
    return np.sort(np.concatenate(picked))


def _aligned_zeroshot(zeroshot_head, classes: list[str]):
    """Row order of the zero-shot head's classes that matches `classes`; ConfigError when the sets differ."""
    if zeroshot_head is None:
        return None
    zs = list(zeroshot_head.classes_)
    if sorted(zs) != sorted(classes):
        raise ConfigError(f"the zero-shot labels {zs} differ from the dataset's classes {classes}; "
                          "the baseline must use the class names as labels")
    return np.asarray([zs.index(c) for c in classes])


def _split_arrays(store, classes: list[str], cfg: ProbeConfig):
    pos = {c: i for i, c in enumerate(classes)}
    y = np.asarray([pos[v] for v in store.labels], dtype=np.int64)
    idx = {s: store.split_indices(s) for s in ("train", "val", "test")}
    if cfg.fewshot:
        idx["train"] = fewshot_indices(idx["train"], y, cfg.fewshot, cfg.seed)
    missing = [c for i, c in enumerate(classes) if not (y[idx["train"]] == i).any()]
    if missing:
        raise DataError(f"class '{missing[0]}' has no training examples in store '{store.path}'; "
                        "add images of it to the train split")
    if len(idx["val"]) == 0:
        raise DataError(f"store '{store.path}' has no validation rows; hyper-parameters are chosen on val: "
                        "give a val split or let clipkit draw one")
    return {s: (np.asarray(store.features[i], np.float32), y[i]) for s, i in idx.items()}, idx


def train_probe(store, cfg: ProbeConfig, zeroshot_head=None, report_dir: Optional[str | Path] = None,
                c_grid: Optional[Sequence[float]] = None, progress: bool = False, report: bool = True) -> ProbeResult:
    """Fit a head (cfg.method: see toolkit.fitting.fewshot) on a FeatureStore's train split (hyper-parameters on val),
    score it and the zero-shot head on test, and write a report folder (`report_dir`, else a temp folder; none when
    `report` is False, e.g. inside a sweep). Returns a ProbeResult (the head is not saved)."""
    from toolkit.evaluation.metrics import evaluate

    classes = store.classes
    if len(classes) < 2:
        raise DataError(f"store '{store.path}' has only one class {classes}; a classifier needs at least two")
    order = _aligned_zeroshot(zeroshot_head, classes)
    if cfg.init == "zeroshot" and (cfg.method != "linear" or zeroshot_head is None):
        raise ConfigError("--init zeroshot starts the linear head from the zero-shot classifier; use it with "
                          "--method linear (and prompts for the class names)")
    if cfg.finetune and cfg.method != "cache":
        raise ConfigError(f"--finetune trains the keys of a cache head; use it with --method cache, not {cfg.method}")
    if cfg.method in ("cache", "blend", "auto") and zeroshot_head is None:
        raise ConfigError(f"--method {cfg.method} builds on the zero-shot classifier; give prompts for the class names")
    data, idx = _split_arrays(store, classes, cfg)
    from toolkit.fitting.fewshot import fit_head, zeroshot_in_order  # every method's fitting (logreg, linear, cache, blend, auto)

    t0 = time.perf_counter()
    zs = zeroshot_in_order(zeroshot_head, classes) if zeroshot_head is not None else None
    fit = fit_head(cfg.method, classes, data["train"], data["val"], zs, cfg, store.identity, progress, c_grid)
    fit_s = time.perf_counter() - t0
    params = {"method": cfg.method, "init": cfg.init, "seed": cfg.seed, "fewshot": cfg.fewshot, **fit.params,
              **{f"n_{s}": int(len(i)) for s, i in idx.items()}}
    head = fit.head
    head.params = {**head.params, **params}
    X_test, y_test = data["test"]
    test_labels = [classes[i] for i in y_test]
    calibration, zeroshot_head = _calibrate(head, fit, data, zeroshot_head, order, cfg)
    proba = head.predict_proba(X_test)  # calibrated: the temperature fitted on val
    zs_proba = zeroshot_head.predict_proba(X_test)[:, order] if zeroshot_head is not None else None
    metrics = {"val": evaluate([classes[i] for i in data["val"][1]], fit.val_proba, classes),
               "test": evaluate(test_labels, proba, classes),
               "zeroshot_test": evaluate(test_labels, zs_proba, classes) if zs_proba is not None else None,
               "calibration": calibration}
    if fit.selection:  # auto: the chosen method and every candidate's val score
        metrics["selection"] = fit.selection
    gain = None
    if metrics["zeroshot_test"] and metrics["test"]["accuracy"] is not None:
        gain = 100 * (metrics["test"]["accuracy"] - metrics["zeroshot_test"]["accuracy"])
    metrics["gain_over_zeroshot"] = gain
    where = (Path(report_dir) if report_dir else _temp_report_dir()) if report else None
    result = ProbeResult(head, metrics, fit.sweep, where, params, cfg.model_dump(mode="json"), str(store.path),
                         {"fit_s": round(fit_s, 3)})
    head.metrics = {**result.scalar_metrics(), "n_test": len(y_test)}
    if report:
        from toolkit.evaluation.metrics import write_report

        write_report(result, store.paths[idx["test"]], test_labels, proba, zs_proba)
    return result


def _calibrate(head, fit: FitResult, data, zeroshot_head, order, cfg: ProbeConfig):
    """Fit the head's temperature (and "none of these" rule: cfg.target_precision | target_coverage |
    reject_below) on val, and the zero-shot baseline's temperature on the same images (a calibrated copy;
    the caller's head is left as is). Returns ({probe, zeroshot} calibration reports, calibrated zero-shot)."""
    import copy

    from toolkit.heads.calibration import calibrate_head

    (X_val, y_val), (X_test, y_test) = data["val"], data["test"]
    held_out = fit.params.get("refit") == "train+val"  # the head saw val: score val with the pre-refit model
    val_logits = np.log(np.clip(np.asarray(fit.val_proba, np.float64), 1e-300, None)) if held_out \
        else head.decision_function(X_val)
    rule = {k: getattr(cfg, k) for k in ("target_precision", "target_coverage", "reject_below")}
    out = {"probe": calibrate_head(head, val_logits, y_val, head.decision_function(X_test), y_test, **rule)}
    out["probe"]["val_scores"] = "pre-refit model (the head was refit on train+val)" if held_out else "head"
    if zeroshot_head is not None:
        zeroshot_head = copy.copy(zeroshot_head)
        out["zeroshot"] = calibrate_head(zeroshot_head, zeroshot_head.decision_function(X_val)[:, order], y_val,
                                         zeroshot_head.decision_function(X_test)[:, order], y_test)
    return out, zeroshot_head


def _temp_report_dir() -> Path:
    """A temporary report folder (no report_dir given): removed when the process exits, so none outlives the
    command that made it. Callers that keep the report move it away first (train-probe: OUT/report)."""
    import atexit
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="clipkit-report-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return Path(folder)
