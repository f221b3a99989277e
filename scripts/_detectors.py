"""The out-of-set detectors part of scripts/eval_openset.py (issue 22): every candidate of
toolkit.fitting.openset scored on known test vs unknown images for one head, with the held-out-class pick."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from _tables import cell, cells, setting_name, stat

KEEP_KNOWN = 0.95  # the saved threshold's target (as `train-probe --keep-known 0.95`)
LOGIT_SCORES = ("energy", "maxlogit", "msp")  # the scores that depend on the head; the others are shared


def at_known_kept(known: np.ndarray, unknown: np.ndarray, kept: float) -> float:
    """The share of unknowns rejected at the threshold that keeps a share `kept` of the known scores."""
    t = np.quantile(known, 1 - kept, method="lower")
    return float((unknown < t).mean())


def detector_eval(head, known: dict, unknown: tuple[np.ndarray, np.ndarray], text: Optional[np.ndarray],
                  negatives: Optional[np.ndarray], keep_known: float = KEEP_KNOWN, seed: int = 0,
                  classes: Optional[Sequence[str]] = None) -> dict:
    """{pick, pick_any, heldout {name: AUROC}, test {name: {auroc, fpr95, rejected_at_90}}, operating {...}} for
    one head (None: the scores from features and text only, which are the same for every head; `classes` then).

    Every candidate is built on the head's train features (toolkit.fitting.openset.build_detector) and scored on
    known test (positive) and unknown images; `pick` is what holding each known class out chose on train + val,
    and `operating` is the pick at its saved threshold (keep_known of known val): known test kept, unknowns
    rejected (all and per unknown class)."""
    from toolkit.fitting.openset import KNN_KS, auroc, build_detector, candidates, fit_openset, k_cap, with_cap

    (X_tr, y_tr), (X_val, y_val), (X_te, _) = known["train"], known["val"], known["test"]
    X_u, keys_u = unknown
    classes = list(head.classes_) if head is not None else list(classes)
    logits_fn = head.decision_function if head is not None else None
    fit = fit_openset(X_tr, y_tr, X_val, y_val, classes, logits_fn, text, negatives, keep_known=keep_known,
                      seed=seed)
    logits = {"test": logits_fn(X_te), "unknown": logits_fn(X_u)} if logits_fn else {"test": None, "unknown": None}
    test, cache = {}, {}  # the k grid as fit_openset's (with the k cap); each kind's arrays built once
    for cand in candidates(list(dict.fromkeys(c.split("(")[0] for c in fit.candidates)), logits_fn is not None,
                           text is not None, negatives is not None, with_cap(KNN_KS, k_cap(y_tr))):
        built = build_detector(cand, X_tr, y_tr, len(classes), text, negatives, X_val, seed=seed, cache=cache)
        k, u = built.score(X_te, logits["test"]), built.score(X_u, logits["unknown"])
        test[cand.name] = {"auroc": auroc(k, u), "fpr95": 1 - at_known_kept(k, u, 0.95),
                           "rejected_at_90": at_known_kept(k, u, 0.90)}
    det = fit.detector
    rej_u = det.unfamiliar(X_u, logits["unknown"] if det.needs_logits else None)
    kept = 1 - det.unfamiliar(X_te, logits["test"] if det.needs_logits else None).mean()
    by_class = {k: float(rej_u[np.asarray(keys_u) == k].mean()) for k in dict.fromkeys(keys_u)}
    heldout = {k: v["auroc"] for k, v in fit.candidates.items()}
    return {"pick": fit.chosen, "pick_any": max(heldout, key=heldout.get),  # pick_any: if every kind could be
            "heldout": heldout, "test": test,                               # picked
            "operating": {"threshold": det.threshold_, "known_kept": float(kept), "unknown_rejected":
                          float(rej_u.mean()), "unknown_rejected_by_class": by_class, "keep_known": keep_known}}


def refresh(old: dict, shared: dict) -> dict:
    """A head's detectors document with the head-independent figures of `shared` (detector_eval(None, ...)) and
    its own logit-score rows (energy, max logit, msp) kept from `old`: what rerunning detector_eval with the same
    head gives, without fitting the head again (its logit scores don't change with the feature and text ones)."""
    own = {part: {n: v for n, v in old[part].items() if n.split("(")[0] in LOGIT_SCORES}
           for part in ("test", "heldout")}
    heldout = {**shared["heldout"], **own["heldout"]}
    return {**shared, "test": {**shared["test"], **own["test"]}, "heldout": heldout,
            "pick_any": max(heldout, key=heldout.get)}


# ---------------------------------------------------------------- tables (the loop and cells of _tables)

def _det(runs: list[dict], method: str, *path: str, scale: float = 1.0, digits: int = 3) -> str:
    return cell(runs, method, "detectors", *path, scale=scale, digits=digits)


def _mean(runs: list[dict], method: str, *path: str) -> float:
    return stat(runs, method, "detectors", *path)[0]


def _picks(runs: list[dict], method: str, key: str = "pick") -> list[str]:
    return [r[method]["detectors"][key] for r in runs if r[method].get("detectors")]


def _picked_auroc(runs: list[dict], method: str) -> float:
    return float(np.mean([r[method]["detectors"]["test"][r[method]["detectors"]["pick"]]["auroc"] for r in runs]))


def _best(runs: list[dict], method: str) -> tuple[str, float]:
    """The candidate with the best mean test AUROC for this head, and that AUROC."""
    means = {n: _mean(runs, method, "test", n, "auroc") for n in runs[0][method]["detectors"]["test"]}
    best = max(means, key=means.get)
    return best, means[best]


def detectors_table(res: dict) -> str:
    """Per setting and head: each candidate's test AUROC, FPR95, unknowns rejected at 90% known kept, its
    held-out-class AUROC (what the pick sees), and how often (of the seeds) the pick chose it. Scores from
    features and text are the same for every head: one row, counting every head's picks."""
    lines = ["| setting | head | detector | AUROC known vs unknown | FPR at 95% known kept (%) | unknowns rejected "
             "at 90% known kept (%) | held-out-class AUROC (train + val) | picked | best held out |",
             "|---|---|---|---|---|---|---|---|---|"]
    rows = cells(res, "detectors")
    for i, (shots, runs, m) in enumerate(rows):
        heads = [mm for sh, _, mm in rows if sh == shots]
        first = m == heads[0]
        for name in runs[0][m]["detectors"]["test"]:
            shared = name.split("(")[0] not in LOGIT_SCORES
            if shared and not first:
                continue
            own = heads if shared else [m]
            n = sum(_picks(runs, mm).count(name) for mm in own)
            a = sum(_picks(runs, mm, "pick_any").count(name) for mm in own)
            total = len(runs) * len(own)
            lines.append(f"| {setting_name(shots)} | {'every head' if shared else m} | {name} | "
                         f"{_det(runs, m, 'test', name, 'auroc')} | "
                         f"{_det(runs, m, 'test', name, 'fpr95', scale=100, digits=1)} | "
                         f"{_det(runs, m, 'test', name, 'rejected_at_90', scale=100, digits=1)} | "
                         f"{_det(runs, m, 'heldout', name)} | {f'**{n}/{total}**' if n else ''} | "
                         f"{f'{a}/{total}' if a else ''} |")
    return "\n".join(lines)


def picks_table(res: dict) -> str:
    """Per setting and head: the pick's test AUROC vs the best candidate's (means over seeds), and the pick at its
    saved threshold (keep_known of known val) on test."""
    lines = ["| setting | head | picked (per seed) | its test AUROC | best test AUROC (detector) | gap | known test kept "
             "(%) | unknowns rejected (%) |", "|---|---|---|---|---|---|---|---|"]
    for shots, runs, m in cells(res, "detectors"):
        picked, (best, top) = _picked_auroc(runs, m), _best(runs, m)
        lines.append(f"| {setting_name(shots)} | {m} | {', '.join(_picks(runs, m))} | {picked:.3f} | "
                     f"{top:.3f} ({best}) | {top - picked:.3f} | "
                     f"{_det(runs, m, 'operating', 'known_kept', scale=100, digits=1)} | "
                     f"{_det(runs, m, 'operating', 'unknown_rejected', scale=100, digits=1)} |")
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
            _det(runs, m, "operating", "unknown_rejected_by_class", k, scale=100, digits=0) for m in methods) + " |")
    return "\n".join(lines)


