"""Training a head on a feature store, in four steps a script can call alone:

    data = probe_data(store, cfg, zeroshot)        # validate, split (few-shot draws included)
    fit = fit_probe(data, cfg, zeroshot)           # an estimator per cfg.method (toolkit.fitting.fewshot)
    cal = calibrate_probe(fit, data, cfg, zeroshot)  # temperature and "none of these" on val: new heads
    result = evaluate_probe(fit, cal, data, cfg)   # scores on test, against zero-shot -> ProbeResult
    toolkit.evaluation.report.write_report(result, folder)  # where the caller says

`train_probe` runs the four (and the report when given a folder). Nothing here changes a head once built.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from toolkit.config import ProbeConfig
from toolkit.errors import ConfigError, DataError
from toolkit.fitting.result import FitResult
from toolkit.heads.base import SavedHead


@dataclass
class ProbeResult:
    """Everything one training run produced; self-describing, so it can be logged as is (tracking.records)."""

    head: SavedHead  # LinearProbe (logreg, linear, blend), CacheHead, or (auto) ZeroShotHead; calibrated
    metrics: dict[str, Any]  # 'val', 'test', 'zeroshot_test' (evaluate() dicts), 'gain_over_zeroshot' (points),
    #   'calibration': {probe, zeroshot} calibration.calibrate reports (temperature, val/test before/after)
    sweep: list[dict[str, Any]]  # {param, value, val_accuracy, val_loss}
    params: dict[str, Any]  # method, chosen hyper-parameters, seed, fewshot, split sizes
    config: dict[str, Any]  # the ProbeConfig used
    store_path: Optional[str] = None
    timings: dict[str, float] = field(default_factory=dict)
    # the test split, for the report: paths, true labels, (n, C) calibrated probe and zero-shot probabilities
    test: dict[str, Any] = field(default_factory=dict)
    report_dir: Optional[Path] = None  # set by train_probe when it wrote a report

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
        from toolkit.fitting.openset import openset_scalars  # the out-of-set detector's, when there is one

        return {**out, **scalar_metrics(cal.get("probe")), **scalar_metrics(cal.get("zeroshot"), "zeroshot_"),
                **openset_scalars(cal.get("openset"))}


@dataclass(frozen=True)
class ProbeData:
    """A store's splits as arrays: {split: (X (n, D) float32, y (n,) class indices)}, their store rows, classes."""

    classes: list[str]
    arrays: dict[str, tuple[np.ndarray, np.ndarray]]
    rows: dict[str, np.ndarray]
    store: Any


@dataclass(frozen=True)
class Calibrated:
    """The calibrated probe and zero-shot heads (new heads), and their {probe, zeroshot} calibration reports."""

    head: SavedHead
    zeroshot: Optional[SavedHead]
    reports: dict[str, Any]


def fewshot_indices(train_idx: np.ndarray, labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """K training rows per class (all of a class's rows when it has fewer), drawn with `seed`; sorted."""
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(train_idx[labels[train_idx] == c])[:k] for c in sorted(set(labels[train_idx]))]
    return np.sort(np.concatenate(picked))


def check_probe_config(cfg: ProbeConfig, has_zeroshot: bool) -> None:
    """The method's needs, before any work (ConfigError naming the field)."""
    if cfg.init == "zeroshot" and (cfg.method != "linear" or not has_zeroshot):
        raise ConfigError("{field} zeroshot starts the linear head from the zero-shot classifier; use it with "
                          "{field:method} linear (and prompts for the class names)", field="init")
    if cfg.finetune and cfg.method != "cache":
        raise ConfigError(f"{{field}} trains the keys of a cache head; use it with {{field:method}} cache, not "
                          f"{cfg.method}", field="finetune")
    if cfg.method in ("cache", "blend", "auto") and not has_zeroshot:
        raise ConfigError(f"{{field}} {cfg.method} builds on the zero-shot classifier; give prompts for the class "
                          "names", field="method")


def probe_data(store, cfg: ProbeConfig, zeroshot_head=None) -> ProbeData:
    """Validate the store and the config, and cut the splits (cfg.fewshot: K train rows per class, seeded)."""
    classes = store.classes
    if len(classes) < 2:
        raise DataError(f"store '{store.path}' has only one class {classes}; a classifier needs at least two")
    if zeroshot_head is not None and sorted(zeroshot_head.classes_) != sorted(classes):
        raise ConfigError(f"the zero-shot labels {list(zeroshot_head.classes_)} differ from the dataset's classes "
                          f"{classes}; the baseline must use the class names as labels")
    check_probe_config(cfg, zeroshot_head is not None)
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
    arrays = {s: (np.asarray(store.features[i], np.float32), y[i]) for s, i in idx.items()}
    return ProbeData(list(classes), arrays, idx, store)


def fit_probe(data: ProbeData, cfg: ProbeConfig, zeroshot_head=None, c_grid: Optional[Sequence[float]] = None,
              progress: bool = False) -> FitResult:
    """The head of cfg.method fitted on train (hyper-parameters on val); params gain the run's settings, split
    sizes and `fit_s`. The head is uncalibrated."""
    from toolkit.fitting.fewshot import estimator_for

    zs = zeroshot_head.in_order(data.classes) if zeroshot_head is not None else None
    est = estimator_for(cfg.method, cfg, c_grid=c_grid, progress=progress)
    t0 = time.perf_counter()
    est.fit(*data.arrays["train"], *data.arrays["val"], classes=data.classes, zeroshot=zs,
            identity=data.store.identity)
    fit = est.result_
    params = {"method": cfg.method, "init": cfg.init, "seed": cfg.seed, "fewshot": cfg.fewshot, **fit.params,
              **{f"n_{s}": int(len(i)) for s, i in data.rows.items()}}
    return fit.with_head(fit.head.annotated(params=params), params=params,
                         fit_s=round(time.perf_counter() - t0, 3))


