"""Multi-label: zero-shot vs trained heads on the demo's multi-label suite, over shots per class and seeds.

Generates the suite (`clipkit demo-data --suite multilabel`) if missing, extracts its features once into a store,
then for K in --shots and each seed fits the one-vs-rest logreg head (one shared C, features re-centred), its
blend with zero-shot (uncentred) and the cache head (zero-shot + a vote of the training images, alpha per class
and beta on val) on K positive images per class (their union), with per-class Platt calibration and per-class
thresholds (best F1) on val, and
scores on test: mAP over all classes and over the attribute labels alone, micro/macro F1 at the per-class
thresholds, at one global threshold chosen on val, and at the best global threshold on test itself (an oracle).
Zero-shot is the multi-label zero-shot head (positive prompt = class name, negative = "a person"), calibrated
and thresholded on the same val images. Also the per-class calibration error (ECE) of the 16-shot logreg head,
before and after Platt scaling.

Usage:
  .venv/bin/python scripts/eval_multilabel.py --config configs/demo.yaml --data out/multilabel \
      --json docs/multilabel.json --plot docs/multilabel_curve.png
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from toolkit.config import load_config  # noqa: E402
from toolkit.demo.attributes import ATTRIBUTES  # noqa: E402
from toolkit.evaluation.multilabel import (  # noqa: E402
    average_precision, best_global_threshold, binary_ece, decide, f1_scores,
)
from toolkit.fitting.multilabel import finish_head  # noqa: E402
from toolkit.fitting.multilabel_probe import fewshot_rows, fit_multilabel  # noqa: E402
from toolkit.heads.multilabel import sigmoid  # noqa: E402


def build(args):
    """(store, multi-label zero-shot head) for the suite; generated and extracted when missing."""
    from toolkit.data.extraction import extract_store
    from toolkit.data.multilabel import load_multilabel
    from toolkit.encoder.features import FeatureExtractor
    from toolkit.heads.multilabel import MultiLabelZeroShotHead
    from toolkit.heads.prompts import resolve_templates

    data = Path(args.data)
    if not data.exists():
        subprocess.run([sys.executable, "-c", "from toolkit.cli import main; main()", "demo-data", str(data),
                        "--suite", "multilabel", "--n-per-class", str(args.n_per_class), "--size", str(args.size),
                        "--seed", "0"], check=True, cwd=ROOT)
    cfg = load_config(args.config)
    extractor = FeatureExtractor.from_config(cfg.model)
    store = extract_store(extractor, load_multilabel(data / "labels.csv"), data.parent / f"{data.name}-features")
    negatives = {c: args.negative for c in store.classes}
    zs = MultiLabelZeroShotHead.from_extractor(extractor, store.classes, resolve_templates(cfg.prompts), negatives)
    return store, zs


def score(head, X_val, Y_val, X_test, Y_test, attr_idx) -> dict:
    """Test metrics of a finished head: mAP (all, attributes), F1 per-class / global-on-val / oracle global."""
    p_val, p_test = head.predict_proba(X_val), head.predict_proba(X_test)
    ap = average_precision(p_test, Y_test)
    per = f1_scores(decide(p_test, head.thresholds_), Y_test)
    g_val, _ = best_global_threshold(p_val, Y_val)
    g_on_val = f1_scores(decide(p_test, g_val), Y_test)
    g_oracle, oracle_f1 = best_global_threshold(p_test, Y_test)
    return {"mAP": float(np.nanmean(ap)), "mAP_attributes": float(np.nanmean(ap[attr_idx])),
            "mAP_exercises": float(np.nanmean(np.delete(ap, attr_idx))),
            "micro_f1": per["micro_f1"], "macro_f1": per["macro_f1"],
            "macro_f1_global_val": g_on_val["macro_f1"], "global_threshold_val": g_val,
            "macro_f1_global_oracle": oracle_f1, "global_threshold_oracle": g_oracle}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    ap.add_argument("--data", default=str(ROOT / "out" / "multilabel"))
    ap.add_argument("--n-per-class", type=int, default=150, help="demo-data --n-per-class (x 4 images)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--shots", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--methods", nargs="+", default=["logreg", "blend", "cache"])
    ap.add_argument("--per-class-c", action="store_true", help="logreg/blend: one C per class (default: shared)")
    ap.add_argument("--negative", default="a person", help="the negative prompt of every class")
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None)
    args = ap.parse_args()

    t0 = time.perf_counter()
    store, zs = build(args)
    classes = store.classes
    attr_idx = [classes.index(t) for t in ATTRIBUTES.values()]
    from toolkit.data.multilabel import store_targets

    Y = store_targets(store)
    idx = {s: store.split_indices(s) for s in ("train", "val", "test")}
    X = {s: np.asarray(store.features[i], np.float32) for s, i in idx.items()}
    Ys = {s: Y[i] for s, i in idx.items()}
    print(f"{len(store)} images, {len(classes)} classes; train {len(idx['train'])}, val {len(idx['val'])}, "
          f"test {len(idx['test'])}; setup {time.perf_counter() - t0:.1f} s", flush=True)

    zs_head = finish_head(zs, zs.decision_function(X["val"]), Ys["val"], "platt")
    rows = [{"method": "zeroshot", "shots": 0, "seed": 0, **score(zs_head, X["val"], Ys["val"], X["test"],
                                                                  Ys["test"], attr_idx)}]
    ece = {}
    for k in args.shots:
        for seed in range(args.seeds):
            train = fewshot_rows(np.arange(len(idx["train"])), Ys["train"], k, seed)
            data = {"train": (X["train"][train], Ys["train"][train]), "val": (X["val"], Ys["val"])}
            for method in args.methods:
                t = time.perf_counter()
                head, fit = fit_multilabel(method, data, classes, zs, store.identity, per_class_c=args.per_class_c)
                rows.append({"method": method, "shots": k, "seed": seed, "n_train": int(len(train)),
                             "fit_s": round(time.perf_counter() - t, 2),
                             **score(head, X["val"], Ys["val"], X["test"], Ys["test"], attr_idx)})
                if k == max(args.shots) and seed == 0 and method == "logreg":
                    raw = sigmoid(head.decision_function(X["test"]))
                    ece = {"before": dict(zip(classes, binary_ece(raw, Ys["test"]).round(4).tolist())),
                           "after": dict(zip(classes, binary_ece(head.predict_proba(X["test"]),
                                                                 Ys["test"]).round(4).tolist()))}
            done = rows[-len(args.methods):]
            print(f"K={k:>2} seed {seed}: " + ", ".join(
                f"{r['method']} mAP {100 * r['mAP']:.1f} attr {100 * r['mAP_attributes']:.1f}" for r in done), flush=True)
    summary = table(rows, args.methods, args.shots)
    print(summary)
    print("per-class ECE of the logreg head at", max(args.shots), "shots (test), raw sigmoid -> Platt:")
    for c in classes:
        print(f"  {c:<36} {ece['before'][c]:.3f} -> {ece['after'][c]:.3f}")
    doc = {"rows": rows, "ece": ece, "classes": classes, "args": vars(args), "total_s": time.perf_counter() - t0}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(doc, indent=2))
    if args.plot:
        plot(rows, args.methods, args.shots, args.plot)
    print(f"total {time.perf_counter() - t0:.0f} s")


def plot(rows: list[dict], methods: list[str], shots: list[int], path: str) -> None:
    """mAP on the attribute labels and on all labels against shots per class (mean over seeds, +- std band)."""
    from toolkit.evaluation.plots import curve_png

    series, errors = {}, {}
    zs = next(r for r in rows if r["method"] == "zeroshot")
    for key, what in (("mAP_attributes", "attributes"), ("mAP", "all labels")):
        series[f"zero-shot ({what})"] = (shots, [100 * zs[key]] * len(shots))
        for m in methods:
            v = [[100 * r[key] for r in rows if r["method"] == m and r["shots"] == k] for k in shots]
            series[f"{m} ({what})"] = (shots, [float(np.mean(x)) for x in v])
            errors[f"{m} ({what})"] = [float(np.std(x)) for x in v]
    curve_png(series, path, "multi-label demo suite: test mAP against shots per class", "positive images per class",
              "mAP (%)", logx=True, ylim=(0, 100), errors=errors)


def table(rows: list[dict], methods: list[str], shots: list[int]) -> str:
    """Markdown: mean +- std over seeds per (method, K) of mAP, attribute mAP, macro-F1 (per-class, global)."""
    keys = ("mAP", "mAP_attributes", "mAP_exercises", "micro_f1", "macro_f1", "macro_f1_global_val",
            "macro_f1_global_oracle")
    lines = ["| method | shots | " + " | ".join(keys) + " | mAP_attributes, worst seed |",
             "|---" * (len(keys) + 3) + "|"]
    groups = [("zeroshot", 0)] + [(m, k) for m in methods for k in shots]
    for m, k in groups:
        sel = [r for r in rows if r["method"] == m and r["shots"] == k]
        cells = []
        for key in keys:
            v = 100 * np.asarray([r[key] for r in sel])
            cells.append(f"{v.mean():.1f}" + (f" ± {v.std():.1f}" if len(v) > 1 else ""))
        worst = 100 * min(r["mAP_attributes"] for r in sel)
        lines.append(f"| {m} | {k or '-'} | " + " | ".join(cells) + f" | {worst:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