def detector_notes(res: dict) -> list[str]:
    """Best AUROC vs the goals, the pick's gap, the operating point, which unknowns still pass."""
    out = []
    for shots in res["runs"]:
        rows = [(runs, m) for sh, runs, m in cells(res, "detectors") if sh == shots]
        if not rows:
            continue
        best = max(((*_best(runs, m), m) for runs, m in rows), key=lambda b: b[1])
        gap = max((_best(runs, m)[1] - _picked_auroc(runs, m), m) for runs, m in rows)
        rej = max((max(_mean(runs, m, "test", n, "rejected_at_90") for n in runs[0][m]["detectors"]["test"]), m)
                  for runs, m in rows)
        out.append(f"{setting_name(shots)}: best test AUROC {best[1]:.3f} ({best[0]} on {best[2]}); the held-out-class "
                   f"pick is within {gap[0]:.3f} of each head's best (largest gap: {gap[1]}); the most unknowns "
                   f"rejected with 90% of known test kept: {100 * rej[0]:.0f}% ({rej[1]})")
        runs, m = next(((r, mm) for r, mm in rows if mm == "auto"), rows[-1])
        by = runs[0][m]["detectors"]["operating"]["unknown_rejected_by_class"]
        low = sorted((_mean(runs, m, "operating", "unknown_rejected_by_class", k), k) for k in by)
        out.append(f"{setting_name(shots)}, {m}, its pick at {100 * KEEP_KNOWN:.0f}% of known val kept: "
                   "unknowns rejected least: " + ", ".join(f"{k} {100 * s:.0f}%" for s, k in low[:3]))
    return out