def calibrate_probe(fit: FitResult, data: ProbeData, cfg: ProbeConfig, zeroshot_head=None) -> Calibrated:
    """The head's temperature (and "none of these" rule: cfg.target_precision | target_coverage | reject_below)
    fitted on val, and the zero-shot baseline's temperature on the same images: new heads, with the reports."""
    from toolkit.heads.calibration import calibrate_head

    (X_val, y_val), (X_test, y_test) = data.arrays["val"], data.arrays["test"]
    head = fit.head
    held_out = fit.params.get("refit") == "train+val"  # the head saw val: score val with the pre-refit model
    val_logits = np.log(np.clip(np.asarray(fit.val_proba, np.float64), 1e-300, None)) if held_out \
        else head.decision_function(X_val)
    rule = {k: getattr(cfg, k) for k in ("target_precision", "target_coverage", "reject_below")}
    head, report = calibrate_head(head, val_logits, y_val, head.decision_function(X_test), y_test, **rule)
    reports = {"probe": {**report, "val_scores": "pre-refit model (the head was refit on train+val)" if held_out
                         else "head"}}
    zs = None
    if zeroshot_head is not None:
        zs = zeroshot_head.in_order(data.classes)
        zs, reports["zeroshot"] = calibrate_head(zs, zs.decision_function(X_val), y_val,
                                                 zs.decision_function(X_test), y_test)
    return Calibrated(head, zs, reports)


def evaluate_probe(fit: FitResult, cal: Calibrated, data: ProbeData, cfg: ProbeConfig) -> ProbeResult:
    """Score the calibrated head and the zero-shot baseline on test; the head gains its scalar metrics."""
    from toolkit.evaluation.metrics import evaluate

    classes = data.classes
    X_test, y_test = data.arrays["test"]
    test_labels = [classes[i] for i in y_test]
    proba = cal.head.predict_proba(X_test)  # calibrated: the temperature fitted on val
    zs_proba = cal.zeroshot.predict_proba(X_test) if cal.zeroshot is not None else None
    metrics = {"val": evaluate([classes[i] for i in data.arrays["val"][1]], fit.val_proba, classes),
               "test": evaluate(test_labels, proba, classes),
               "zeroshot_test": evaluate(test_labels, zs_proba, classes) if zs_proba is not None else None,
               "calibration": cal.reports}
    if fit.selection:  # auto: the chosen method and every candidate's val score
        metrics["selection"] = fit.selection
    gain = None
    if metrics["zeroshot_test"] and metrics["test"]["accuracy"] is not None:
        gain = 100 * (metrics["test"]["accuracy"] - metrics["zeroshot_test"]["accuracy"])
    metrics["gain_over_zeroshot"] = gain
    test = {"paths": data.store.paths[data.rows["test"]], "labels": test_labels, "proba": proba,
            "zeroshot_proba": zs_proba}
    result = ProbeResult(cal.head, metrics, fit.sweep, fit.params, cfg.model_dump(mode="json"),
                         str(data.store.path), {"fit_s": fit.fit_s or 0.0}, test)
    result.head = cal.head.annotated(metrics={**result.scalar_metrics(), "n_test": len(y_test)})
    return result


def train_probe(store, cfg: ProbeConfig, zeroshot_head=None, report_dir: Optional[str | Path] = None,
                c_grid: Optional[Sequence[float]] = None, progress: bool = False,
                step: Optional[Callable[[str], None]] = None, negatives: Optional[np.ndarray] = None
                ) -> ProbeResult:
    """Fit a head (cfg.method: see toolkit.fitting.fewshot) on a FeatureStore's train split (hyper-parameters on
    val), calibrate it on val, score it and the zero-shot head on test, and (with `report_dir`) write the report
    there (toolkit.evaluation.report). Returns a ProbeResult; the head is not saved. `step(text)` is told, in
    words, each step as it starts (the CLI shows them on stderr). `negatives` (M, D): negative-word embeddings
    (heads.openset.negative_embeddings) that make NegLabel a candidate of the out-of-set selection."""
    say = step or (lambda text: None)
    data = probe_data(store, cfg, zeroshot_head)
    n = {s: int(len(r)) for s, r in data.rows.items()}
    say(f"fitting {cfg.method} on {n.get('train', 0)} train images, choosing on {n.get('val', 0)} val")
    fit = fit_probe(data, cfg, zeroshot_head, c_grid, progress)
    say(f"calibrating on val ({fit.fit_s:.1f} s to fit)")
    cal = calibrate_probe(fit, data, cfg, zeroshot_head)
    if cfg.keep_known is not None:  # the "unfamiliar" detector, chosen by holding each class out (issue 22)
        from toolkit.fitting.openset import attach_openset

        say("choosing the unfamiliar-input detector (each class held out in turn)")
        cal = attach_openset(cal, data, cfg, negatives)
    say(f"scoring the head and zero-shot on {n.get('test', 0)} test images")
    result = evaluate_probe(fit, cal, data, cfg)
    if report_dir is not None:
        from toolkit.evaluation.report import write_report

        result.report_dir = write_report(result, report_dir)
    return result
