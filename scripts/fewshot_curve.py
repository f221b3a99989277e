"""Zero-shot vs linear probe on the demo dataset, and a few-shot curve (1, 2, 4, 8, 16 shots per class).

Generates the demo dataset if it is missing (`clipkit demo-data`), extracts its features once into a
store (reused on later runs), then trains probes on the store: the full train split, and K examples per
class for each K over several seeds (mean and spread). The zero-shot classifier, prompted with the class
names and the config's templates, is scored on the same test split.

Usage:
  .venv/bin/python scripts/fewshot_curve.py --config configs/demo.yaml --data out/demo6 --plot docs/fewshot_curve.png
  .venv/bin/python scripts/fewshot_curve.py --methods logreg linear --seeds 5
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
from toolkit.data.datasets import load_dataset  # noqa: E402
from toolkit.fitting.probe import train_probe  # noqa: E402


def ensure_demo_data(path: Path, n_per_class: int, seed: int, classes: str) -> None:
    if path.exists():
        return
    cmd = [sys.executable, "-c", "from toolkit.cli import main; main()", "demo-data", str(path),
           "--n-per-class", str(n_per_class), "--seed", str(seed), "--classes", classes]
    subprocess.run(cmd, check=True, cwd=ROOT)


def keys_manifest(data: Path) -> Path:
    """A CSV manifest of the demo data labelled by exercise key ('squat') instead of label text
    ('a person repeating a squat'): label names the model never saw in a prompt, as a user's own would be."""
    import csv

    with open(data / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    out = data / "keys.csv"
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        w.writerows([r["path"], r["exercise"], r["split"]] for r in rows)
    return out


def build(args):
    """(store, zero-shot head, config) for the demo data."""
    from toolkit.encoder.features import FeatureExtractor
    from toolkit.heads.prompts import resolve_templates
    from toolkit.data.extraction import extract_store
    from toolkit.heads.zeroshot import ZeroShotHead

    cfg = load_config(args.config, {"model.device": "cpu"})
    ensure_demo_data(args.data, args.n_per_class, args.data_seed, args.demo_classes)
    dataset = load_dataset(keys_manifest(args.data) if args.label_names == "keys" else args.data, seed=0)
    extractor = FeatureExtractor.from_config(cfg.model)
    t0 = time.perf_counter()
    store = extract_store(extractor, dataset, args.store, progress=True)
    print(f"store {store.path}: {len(store)} x {store.features.shape[1]} "
          f"({'reused' if store.reused else f'extracted in {time.perf_counter() - t0:.0f} s'})", file=sys.stderr)
    zs = ZeroShotHead.from_extractor(extractor, store.classes, resolve_templates(cfg.prompts))
    return store, zs, cfg


def curve(store, zs, cfg, methods, shots, seeds) -> dict:
    out: dict = {"full": {}, "fewshot": {}}
    for method in methods:
        init = "zeroshot" if method == "linear" else "random"
        pcfg = cfg.probe.model_copy(update={"method": method, "init": init, "fewshot": None})
        r = train_probe(store, pcfg, zs)
        out["full"][method] = {"test_accuracy": r.metrics["test"]["accuracy"], "n_train": r.params["n_train"],
                               "fit_s": r.timings["fit_s"]}
        out["zeroshot"] = r.metrics["zeroshot_test"]["accuracy"]
        out["n_test"] = r.metrics["test"]["n"]
        for k in shots:
            accs = []
            for s in range(seeds):
                fcfg = pcfg.model_copy(update={"fewshot": k, "seed": s})
                accs.append(train_probe(store, fcfg, zs).metrics["test"]["accuracy"])
            out["fewshot"].setdefault(method, {})[k] = {"mean": float(np.mean(accs)), "std": float(np.std(accs)),
                                                         "runs": accs}
            print(f"{method} {k}-shot: {100 * np.mean(accs):.1f}% +- {100 * np.std(accs):.1f}", file=sys.stderr)
    return out


def markdown(res: dict, shots, seeds: int) -> str:
    methods = list(res["full"])
    lines = [f"Test split: {res['n_test']} images. Zero-shot accuracy: **{100 * res['zeroshot']:.1f}%**.", "",
             "| probe | train images | test accuracy | gain over zero-shot (points) | fit time (s) |",
             "|---|---|---|---|---|"]
    for m, r in res["full"].items():
        label = f"{m} (init zeroshot)" if m == "linear" else m
        lines.append(f"| {label} | {r['n_train']} | {100 * r['test_accuracy']:.1f}% | "
                     f"{100 * (r['test_accuracy'] - res['zeroshot']):+.1f} | {r['fit_s']:.1f} |")
    lines += ["", f"Few-shot (mean +- std over {seeds} seeds of the K-shot draw):", "",
              "| shots per class | zero-shot | " + " | ".join(m + (" (init zeroshot)" if m == "linear" else "")
                                                         for m in methods) + " |", "|---" * (2 + len(methods)) + "|"]
    for k in shots:
        cells = [f"{100 * res['fewshot'][m][k]['mean']:.1f}% +- {100 * res['fewshot'][m][k]['std']:.1f}" for m in methods]
        lines.append(f"| {k} | {100 * res['zeroshot']:.1f}% | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(res: dict, shots, path: Path) -> None:
    from toolkit.evaluation.plots import curve_png

    series = {"zero-shot": (list(shots), [100 * res["zeroshot"]] * len(shots))}
    for m, per_k in res["fewshot"].items():
        name = f"{m}" + (" (init zeroshot)" if m == "linear" else "")
        series[name] = (list(shots), [100 * per_k[k]["mean"] for k in shots])
    path.parent.mkdir(parents=True, exist_ok=True)
    curve_png(series, path, "demo dataset: few-shot heads vs zero-shot", "shots per class",
              "test accuracy (%)", logx=True, ylim=(0, 100))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    ap.add_argument("--data", type=Path, default=ROOT / "out" / "demo")
    ap.add_argument("--store", type=Path, default=None, help="[default: DATA-features]")
    ap.add_argument("--n-per-class", type=int, default=100, help="when generating the demo data")
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--demo-classes", default="all", help="when generating: exercise keys or 'all' (the demo "
                    "model was trained on 4 of the 6; push-up and lunge are new to it)")
    ap.add_argument("--label-names", choices=["text", "keys"], default="text",
                    help="class names (and so zero-shot prompts): the label text, or the short exercise keys")
    ap.add_argument("--methods", nargs="+", default=["logreg"], choices=["logreg", "linear", "cache", "blend", "auto"],
                    help="train-probe methods (linear starts from the zero-shot weights); every head on the "
                         "novel suite: scripts/eval_heads.py")
    ap.add_argument("--shots", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--plot", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    args.store = args.store or args.data.with_name(f"{args.data.name}-{args.label_names}-features")
    store, zs, cfg = build(args)
    res = curve(store, zs, cfg, args.methods, args.shots, args.seeds)
    print(markdown(res, args.shots, args.seeds))
    if args.plot:
        plot(res, args.shots, args.plot)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
