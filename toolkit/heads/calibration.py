"""Calibrated scores and "none of these": temperature scaling, calibration metrics, rejection thresholds.

Temperature scaling (Guo et al., 2017): one scalar T fitted on validation logits by minimising the negative
log-likelihood, so probabilities = softmax(logits / T). It never changes the arg-max (accuracy), only how
confident the scores are. Metrics: expected calibration error (ECE, 15 equal-width bins on the top-class
confidence), NLL and the multi-class Brier score. A "none of these" rule rejects a prediction whose calibrated
top probability is below a threshold, chosen on val for a target precision or coverage, or given.

numpy and scipy only: no torch, no scikit-learn.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import numpy as np

from toolkit.errors import ConfigError

N_BINS = 15
SPLITS = ("val", "test", "train", "all")  # the splits a calibrate_head report may hold
EPS = 1e-15  # probabilities are clipped here before the log (as scikit-learn's log_loss)
T_BOUNDS = (1e-4, 1e4)  # the temperature search range (over log T): wide, since a strongly regularised probe
# has logits ~1e-3 and a cache head saturates (both measured by scripts/eval_openset.py)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of (n, C) logits, in float64."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _check(proba: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    proba, y = np.asarray(proba, np.float64), np.asarray(y, np.int64).reshape(-1)
    if proba.ndim != 2 or len(proba) != len(y):
        raise ValueError(f"proba {proba.shape} and labels {y.shape} don't match: need (n, C) and (n,)")
    if len(y) and (y.min() < 0 or y.max() >= proba.shape[1]):
        raise ValueError(f"labels must be class indices 0..{proba.shape[1] - 1}, got {y.min()}..{y.max()}")
    return proba, y


# ---------------------------------------------------------------- metrics

def nll(proba: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class (nats); (n, C) probabilities, y class indices."""
    proba, y = _check(proba, y)
    return float(-np.log(np.clip(proba[np.arange(len(y)), y], EPS, 1.0)).mean())


def brier(proba: np.ndarray, y: np.ndarray) -> float:
    """Multi-class Brier score: mean over images of sum_c (p_c - [c == y])^2; 0 is perfect, 2 the worst."""
    proba, y = _check(proba, y)
    onehot = np.zeros_like(proba)
    onehot[np.arange(len(y)), y] = 1.0
    return float(((proba - onehot) ** 2).sum(axis=1).mean())


def reliability_bins(proba: np.ndarray, y: np.ndarray, n_bins: int = N_BINS) -> dict[str, np.ndarray]:
    """Top-class confidence in `n_bins` equal-width bins ((k/M, (k+1)/M], the first also holds 0).

    Returns edges (M+1,), count (M,), accuracy (M,) and confidence (M,) per bin (NaN where a bin is empty)."""
    proba, y = _check(proba, y)
    conf, correct = proba.max(axis=1), proba.argmax(axis=1) == y
    idx = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(idx, weights=correct, minlength=n_bins) / count
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
    return {"edges": np.linspace(0, 1, n_bins + 1), "count": count, "accuracy": acc, "confidence": mean_conf}


def ece(proba: np.ndarray, y: np.ndarray, n_bins: int = N_BINS) -> float:
    """Expected calibration error: sum over bins of (share of images) x |accuracy - mean confidence|."""
    b = reliability_bins(proba, y, n_bins)
    n = b["count"].sum()
    if n == 0:
        return float("nan")
    full = b["count"] > 0
    return float((b["count"][full] / n * np.abs(b["accuracy"][full] - b["confidence"][full])).sum())


def calibration_metrics(proba: np.ndarray, y: np.ndarray, bins: bool = False) -> dict[str, Any]:
    """{n, accuracy, ece, nll, brier} of (n, C) probabilities against class indices; with `bins` also
    `reliability`: {count, accuracy, confidence} per confidence bin as lists (None for an empty bin)."""
    proba, y = _check(proba, y)
    if len(y) == 0:
        return {"n": 0, "accuracy": None, "ece": None, "nll": None, "brier": None}
    out = {"n": int(len(y)), "accuracy": float((proba.argmax(axis=1) == y).mean()), "ece": ece(proba, y),
           "nll": nll(proba, y), "brier": brier(proba, y)}
    if bins:
        b = reliability_bins(proba, y)
        out["reliability"] = {"count": b["count"].tolist(), **{k: [None if np.isnan(v) else float(v) for v in b[k]]
                                                                for k in ("accuracy", "confidence")}}
    return out


# ---------------------------------------------------------------- temperature scaling

