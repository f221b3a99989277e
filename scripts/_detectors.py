"""The out-of-set detectors part of scripts/eval_openset.py (issue 22): every candidate of
toolkit.fitting.openset scored on known test vs unknown images for one head, with the held-out-class pick."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

KEEP_KNOWN = 0.95
LOGIT_SCORES = ("energy", "maxlogit", "msp")  # the scores that depend on the head; the others are shared  # the saved threshold's target (as `train-probe --keep-known 0.95`)


def at_known_kept(known: np.ndarray, unknown: np.ndarray, kept: float) -> float:
    """The share of unknowns rejected at the threshold that keeps a share `kept` of the known scores."""
    t = np.quantile(known, 1 - kept, method="lower")
    return float((unknown < t).mean())


def detector_eval(head, known: dict, unknown: tuple[np.ndarray, np.ndarray], text: Optional[np.ndarray],
                  negatives: Optional[np.ndarray], keep_known: float = KEEP_KNOWN, seed: int = 0) -> dict:
    """{pick, heldout {name: AUROC}, test {name: {auroc, fpr95, rejected_at_90}}, operating {...}} for one head.

    Every candidate is built on the head's train features (the arrays of toolkit.fitting.openset) and scored on
    known test (positive) and unknown images; `pick` is what holding each known class out chose on train + val,
    and `operating` is the pick at its saved threshold (keep_known of known val): known test kept, unknowns
    rejected (all and per unknown class)."""
    from toolkit.fitting.openset import auroc, build_arrays, candidates, fit_openset
    from toolkit.heads.openset import familiarity

    (X_tr, y_tr), (X_val, y_val), (X_te, _) = known["train"], known["val"], known["test"]
    X_u, keys_u = unknown
    n_classes = len(head.classes_)
    fit = fit_openset(X_tr, y_tr, X_val, y_val, head.classes_, head.decision_function, text, negatives,
                      keep_known=keep_known, seed=seed)
    logits = {"test": head.decision_function(X_te), "unknown": head.decision_function(X_u)}
    test = {}
    for cand in candidates([c.split("(")[0] for c in dict.fromkeys(fit.candidates)], True, text is not None,
                           negatives is not None):
        arrays = build_arrays(cand.kind, X_tr, y_tr, n_classes, text, negatives, seed=seed)
        k = familiarity(cand.kind, X_te, logits["test"], arrays, cand.params)
        u = familiarity(cand.kind, X_u, logits["unknown"], arrays, cand.params)
        test[cand.name] = {"auroc": auroc(k, u), "fpr95": 1 - at_known_kept(k, u, 0.95),
                           "rejected_at_90": at_known_kept(k, u, 0.90)}
    det = fit.detector
    rej_u = det.unfamiliar(X_u, logits["unknown"] if det.needs_logits else None)
    kept = 1 - det.unfamiliar(X_te, logits["test"] if det.needs_logits else None).mean()
    by_class = {k: float(rej_u[np.asarray(keys_u) == k].mean()) for k in dict.fromkeys(keys_u)}
    any_pick = max(fit.candidates, key=lambda n: fit.candidates[n]["auroc"])  # if every kind could be picked
    return {"pick": fit.chosen, "pick_any": any_pick, "heldout": {k: v["auroc"] for k, v in fit.candidates.items()}, "test": test,
            "operating": {"threshold": det.threshold_, "known_kept": float(kept), "unknown_rejected":
                          float(rej_u.mean()), "unknown_rejected_by_class": by_class, "keep_known": keep_known}}


# ---------------------------------------------------------------- tables

def _mean(runs: list[dict], method: str, *path: str) -> tuple[float, float]:
    vals = []
    for r in runs:
        v = r[method].get("detectors")
        for p in path:
            v = None if v is None else v.get(p)
        if v is not None:
            vals.append(float(v))
    return (float(np.mean(vals)), float(np.std(vals))) if vals else (float("nan"), float("nan"))


def _cell(runs, method, *path, scale: float = 1.0, digits: int = 3) -> str:
    m, s = _mean(runs, method, *path)
    return "n/a" if np.isnan(m) else f"{scale * m:.{digits}f} ± {scale * s:.{digits}f}"


def _picks(runs: list[dict], method: str) -> list[str]:
    return [r[method]["detectors"]["pick"] for r in runs if r[method].get("detectors")]


def detectors_table(res: dict, setting_name) -> str:
    """Per setting and head: each candidate's test AUROC, FPR95, unknowns rejected at 90% known kept, its
    held-out-class AUROC (what the pick sees), and how often (of the seeds) the pick chose it."""
    lines = ["| setting | head | detector | AUROC known vs unknown | FPR at 95% known kept (%) | unknowns rejected "
             "at 90% known kept (%) | held-out-class AUROC (train + val) | picked | best held out |",
             "|---|---|---|---|---|---|---|---|---|"]
    for shots, runs in res["runs"].items():
        methods = [m for m in runs[0] if runs[0][m].get("detectors")]
        for i, m in enumerate(methods):
            picks = [p for mm in methods for p in _picks(runs, mm)] if i == 0 else _picks(runs, m)
            anys = [r[mm]["detectors"]["pick_any"] for mm in methods for r in runs] if i == 0 else \
                [r[m]["detectors"]["pick_any"] for r in runs]
            for name in runs[0][m]["detectors"]["test"]:
                shared = name.split("(")[0] not in LOGIT_SCORES  # features / text only: the same for every head
                if shared and i > 0:
                    continue
                own = (picks, anys) if shared else (_picks(runs, m), [r[m]["detectors"]["pick_any"] for r in runs])
                n, a = own[0].count(name), own[1].count(name)  # a head's own score: its own selections only
                total = len(runs) * (len(methods) if shared else 1)
                lines.append(f"| {setting_name(shots)} | {'every head' if shared else m} | {name} | {_cell(runs, m, 'test', name, 'auroc')} | "
                             f"{_cell(runs, m, 'test', name, 'fpr95', scale=100, digits=1)} | "
                             f"{_cell(runs, m, 'test', name, 'rejected_at_90', scale=100, digits=1)} | "
                             f"{_cell(runs, m, 'heldout', name)} | {f'**{n}/{total}**' if n else ''} | "
                             f"{f'{a}/{total}' if a else ''} |")
    return "\n".join(lines)


def picks_table(res: dict, setting_name) -> str:
    """Per setting and head: the pick's test AUROC vs the best candidate's (means over seeds), and the pick at its
    saved threshold (keep_known of known val) on test."""
    lines = ["| setting | head | picked (per seed) | its test AUROC | best test AUROC (detector) | gap | known test kept "
             "(%) | unknowns rejected (%) |", "|---|---|---|---|---|---|---|---|"]
    for shots, runs in res["runs"].items():
        for m in runs[0]:
            if not runs[0][m].get("detectors"):
                continue
            picked = [r[m]["detectors"]["test"][r[m]["detectors"]["pick"]]["auroc"] for r in runs]
            names = list(runs[0][m]["detectors"]["test"])
            means = {n: _mean(runs, m, "test", n, "auroc")[0] for n in names}
            best = max(means, key=means.get)
            lines.append(f"| {setting_name(shots)} | {m} | {', '.join(_picks(runs, m))} | {np.mean(picked):.3f} | "
                         f"{means[best]:.3f} ({best}) | {means[best] - np.mean(picked):.3f} | "
                         f"{_cell(runs, m, 'operating', 'known_kept', scale=100, digits=1)} | "
                         f"{_cell(runs, m, 'operating', 'unknown_rejected', scale=100, digits=1)} |")
    return "\n".join(lines)


def unknowns_by_detector(res: dict, shots: str, methods: Sequence[str]) -> str:
    """Per unknown class: the share the pick rejects at its saved threshold, per head."""
    runs = res["runs"][shots]
    methods = [m for m in methods if runs[0].get(m, {}).get("detectors")]
    if not methods:
        return ""
    lines = ["| unknown class | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for k in runs[0][methods[0]]["detectors"]["operating"]["unknown_rejected_by_class"]:
        lines.append(f"| {k} | " + " | ".join(
            _cell(runs, m, "operating", "unknown_rejected_by_class", k, scale=100, digits=0) for m in methods) + " |")
    return "\n".join(lines)


def detector_notes(res: dict, setting_name) -> list[str]:
    """Best AUROC vs the goals, the pick's gap, the operating point, which unknowns still pass."""
    out = []
    for shots, runs in res["runs"].items():
        best_row, gaps, rej90 = (None, -1.0), [], []
        for m in runs[0]:
            d = runs[0][m].get("detectors")
            if not d:
                continue
            means = {n: _mean(runs, m, "test", n, "auroc")[0] for n in d["test"]}
            n_best = max(means, key=means.get)
            if means[n_best] > best_row[1]:
                best_row = (f"{n_best} on {m}", means[n_best])
            picked = np.mean([r[m]["detectors"]["test"][r[m]["detectors"]["pick"]]["auroc"] for r in runs])
            gaps.append((means[n_best] - picked, m))
            rej90.append((max(_mean(runs, m, "test", n, "rejected_at_90")[0] for n in d["test"]), m))
        if best_row[0] is None:
            continue
        worst_gap = max(gaps)
        out.append(f"{setting_name(shots)}: best test AUROC {best_row[1]:.3f} ({best_row[0]}); the held-out-class "
                   f"pick is within {worst_gap[0]:.3f} of each head's best (largest gap: {worst_gap[1]}); the most "
                   f"unknowns rejected with 90% of known test kept: {100 * max(rej90)[0]:.0f}% ({max(rej90)[1]})")
        m = "auto" if "auto" in runs[0] else list(runs[0])[-1]
        if runs[0][m].get("detectors"):
            by = runs[0][m]["detectors"]["operating"]["unknown_rejected_by_class"]
            low = sorted((_mean(runs, m, "operating", "unknown_rejected_by_class", k)[0], k) for k in by)
            out.append(f"{setting_name(shots)}, {m}, its pick at {100 * KEEP_KNOWN:.0f}% of known val kept: "
                       "unknowns rejected least: " + ", ".join(f"{k} {100 * s:.0f}%" for s, k in low[:3]))
    return out
