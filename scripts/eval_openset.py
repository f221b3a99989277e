"""Calibration and "none of these" on the demo generator's novel suite: every head, before and after temperature
scaling, on known classes next to classes it never saw.

The suite's images (`--classes`, default all 15: the six exercises the demo model was trained on and nine it
never saw, drawn in the shifted style) are generated in memory and encoded once with the demo model
(configs/demo.yaml). Known classes (`--known`) are what every head is trained on and labelled with; the rest are
unknown: held out of training, val and calibration entirely, and all their images (every split) are test images
that a head should reject. For each setting in `--shots` (K images per known class from the train split, or `all`
of it) and each seed in `--seeds` (the K-shot draw and the fitting seed), each method is fitted on train with its
hyper-parameters chosen on val (no refit on val: val stays held out for calibration):

  zeroshot  the known label texts as prompts (the config's templates); no training
  logreg    logistic regression, C swept on val
  linear    a linear layer started from the zero-shot weights (Lightning, AdamW, weight decay on val)
  cache     Tip-Adapter; cache-f: its keys fine-tuned (Tip-Adapter-F)
  blend     WiSE-FT of zero-shot and the logreg probe, alpha on val
  auto      the best val accuracy among the methods above (zero-shot first on ties)

Each head is scored raw (T = 1) and calibrated (temperature fitted on known val by NLL). In both cases the
"none of these" threshold on the top probability is chosen on known val for `--target-precision`, then:
  ECE (15 bins), NLL, Brier and accuracy on the known test split;
  accuracy of the accepted known test images, coverage (share of known test images accepted), the share of
  unknown images rejected, AUROC of the top probability as a known-vs-unknown score, and the share of known
  test images kept at the threshold that rejects half the unknowns.

Out-of-set detectors (issue 22, scripts/_detectors.py; `--no-detectors` skips them): for every head, every
detector of toolkit.fitting.openset (kNN and its sums with (relative) Mahalanobis at several k, Mahalanobis,
relative Mahalanobis, energy, max logit, msp, MCM and NegLabel at several temperatures) built on the head's train
features and scored on known test vs unknown images (AUROC, FPR at 95% known kept, unknowns rejected at 90% known
kept), next to its held-out-class AUROC on train + val; the
held-out-class pick (what `train-probe --keep-known` saves) is marked, and scored at its saved threshold.

`--write` puts this known set's subsection under "## Calibration and open-set rejection (issue 16)" in
BENCHMARKS.md (replacing the one for the same known set); other known sets' subsections stay.

    .venv/bin/python scripts/eval_openset.py                    # defaults: a few minutes on 2 cores
    .venv/bin/python scripts/eval_openset.py --json out/openset.json --write
    .venv/bin/python scripts/eval_openset.py --known standing,squat,jumping_jack,plank,pushup,lunge --write
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from _bench import ROOT, machine_note, suite_features, write_section
from _detectors import detector_notes, detectors_table, picks_table, unknowns_by_detector
from _tables import cell, cells, setting_name, stat

METHODS = ("zeroshot", "logreg", "linear", "cache", "cache-f", "blend", "auto")
SECTION = "## Calibration and open-set rejection (issue 16)"
DEFAULT_KNOWN = ("standing", "squat", "jumping_jack", "plank", "pushup", "lunge", "sit_up", "high_knees",
                 "side_plank")
WHEN = ("before", "after")  # raw (T = 1), calibrated (T fitted on val)


# ---------------------------------------------------------------- the core: fit, score

def fit_methods(methods: Sequence[str], classes: Sequence[str], train, val, zeroshot, cfg, identity=None) -> dict:
    """{method: (FitResult, fit seconds)}: each method fitted on train, hyper-parameters on val, never refit on
    val; auto picks among the other methods listed (as `--method auto` does when val is large enough)."""
    from toolkit.fitting.fewshot import choose, fit_head

    fits = {}
    for name in (m for m in methods if m != "auto"):
        t0 = time.perf_counter()
        mcfg = cfg.model_copy(update={"init": "zeroshot" if name == "linear" else "random", "finetune": False})
        fits[name] = (fit_head(name, classes, train, val, zeroshot, mcfg, identity, refit=False),
                      time.perf_counter() - t0)
    if "auto" in methods:
        fits["auto"] = (choose(dict(fits), val[1]), sum(s for _, s in fits.values()))
    return fits


def open_set(p: dict, y_val: np.ndarray, y_test: np.ndarray, unknown_keys: np.ndarray, classes: Sequence[str],
             target_precision: float) -> dict:
    """Rejection on {val, test, unknown} probabilities (n, C): the threshold chosen on val for the target
    precision, then accepted-known accuracy, coverage, unknowns rejected (all and per unknown class), AUROC."""
    from sklearn.metrics import roc_auc_score
    from toolkit.heads.calibration import choose_threshold, selective

    rule = choose_threshold(p["val"].max(axis=1), p["val"].argmax(axis=1) == y_val, target_precision=target_precision)
    conf_t, conf_u = p["test"].max(axis=1), p["unknown"].max(axis=1)
    precision, coverage = selective(conf_t, p["test"].argmax(axis=1) == y_test, rule.threshold)
    rejected = conf_u < rule.threshold
    auroc = roc_auc_score(np.r_[np.ones(len(conf_t)), np.zeros(len(conf_u))], np.r_[conf_t, conf_u])
    guess = p["unknown"].argmax(axis=1)
    by_class = {k: float(rejected[unknown_keys == k].mean()) for k in dict.fromkeys(unknown_keys)}
    taken_as = {k: classes[Counter(guess[unknown_keys == k]).most_common(1)[0][0]] for k in by_class}
    return {"threshold": rule.threshold, "reached": rule.reached, "accepted_accuracy": precision,
            "coverage": coverage, "unknown_rejected": float(rejected.mean()), "auroc": float(auroc),
            # the operating point that rejects half the unknowns (whatever val says): the share of known kept
            "known_kept_at_half": float((conf_t > np.median(conf_u)).mean()),
            "saturated": float((np.r_[conf_t, conf_u] >= 1.0).mean()),  # top probability exactly 1 (float64)
            "unknown_rejected_by_class": by_class, "unknown_taken_as": taken_as}


def score(head, known: dict, unknown: tuple[np.ndarray, np.ndarray], classes: Sequence[str],
          target_precision: float) -> dict:
    """One head, raw and calibrated: {temperature, note, before: {...}, after: {...}}; each holds the known-test
    calibration_metrics (accuracy, ece, nll, brier) and the `open_set` figures."""
    from toolkit.heads.calibration import TemperatureScaler, calibration_metrics, log_softmax

    (X_val, y_val), (X_test, y_test) = known["val"], known["test"]
    logits = {s: np.asarray(head.decision_function(X), np.float64)
              for s, X in (("val", X_val), ("test", X_test), ("unknown", unknown[0]))}
    scaler = TemperatureScaler().fit(logits["val"], y_val)
    out = {"temperature": scaler.temperature_, "note": scaler.note_}
    for when, t in zip(WHEN, (1.0, scaler.temperature_)):
        p = {s: np.exp(log_softmax(z / t)) for s, z in logits.items()}
        out[when] = {**calibration_metrics(p["test"], y_test),
                     **open_set(p, y_val, y_test, np.asarray(unknown[1]), classes, target_precision)}
    return out


def evaluate(methods: Sequence[str], known: dict, unknown: tuple[np.ndarray, np.ndarray], zeroshot, cfg,
             target_precision: float = 0.9, identity=None, detectors: bool = False,
             negatives: Optional[np.ndarray] = None) -> dict:
    """The core: {method: score(...) + fit_s (+ chosen for auto) (+ detectors)} for one training set.

    detectors: also every out-of-set detector of toolkit.fitting.openset per head (_detectors.detector_eval),
    with MCM / NegLabel on the zero-shot class embeddings and `negatives` (negative-word embeddings).

    known: {train, val, test: ((n, D) L2-normalized features, (n,) class indices into zeroshot.classes_)};
    unknown: ((m, D) features of classes outside zeroshot.classes_, (m,) their class names)."""
    classes = list(zeroshot.classes_)
    fits = fit_methods(methods, classes, known["train"], known["val"], zeroshot, cfg, identity)
    out = {}
    for name, (fit, seconds) in fits.items():
        out[name] = {**score(fit.head, known, unknown, classes, target_precision), "fit_s": seconds}
        if fit.selection:
            out[name]["chosen"] = fit.selection["chosen"]
        if detectors:
            from _detectors import detector_eval

            out[name]["detectors"] = detector_eval(fit.head, known, unknown, zeroshot.coef_, negatives,
                                                   seed=cfg.seed)
    return out


# ---------------------------------------------------------------- the suite: data, settings, seeds

def split_known(data: dict, known: Sequence[str]):
    """({split: (X, y)} of the known classes, y indices into `known`; (X, keys) of every unknown image)."""
    pos = {k: i for i, k in enumerate(known)}
    out, unk_x, unk_k = {}, [], []
    for split, (X, keys) in data.items():
        keys = np.asarray(keys)
        mask = np.isin(keys, list(known))
        out[split] = (X[mask], np.asarray([pos[k] for k in keys[mask]], np.int64))
        unk_x.append(X[~mask])
        unk_k.append(keys[~mask])
    return out, (np.concatenate(unk_x), np.concatenate(unk_k))


def run(args, data: dict, extractor, cfg) -> dict:
    """{setting: [one `evaluate` result per seed]} for every --shots setting and --seeds seed."""
    from toolkit.demo import LABELS
    from toolkit.fitting.probe import fewshot_indices
    from toolkit.heads.prompts import resolve_templates
    from toolkit.heads.zeroshot import ZeroShotHead

    known, unknown = split_known(data, args.known)
    zs = ZeroShotHead.from_extractor(extractor, [LABELS[k] for k in args.known], resolve_templates(cfg.prompts))
    negatives = None
    if args.detectors:
        from toolkit.heads.openset import negative_embeddings

        negatives = negative_embeddings(extractor)
    X_tr, y_tr = known["train"]
    out: dict[str, list] = {}
    for shots in args.shots:
        for seed in args.seeds:
            t0 = time.perf_counter()
            rows = np.arange(len(y_tr)) if shots == "all" else fewshot_indices(np.arange(len(y_tr)), y_tr,
                                                                               int(shots), seed)
            pcfg = cfg.probe.model_copy(update={"fewshot": None if shots == "all" else int(shots), "seed": seed})
            res = evaluate(args.methods, {**known, "train": (X_tr[rows], y_tr[rows])}, unknown, zs, pcfg,
                           args.target_precision, extractor.identity, args.detectors, negatives)
            out.setdefault(shots, []).append(res)
            print(f"K={shots} seed {seed}: {time.perf_counter() - t0:.1f} s  " + "  ".join(
                f"{m} AUROC {r['after']['auroc']:.2f}" for m, r in res.items()), file=sys.stderr, flush=True)
    return out


# ---------------------------------------------------------------- tables

def calibration_table(res: dict) -> str:
    lines = ["| setting | method | known test acc. (%) | T | ECE (%) raw → calibrated | NLL raw → calibrated | "
             "Brier raw → calibrated |", "|---|---|---|---|---|---|---|"]
    for shots, runs, m in cells(res):
        pair = [" → ".join(cell(runs, m, w, k, scale=s, digits=d) for w in WHEN)
                for k, s, d in (("ece", 100, 1), ("nll", 1, 2), ("brier", 1, 3))]
        lines.append(f"| {setting_name(shots)} | {m} | {cell(runs, m, 'after', 'accuracy')} | "
                     f"{cell(runs, m, 'temperature', scale=1, digits=2)} | " + " | ".join(pair) + " |")
    return "\n".join(lines)


def openset_table(res: dict) -> str:
    lines = ["| setting | method | scores | threshold | acc. on accepted known (%) | known coverage (%) | "
             "unknowns rejected (%) | AUROC known vs unknown | known kept if half the unknowns are rejected (%) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for shots, runs, m in cells(res):
        for w in WHEN:
            lines.append(f"| {setting_name(shots)} | {m} | {'raw' if w == 'before' else 'calibrated'} | "
                         f"{cell(runs, m, w, 'threshold', scale=1, digits=2)} | "
                         f"{cell(runs, m, w, 'accepted_accuracy')} | {cell(runs, m, w, 'coverage')} | "
                         f"{cell(runs, m, w, 'unknown_rejected')} | {cell(runs, m, w, 'auroc', scale=1, digits=3)} | "
                         f"{cell(runs, m, w, 'known_kept_at_half')} |")
    return "\n".join(lines)


def unknowns_table(res: dict, shots: str) -> str:
    """Per unknown class (calibrated, one setting): the share rejected by each method, and what zero-shot and
    logreg take it for most often (first seed)."""
    runs = res["runs"][shots]
    methods = list(runs[0])
    lines = ["| unknown class | " + " | ".join(methods) + " | zero-shot takes it for | logreg takes it for |",
             "|---|" + "---|" * (len(methods) + 2)]
    for k in runs[0][methods[0]]["after"]["unknown_rejected_by_class"]:
        shares = [cell(runs, m, "after", "unknown_rejected_by_class", k, digits=0) for m in methods]
        taken = [runs[0][m]["after"]["unknown_taken_as"][k] if m in runs[0] else "-" for m in ("zeroshot", "logreg")]
        lines.append(f"| {k} | " + " | ".join(shares) + f" | {taken[0]} | {taken[1]} |")
    return "\n".join(lines)


def calibration_notes(res: dict) -> list[str]:
    """Where temperature scaling didn't lower test ECE / NLL, where T hit its search bound, where raw scores
    saturate (means over seeds)."""
    from toolkit.heads.calibration import T_BOUNDS

    rows, worse, bound, sat = [(setting_name(sh), r, m) for sh, r, m in cells(res)], [], [], []
    lowered = sum(stat(r, m, "after", "nll")[0] < stat(r, m, "before", "nll")[0] for _, r, m in rows)
    for name, runs, m in rows:
        (eb, _), (ea, _), (nb, _), (na, _) = (stat(runs, m, w, k) for k in ("ece", "nll") for w in WHEN)
        if ea > eb or na > nb:
            worse.append(f"{name} {m} (T {stat(runs, m, 'temperature')[0]:.2f}: ECE {100 * eb:.1f} → {100 * ea:.1f}%, "
                         f"NLL {nb:.2f} → {na:.2f})")
        hits = sum("search bound" in r[m]["note"] for r in runs)
        if hits:
            bound.append(f"{name} {m} ({hits} of {len(runs)} seeds)")
        share = stat(runs, m, "before", "saturated")[0]
        if share > 0.05:
            sat.append(f"{name} {m} {100 * share:.0f}%")
    out = [f"temperature scaling lowered the mean test NLL in {lowered} of {len(rows)} rows"]
    if worse:
        out.append("it raised test ECE or NLL (a T fitted on val that doesn't carry over to test) in: " + "; ".join(worse))
    if bound:
        out.append(f"T stopped at its search bound ({T_BOUNDS[0]:g}..{T_BOUNDS[1]:g}), so it couldn't rescale those "
                   "heads' logits enough (their calibrated ECE above shows what is left) in: " + "; ".join(bound))
    if sat:
        out.append("raw top probability is exactly 1 in float64 (tied, so a raw threshold can't rank those images; "
                   "calibrated scores can) for this share of test images: " + ", ".join(sat))
    return out


def rejection_notes(res: dict) -> list[str]:
    """How far the top probability separates unknowns, whether the val target held on test, which unknowns pass."""
    out, target, rows = [], res["target_precision"], [(setting_name(sh), r, m) for sh, r, m in cells(res)]
    aurocs = {(name, m): stat(runs, m, "after", "auroc")[0] for name, runs, m in rows}
    (name, m), best = max(aurocs.items(), key=lambda kv: kv[1])
    moved = max(abs(stat(r, m, "after", "auroc")[0] - stat(r, m, "before", "auroc")[0]) for _, r, m in rows)
    out.append(f"best calibrated AUROC {best:.3f} ({name}, {m})" + (": no head's top probability tells these unknowns "
               "from the known classes well" if best < 0.65 else "") + f"; temperature moved a mean AUROC by up to "
               f"{moved:.3f} (it reorders top probabilities across images, so it can)")
    under = [stat(runs, m, "after", "accepted_accuracy")[0] for _, runs, m in rows]
    if min(under) < target:
        out.append(f"the {100 * target:.0f}% precision chosen on val held on test in {sum(u >= target for u in under)}"
                   f" of {len(rows)} rows (calibrated; lowest {100 * min(under):.1f}%): {res['counts']['val']} val "
                   "images fix the threshold, and the lowest one that reaches the target there is optimistic")
    idle = [f"{name} {m}" for name, runs, m in rows if stat(runs, m, "after", "coverage")[0] >= 0.95
            and stat(runs, m, "after", "unknown_rejected")[0] < 0.1]
    if idle:
        out.append(f"in {len(idle)} of {len(rows)} rows the calibrated threshold keeps 95%+ of known test images and "
                   "rejects under 10% of unknowns: the head already reaches the target precision on known val, and "
                   "val holds no unknowns to ask for more")
    return out + unknown_notes(res)


def unknown_notes(res: dict) -> list[str]:
    """The unknown classes auto (or the last method) rejects least, in the first setting, and what it calls them."""
    shots = next(iter(res["runs"]))
    runs = res["runs"][shots]
    m = "auto" if "auto" in runs[0] else list(runs[0])[-1]
    rows = [(stat(runs, m, "after", "unknown_rejected_by_class", k)[0], k)
            for k in runs[0][m]["after"]["unknown_rejected_by_class"]]
    low = [f"{k} {100 * share:.0f}% (taken for '{runs[0][m]['after']['unknown_taken_as'][k]}')"
           for share, k in sorted(rows) if share < 0.5]
    return [f"{setting_name(shots)}, {m}, calibrated: unknowns mostly accepted: " + ", ".join(low)] if low else []


def notes(res: dict) -> list[str]:
    return calibration_notes(res) + rejection_notes(res)


INTRO = """Every head trained on the known classes of the demo generator's novel suite, then shown known test images
and images of classes it never saw (unknown: held out of training, val and calibration). Raw = softmax at T = 1;
calibrated = temperature fitted on known val by NLL (toolkit.heads.calibration). The "none of these" threshold on the top
probability is chosen on known val for the target precision, separately for raw and calibrated scores (as
`train-probe --target-precision` does), so it is tuned for the precision of accepted known images: val holds no
unknowns. Accuracy on accepted known images and coverage are on the known test split; "unknowns rejected" is the
share of unknown images under the threshold; AUROC scores the top probability as a known-vs-unknown detector (0.5 =
chance), and the last column is the share of known test images kept at the threshold that rejects half the
unknowns. ECE has 15 equal-width bins. Methods as in scripts/eval_heads.py (auto picks among the others on val);
no method refits on val, which stays held out for the temperature and the threshold."""


DETECTORS_INTRO = """**Out-of-set detectors** (issue 22, toolkit.heads.openset): each scores how familiar an image is
from the features (kNN: cosine to the k-th nearest training feature; Mahalanobis: class means, one shared
covariance; relmahalanobis: the relative Mahalanobis score of Ren et al. 2021, minus the distance to one Gaussian
of all training features), from the head's logits (energy, max logit, top softmax probability: msp), or from the
text side (MCM: top softmax of cosine to the class texts at temperature T; NegLabel: the class texts' softmax mass
among class texts + the mined negative words of toolkit/heads/negative_words.txt), or kNN + Mahalanobis (combined)
and kNN + relative Mahalanobis (combined_rel): the sum of the two, each z-normalised by its mean and std on known
val. k runs over 1-70 and the smallest class's image count in the bank (16 at K=16). The pick is chosen without
unknowns by holding each known class out in turn (toolkit.fitting.openset: built on the other classes' train
features, scored on their val images against the held-out class's images), among the kNN, combined and
combined_rel settings (the default: the held-out classes flatter Mahalanobis and the logit and text scores alone,
see the table) with k at most that class count, by the one-standard-error rule: of the settings within one
standard error (across held-out classes) of the best held-out AUROC, the largest k, then combined_rel, combined,
kNN; it is thresholded to keep 95% of known val
(`--keep-known 0.95`). AUROC: known test vs unknown images (0.5 = chance); FPR at 95% known kept: the share of
unknowns accepted at the test threshold that keeps 95% of known test images (lower is better); "unknowns rejected
at 90% known kept" likewise at 90%."""


def subsection(known: Sequence[str]) -> str:
    return f"### {len(known)} known classes: {', '.join(known)}"


def markdown(res: dict, args, timings: dict) -> str:
    """This run's subsection (no headings inside, so write_section can replace it)."""
    cmd = " ".join([".venv/bin/python scripts/eval_openset.py", *res["command"][1:]])
    n = res["counts"]
    first = next(iter(res["runs"]))
    lines = [subsection(args.known), "", "```", cmd, "```", "",
             f"Novel suite (generation seed {args.seed}, {args.n} images per class, 70/15/15), encoded once with the "
             f"demo model. Unknown ({len(res['unknown'])}): {', '.join(res['unknown'])}. Known images: train "
             f"{n['train']} (the K-shot pool), val {n['val']} (hyper-parameters, temperature, threshold), test "
             f"{n['test']}; unknown images: {n['unknown']} (every split of the unknown classes). Mean ± std over "
             f"seeds {', '.join(map(str, args.seeds))} (the K-shot draw and the fitting seed; val and test stay "
             f"fixed, so the std is the training's share of the noise, not the split's). Target precision "
             f"{args.target_precision:g}. Generated in {timings['generate_s']:.0f} s, encoded in "
             f"{timings['extract_s']:.0f} s, total {timings['total_s']:.0f} s; "
             f"{res.get('machine') or machine_note()}.", "",
             "**Calibration on the known test split** (T: the fitted temperature; accuracy doesn't change with T):",
             "", calibration_table(res), "", "**Open set** (known test + unknown images):", "", openset_table(res), "",
             f"**Which unknowns get through** ({setting_name(first)}, calibrated, share rejected in %):", "",
             unknowns_table(res, first), "", "Read from the means above (computed by the script):", ""]
    lines += [f"- {line}" for line in notes(res)]
    if any(r.get("detectors") for runs in res["runs"].values() for r in runs[0].values()):
        refreshed = res.get("refreshed")
        if refreshed:  # the detector figures are newer than the heads' ones: say how they were made
            lines += ["", "The out-of-set figures below were brought up to date without fitting the heads again (their "
                      "calibration figures above and their logit-score rows, energy, max logit and msp, are the run "
                      "above's; everything from features and text, and so every pick, is recomputed; "
                      f"{refreshed['machine']}, a machine shared with other jobs, so no timings):", "", "```",
                      " ".join([".venv/bin/python scripts/eval_openset.py", *refreshed["command"][1:]]), "```"]
        lines += ["", DETECTORS_INTRO, "", "**The held-out-class pick per head** (test figures; the threshold is the "
                  "one saved with the head):", "", picks_table(res), "",
                  "**Every detector** (kNN, (relative) Mahalanobis, the sums, MCM and NegLabel use only features "
                  "and text, so one row serves every head; picked, bold: how many (head, seed) held-out-class "
                  "selections picked it among the kNN and sum settings, the default; best held out: how often it had "
                  "the best "
                  "held-out-class AUROC of all detectors, the pick if every kind were allowed):", "",
                  detectors_table(res), "",
                  f"**Which unknowns the pick still passes** ({setting_name(first)}, share rejected at the saved "
                  "threshold, %):", "", unknowns_by_detector(res, first, list(res["runs"][first][0])), "",
                  "Read from the means above (computed by the script):", ""]
        lines += [f"- {line}" for line in detector_notes(res)]
    return "\n".join(lines) + "\n"


def write(path: Path, known: Sequence[str], text: str) -> None:
    """The parent section's intro, and this known set's subsection under it: replaced where it is, or a new one
    added after the parent's last subsection. Atomic writes."""
    write_section(path, SECTION, f"{SECTION}\n\n{INTRO}\n")  # adds the parent, or refreshes its intro only
    doc = path.read_text()
    if subsection(known) in doc:
        write_section(path, subsection(known), text)
        return
    end = doc.find("\n## ", doc.index(SECTION) + len(SECTION))
    end = len(doc) if end < 0 else end + 1
    doc = doc[:end].rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n" + ("\n" + doc[end:] if end < len(doc) else "")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(doc)
    tmp.replace(path)


def parse_args(argv: Optional[Sequence[str]] = None):
    from toolkit.demo.dataset import parse_classes

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    ap.add_argument("--classes", default="all", help="novel-suite classes: 'all' (15), 'default' (13) or keys")
    ap.add_argument("--known", default=",".join(DEFAULT_KNOWN), help="comma-separated known class keys")
    ap.add_argument("--n", type=int, default=100, help="images per class (70/15/15 train/val/test)")
    ap.add_argument("--seed", type=int, default=0, help="generation seed of the images")
    ap.add_argument("--shots", nargs="+", default=["16", "all"], help="K per known class, or 'all' of train")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--target-precision", type=float, default=0.9)
    ap.add_argument("--no-detectors", dest="detectors", action="store_false",
                    help="skip the out-of-set detectors (issue 22): top-probability figures only")
    ap.add_argument("--json", type=Path, default=None, help="write every seed's figures here")
    ap.add_argument("--write", action="store_true", help="write the section into BENCHMARKS.md")
    ap.add_argument("--from-json", type=Path, default=None,
                    help="render the tables (and --write) from a --json file of an earlier run, computing nothing")
    ap.add_argument("--refresh-detectors", type=Path, default=None,
                    help="an earlier run's --json: recompute its out-of-set figures from features and text (the "
                         "pick included), keep its heads' figures and logit scores (nothing is fitted again)")
    ap.add_argument("--features", type=Path, default=None,
                    help="keep the suite's encoded images in this .npz (read back by later runs with the same "
                         "options) instead of generating and encoding them every run")
    args = ap.parse_args(argv)
    args.classes = parse_classes(args.classes, "novel")
    args.known = parse_classes(args.known, "novel")
    bad = [k for k in args.known if k not in args.classes]
    if bad or len(args.known) < 2 or len(args.known) == len(args.classes):
        ap.error(f"--known {','.join(args.known)} must be 2 or more of --classes ({','.join(args.classes)}), "
                 "leaving at least one unknown")
    if any(s != "all" and not (s.isdigit() and int(s) > 0) for s in args.shots):
        ap.error(f"--shots {' '.join(args.shots)}: give positive integers or 'all'")
    if not 0 < args.target_precision <= 1:
        ap.error(f"--target-precision {args.target_precision} must be in (0, 1], e.g. 0.9")
    return args


def features(args):
    """_bench.suite_features for these options, or (with --features) the encoded images kept in that .npz file:
    written the first time, read back when it was made with the same config, classes, n and seed."""
    options = json.dumps([args.config, list(args.classes), args.n, args.seed])
    if args.features is not None and args.features.is_file():
        from toolkit.config import load_config
        from toolkit.encoder.features import FeatureExtractor

        z = np.load(args.features)
        if str(z["options"]) != options:
            raise SystemExit(f"--features {args.features} was made with other options ({z['options']}); "
                             "give another file")
        cfg = load_config(args.config, {"model.device": "cpu"})
        data = {s: (z[f"{s}_X"], z[f"{s}_k"].tolist()) for s in ("train", "val", "test")}
        return data, FeatureExtractor.from_config(cfg.model), cfg, {k: float(z[k]) for k in ("generate_s", "extract_s")}
    data, extractor, cfg, timings = suite_features(args.config, "novel", args.classes, args.n, args.seed)
    if args.features is not None:
        args.features.parent.mkdir(parents=True, exist_ok=True)
        np.savez(args.features, options=options, **timings,
                 **{f"{s}_{p}": np.asarray(v) for s, xk in data.items() for p, v in zip("Xk", xk)})
    return data, extractor, cfg, timings


def refresh_detectors(res: dict, args, data: dict, extractor, cfg) -> dict:
    """An earlier run's document with every head's out-of-set figures brought up to date without fitting the
    heads again: the scores from features and text (and so the pick) recomputed per setting and seed
    (_detectors.detector_eval without a head), each head's own logit-score rows kept (_detectors.refresh)."""
    from _detectors import detector_eval, refresh
    from toolkit.demo import LABELS
    from toolkit.fitting.probe import fewshot_indices
    from toolkit.heads.openset import negative_embeddings
    from toolkit.heads.prompts import resolve_templates
    from toolkit.heads.zeroshot import ZeroShotHead

    known, unknown = split_known(data, args.known)
    zs = ZeroShotHead.from_extractor(extractor, [LABELS[k] for k in args.known], resolve_templates(cfg.prompts))
    negatives = negative_embeddings(extractor)
    X_tr, y_tr = known["train"]
    for shots, runs in res["runs"].items():
        for seed, r in zip(res["seeds"], runs):
            rows = np.arange(len(y_tr)) if shots == "all" else fewshot_indices(np.arange(len(y_tr)), y_tr,
                                                                               int(shots), seed)
            shared = detector_eval(None, {**known, "train": (X_tr[rows], y_tr[rows])}, unknown, zs.coef_, negatives,
                                   seed=seed, classes=zs.classes_)
            for out in r.values():
                if out.get("detectors"):
                    out["detectors"] = refresh(out["detectors"], shared)
    res["refreshed"] = {"command": sys.argv, "machine": machine_note()}
    return res


def compute(args) -> dict:
    """Generate, encode, fit and score (`run`): the result document that --json keeps."""
    t0 = time.perf_counter()
    data, extractor, cfg, timings = features(args)
    runs = run(args, data, extractor, cfg)
    timings["total_s"] = time.perf_counter() - t0
    known, unknown = split_known(data, args.known)
    return {"runs": runs, "known": args.known, "unknown": list(dict.fromkeys(unknown[1].tolist())),
            "counts": {**{s: int(len(y)) for s, (_, y) in known.items()}, "unknown": int(len(unknown[1]))},
            "target_precision": args.target_precision, "seeds": args.seeds, "timings": timings,
            "machine": machine_note(), "command": sys.argv}


def main() -> None:
    args = parse_args()
    if args.from_json or args.refresh_detectors:  # the earlier run's own options (known set, seeds, ...)
        res = json.loads((args.from_json or args.refresh_detectors).read_text())
        given, args = args, parse_args(res["command"][1:])
        args.write, args.json, args.features = given.write, given.json if given.refresh_detectors else None, \
            given.features
        if given.refresh_detectors:
            res = refresh_detectors(res, args, *features(args)[:3])
    else:
        res = compute(args)
    timings = res["timings"]
    print(calibration_table(res), openset_table(res), unknowns_table(res, args.shots[0]), sep="\n\n")
    print("\n".join(notes(res)))
    if args.detectors:
        print(picks_table(res), "\n".join(detector_notes(res)), sep="\n\n")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2))
    if args.write:
        write(ROOT / "BENCHMARKS.md", args.known, markdown(res, args, timings))


if __name__ == "__main__":
    main()