class TemperatureScaler:
    """softmax(logits / T) with T fitted on validation logits by minimising NLL (scikit-learn style).

    `fit(val_logits (n, C), y_val (n,) class indices)` returns self and sets `temperature_`, `nll_before_`
    (at T = 1), `nll_after_` and `note_`. The search runs over log T within `bounds` (scipy's bounded
    scalar minimiser). When every validation prediction is right, NLL keeps falling as T -> 0 (the fit
    would make the head infinitely sure of itself): T is then left at 1 and `note_` says why.
    """

    def __init__(self, bounds: tuple[float, float] = T_BOUNDS):
        self.bounds = bounds

    def fit(self, logits: np.ndarray, y: np.ndarray) -> "TemperatureScaler":
        from scipy.optimize import minimize_scalar

        logits, y = _check(logits, y)
        if len(y) == 0:
            raise ValueError("temperature scaling needs validation images; the val split is empty")
        rows = np.arange(len(y))

        def loss(log_t: float) -> float:
            return float(-log_softmax(logits / math.exp(log_t))[rows, y].mean())

        self.nll_before_, self.note_ = loss(0.0), ""
        if (logits.argmax(axis=1) == y).all():
            self.temperature_, self.nll_after_ = 1.0, self.nll_before_
            self.note_ = "every validation prediction is right: NLL has no minimum, temperature left at 1"
            return self
        lo, hi = (math.log(b) for b in self.bounds)
        res = minimize_scalar(loss, bounds=(lo, hi), method="bounded", options={"xatol": 1e-5})
        self.temperature_, self.nll_after_ = float(math.exp(res.x)), float(res.fun)
        if self.nll_after_ > self.nll_before_:  # the bounded search never does worse than T = 1
            self.temperature_, self.nll_after_ = 1.0, self.nll_before_
        if min(abs(res.x - lo), abs(res.x - hi)) < 1e-3:
            self.note_ = f"temperature stopped at the search bound {self.temperature_:.3g}"
        return self

    def predict_proba(self, logits: np.ndarray) -> np.ndarray:
        """(n, C) logits -> (n, C) calibrated probabilities, rows sum to 1."""
        return np.exp(log_softmax(np.asarray(logits, np.float64) / self.temperature_))


# ---------------------------------------------------------------- "none of these"

@dataclass
class Threshold:
    """A rejection rule: reject a prediction whose calibrated top probability is below `threshold`."""

    threshold: float
    rule: str  # "target_precision" | "target_coverage" | "given"
    target: float  # the precision or coverage asked for, or the given threshold
    val_precision: Optional[float]  # accuracy of the accepted val predictions (None: none accepted)
    val_coverage: Optional[float]  # share of val images accepted
    reached: bool = True  # False: no threshold reaches the target precision on val
    note: str = ""
    warning: str = ""  # set when the rule costs most of val's coverage: said loudly at training time
    tradeoff: list = field(default_factory=list)  # [{coverage, threshold, precision}] on val (see `tradeoff`)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def selective(conf: np.ndarray, correct: np.ndarray, threshold: float) -> tuple[Optional[float], float]:
    """(precision, coverage) of accepting conf >= threshold: accuracy of the accepted, share accepted."""
    conf, correct = np.asarray(conf, np.float64), np.asarray(correct, bool)
    keep = conf >= threshold
    cov = float(keep.mean()) if len(conf) else 0.0
    return (float(correct[keep].mean()) if keep.any() else None), cov


def _check_fraction(value: float, name: str) -> float:
    if not (isinstance(value, (int, float)) and 0.0 < float(value) <= 1.0):
        raise ConfigError(f"{{field}} {value!r} must be in (0, 1], e.g. {{field}} 0.9", field=name)
    return float(value)


COSTLY_COVERAGE = 0.5  # a precision target that keeps less than this share of val is said loudly
TRADEOFF_COVERAGES = (1.0, 0.95, 0.9, 0.8, 0.7, 0.5, 0.3)  # the rows of the trade-off table


def tradeoff(conf: np.ndarray, correct: np.ndarray, coverages=TRADEOFF_COVERAGES) -> list[dict[str, Any]]:
    """Precision against coverage on val: for each coverage c, the threshold keeping the most confident share
    c of the (n,) confidences and the precision of what it keeps: [{coverage, threshold, precision}]."""
    conf, correct = np.asarray(conf, np.float64).reshape(-1), np.asarray(correct, bool).reshape(-1)
    rows, ranked = [], np.sort(conf)[::-1]
    for c in coverages:
        t = float(ranked[max(1, math.ceil(c * len(conf) - 1e-9)) - 1]) if len(conf) else 0.0
        p, kept = selective(conf, correct, t)
        rows.append({"coverage": kept, "threshold": t, "precision": p})
    return rows


def _between(sorted_conf: np.ndarray, i: int) -> float:
    """A threshold that keeps sorted_conf[:i + 1] (descending) with a margin: halfway to the next lower
    confidence, never on a val score itself (a test image a hair less confident than the last kept val
    image is kept too)."""
    return float((sorted_conf[i] + sorted_conf[i + 1]) / 2)


def choose_threshold(conf: np.ndarray, correct: np.ndarray, target_precision: Optional[float] = None,
                     target_coverage: Optional[float] = None) -> Threshold:
    """The threshold on calibrated val confidences (n,) (with `correct` (n,) bools) for one target.

    target_precision P: the lowest threshold whose accepted set has precision >= P on val (the most images
    kept at that precision), placed halfway between the last val confidence it keeps and the next lower one.
    When keeping every val image already reaches P, val shows no confidence below which mistakes begin: the
    threshold is 0 (nothing rejected) and the note says so; sitting on the lowest val score instead would
    reject real inputs a little less confident than val's (seen: 45 of 118 frames of a workout video). When no
    threshold reaches P, the one with the best precision is returned with `reached=False` and a note. When the
    rule keeps less than COSTLY_COVERAGE of val, `warning` says so and `tradeoff` holds precision vs coverage
    at a few thresholds. target_coverage C: the highest threshold that still accepts at least a share C of
    the val images."""
    if (target_precision is None) == (target_coverage is None):
        raise ConfigError("give exactly one of target_precision and target_coverage")
    conf, correct = np.asarray(conf, np.float64).reshape(-1), np.asarray(correct, bool).reshape(-1)
    if len(conf) == 0:
        raise ConfigError("the validation split is empty; a threshold is chosen on val images")
    if target_coverage is not None:
        cov = _check_fraction(target_coverage, "target_coverage")
        k = max(1, math.ceil(cov * len(conf) - 1e-9))  # accept the k most confident images
        t = float(np.sort(conf)[::-1][k - 1])
        return Threshold(t, "target_coverage", cov, *selective(conf, correct, t))
    prec = _check_fraction(target_precision, "target_precision")
    order = np.argsort(-conf, kind="stable")
    sorted_conf = conf[order]
    hits = np.cumsum(correct[order])
    # candidate thresholds: each distinct confidence; accepting conf >= t keeps every image up to its last tie
    last = np.r_[np.nonzero(np.diff(sorted_conf))[0], len(conf) - 1]
    precisions = hits[last] / (last + 1)
    ok = np.nonzero(precisions >= prec - 1e-12)[0]
    if len(ok) and ok[-1] == len(last) - 1:  # keeping all of val reaches P
        p, c = selective(conf, correct, 0.0)
        why = "every val prediction is right" if p == 1 else f"val precision {p:.3f}"
        return Threshold(0.0, "target_precision", prec, p, c, note=(
            f"keeping every val image already reaches precision {prec:g} ({why}): val shows no confidence "
            f"below which mistakes begin, so nothing is rejected; for \"none of these\" choose a coverage "
            f"target (target_coverage) or a threshold (reject_below) instead"))
    if len(ok):
        t = _between(sorted_conf, int(last[ok[-1]]))  # the lowest such threshold: the largest accepted set
        rule = Threshold(t, "target_precision", prec, *selective(conf, correct, t))
    else:
        best = int(np.nonzero(precisions == precisions.max())[0][-1])
        t = _between(sorted_conf, int(last[best])) if best < len(last) - 1 else 0.0
        p, c = selective(conf, correct, t)
        rule = Threshold(t, "target_precision", prec, p, c, reached=False,
                         note=f"no threshold reaches precision {prec:g} on val; the best, {p:.3f} at threshold "
                              f"{t:.3f} (coverage {c:.3f}), is used")
    if rule.val_coverage < COSTLY_COVERAGE:
        rule.tradeoff = tradeoff(conf, correct)
        rule.warning = (f"target precision {prec:g} keeps only {100 * rule.val_coverage:.1f}% of val (threshold "
                        f"{rule.threshold:.3f}): most inputs will be answered \"none of these\". Precision vs "
                        f"coverage on val is below; a coverage target (target_coverage, e.g. 0.8) keeps the "
                        f"share you choose")
    return rule


def tradeoff_lines(rule: dict[str, Any]) -> list[str]:
    """A rule's warning and its precision vs coverage table, as lines (empty when there is no warning)."""
    if not rule.get("warning"):
        return []
    lines = [f"warning: {rule['warning']}", f"  {'keep (val)':>10}  {'threshold':>9}  precision"]
    for row in rule.get("tradeoff") or []:
        prec = "n/a" if row["precision"] is None else f"{100 * row['precision']:.1f}%"
        lines.append(f"  {100 * row['coverage']:>9.1f}%  {row['threshold']:>9.3f}  {prec:>9}")
    return lines


def given_threshold(reject_below: float, conf: Optional[np.ndarray] = None,
                    correct: Optional[np.ndarray] = None) -> Threshold:
    """A threshold given by the user, with its val precision and coverage when val confidences are given."""
    if not (isinstance(reject_below, (int, float)) and 0.0 <= float(reject_below) <= 1.0):
        raise ConfigError(f"{{field}} {reject_below!r} should be a number between 0 and 1 (0 rejects nothing)",
                          field="reject_below")
    p, c = (None, None) if conf is None else selective(conf, correct, float(reject_below))
    return Threshold(float(reject_below), "given", float(reject_below), p, c)


# ---------------------------------------------------------------- a head, calibrated on its val split

def calibrate(val_logits: np.ndarray, y_val: np.ndarray, target_precision: Optional[float] = None,
              target_coverage: Optional[float] = None, reject_below: Optional[float] = None) -> dict[str, Any]:
    """Fit a temperature on (n, C) val logits and choose the "none of these" rule (at most one of the three
    targets; none: no rejection). Pure: `calibrate_head` makes the calibrated head.

    Returns {temperature, note, reject_below (None: no rejection), rejection (Threshold.to_dict() or {}),
    val: {before, after}} with before/after calibration_metrics at T = 1 and at the fitted T."""
    given = [v is not None for v in (target_precision, target_coverage, reject_below)]
    if sum(given) > 1:
        raise ConfigError("give at most one of target_precision, target_coverage and reject_below")
    y_val = np.asarray(y_val, np.int64)
    scaler = TemperatureScaler().fit(val_logits, y_val)
    after = scaler.predict_proba(val_logits)
    conf, correct = after.max(axis=1), after.argmax(axis=1) == y_val
    rule: Optional[Threshold] = None
    if reject_below is not None:
        rule = given_threshold(reject_below, conf, correct)
    elif target_precision is not None or target_coverage is not None:
        rule = choose_threshold(conf, correct, target_precision, target_coverage)
    return {"temperature": scaler.temperature_, "note": scaler.note_,
            "reject_below": rule.threshold if rule is not None and rule.threshold > 0 else None,
            "rejection": rule.to_dict() if rule is not None else {},
            "val": {"before": calibration_metrics(np.exp(log_softmax(val_logits)), y_val),
                    "after": calibration_metrics(after, y_val)}}


def calibrate_head(head, val_logits: np.ndarray, y_val: np.ndarray, test_logits: Optional[np.ndarray] = None,
                   y_test: Optional[np.ndarray] = None, split: str = "test", **rule: Optional[float]
                   ) -> tuple[Any, dict[str, Any]]:
    """`calibrate` on val -> (the head calibrated: a new head, the report); with test logits the report also
    holds `split_report` on the evaluation split under report[split]. `rule`: target_precision |
    target_coverage | reject_below. The head given is not changed."""
    cal = calibrate(val_logits, y_val, **rule)
    if test_logits is not None:
        cal[split] = split_report(test_logits, y_test, cal["temperature"], cal["reject_below"])
    return head.calibrated(cal["temperature"], cal["reject_below"], cal["rejection"]), cal


def split_report(logits: np.ndarray, y: np.ndarray, temperature: float,
                 reject_below: Optional[float] = None) -> dict[str, Any]:
    """Calibration on one split (e.g. test): {before, after} metrics at T = 1 and at `temperature`, and with
    a threshold `selective`: {threshold, precision, coverage} (accuracy of the accepted, share accepted)."""
    y = np.asarray(y, np.int64)
    after = np.exp(log_softmax(np.asarray(logits, np.float64) / temperature))
    out: dict[str, Any] = {"before": calibration_metrics(np.exp(log_softmax(logits)), y, bins=True),
                           "after": calibration_metrics(after, y, bins=True)}
    if reject_below is not None and len(y):
        p, c = selective(after.max(axis=1), after.argmax(axis=1) == y, reject_below)
        out["selective"] = {"threshold": reject_below, "precision": p, "coverage": c}
    return out


def scalar_metrics(cal: Optional[dict[str, Any]], prefix: str = "") -> dict[str, float]:
    """Flat numbers of a calibrate_head report: {prefix}temperature, {prefix}{split}_{ece,nll,brier}[_before],
    and with a threshold {prefix}{split}_precision / {split}_coverage of the accepted images."""
    out: dict[str, float] = {}
    if not cal:
        return out
    out[f"{prefix}temperature"] = float(cal["temperature"])
    for split in SPLITS:
        part = cal.get(split) or {}
        for when, suffix in (("before", "_before"), ("after", "")):
            for k in ("ece", "nll", "brier"):
                v = (part.get(when) or {}).get(k)
                if v is not None:
                    out[f"{prefix}{split}_{k}{suffix}"] = float(v)
    for split in SPLITS:
        sel = (cal.get(split) or {}).get("selective") or {}
        for k in ("precision", "coverage"):
            if sel.get(k) is not None:
                out[f"{prefix}{split}_{k}"] = float(sel[k])
    return out
