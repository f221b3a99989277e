"""Every head against zero-shot on the demo generator's novel suite, over K training images per class.

The suite (`clipkit demo-data OUT --suite novel`: the exercises the demo model was trained on next to ones it
never saw, drawn in a shifted style) is generated into a temporary folder and its features are extracted once
with the demo model (configs/demo.yaml). Each class's images are split once into a train pool, a fixed val and
a fixed test split; for each K in --shots and each of --draws draws (seeds 0..draws-1) of K training images per
class, every head is fitted on those K x C images, its hyper-parameters chosen on val, and scored on test:

  zeroshot  the class names as prompts (the config's templates); no training
  logreg    logistic regression, C swept on val (the CLIP paper's linear probe)
  linear    a linear layer started from the zero-shot weights (Lightning, AdamW, weight decay on val)
  cache     Tip-Adapter: zero-shot logits + a cache of the training features; alpha, beta on val
  cache-f   Tip-Adapter-F: the cache's keys fine-tuned (early stopping on val), alpha, beta searched again
  blend     WiSE-FT: (1 - alpha) zero-shot + alpha logreg probe, alpha on val
  auto      the best val accuracy among all of the above, zero-shot first on ties (`--method auto`)

    .venv/bin/python scripts/eval_heads.py                      # K 1 2 4 8 16, 3 draws, table on stdout
    .venv/bin/python scripts/eval_heads.py --json out/heads.json --plot docs/fewshot_heads.png --write
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _bench import ROOT, machine_note, write_section

METHODS = ("zeroshot", "logreg", "linear", "cache", "cache-f", "blend", "auto")
SECTION = "## Few-shot heads on the novel suite (issue 15)"


def build(args, workdir: Path):
    """(store, zero-shot head in the store's class order, probe config, timings) for the generated suite."""
    from toolkit.config import load_config
    from toolkit.data.datasets import load_dataset
    from toolkit.demo.dataset import parse_classes, write_imagefolder
    from toolkit.encoder.features import FeatureExtractor
    from toolkit.heads.prompts import resolve_templates
    from toolkit.data.extraction import extract_store
    from toolkit.heads.zeroshot import ZeroShotHead

    cfg = load_config(args.config, {"model.device": "cpu"})
    t0 = time.perf_counter()
    keys = parse_classes(args.classes or "default", args.suite)
    n = args.train + args.val + args.test
    write_imagefolder(workdir / "data", n, args.seed, keys, split=(args.train / n, args.val / n, args.test / n),
                      suite=args.suite)
    t1 = time.perf_counter()
    extractor = FeatureExtractor.from_config(cfg.model)
    store = extract_store(extractor, load_dataset(workdir / "data"), workdir / "store")
    zs = ZeroShotHead.from_extractor(extractor, store.classes, resolve_templates(cfg.prompts))
    timings = {"generate_s": t1 - t0, "extract_s": time.perf_counter() - t1}
    return store, zs, cfg.probe, timings


def split_arrays(store):
    """{split: (X, y)} with y indices into store.classes, and the train rows (the pool K-shot sets come from)."""
    pos = {c: i for i, c in enumerate(store.classes)}
    y = np.asarray([pos[v] for v in store.labels])
    idx = {s: store.split_indices(s) for s in ("train", "val", "test")}
    return {s: (np.asarray(store.features[i], np.float32), y[i]) for s, i in idx.items()}, idx["train"], y


def one_draw(store, zs, pcfg, data, train_idx, y, k: int, draw: int) -> tuple[dict[str, tuple[float, float]], str]:
    """({method: (test accuracy, fit seconds)}, the candidate auto kept) for one K-shot draw; auto picks among
    the fitted candidates, as `fit_auto` does when val has enough images per class."""
    from toolkit.fitting.fewshot import accuracy, choose, fit_candidates
    from toolkit.fitting.probe import fewshot_indices

    rows = fewshot_indices(train_idx, y, k, draw)
    X, yk = np.asarray(store.features[rows], np.float32), y[rows]
    cfg = pcfg.model_copy(update={"fewshot": k, "seed": draw})
    fits = fit_candidates(METHODS[:-1], store.classes, (X, yk), data["val"], zs, cfg, store.identity)
    auto = choose(fits, data["val"][1])
    X_test, y_test = data["test"]
    out = {n: (accuracy(f.head.predict_proba(X_test), y_test), s) for n, (f, s) in fits.items()}
    out["auto"] = (accuracy(auto.head.predict_proba(X_test), y_test), sum(s for _, s in fits.values()))
    return out, auto.selection["chosen"]


def evaluate(args, store, zs, pcfg) -> dict:
    data, train_idx, y = split_arrays(store)
    runs: dict[str, dict[int, list]] = {}
    chosen: dict[str, dict[str, int]] = {}
    for k in args.shots:
        for draw in range(args.draws):
            t0 = time.perf_counter()
            scores, kept = one_draw(store, zs, pcfg, data, train_idx, y, k, draw)
            for name, res in scores.items():
                runs.setdefault(name, {}).setdefault(k, []).append(res)
            chosen.setdefault(str(k), {}).setdefault(kept, 0)
            chosen[str(k)][kept] += 1
            print(f"K={k} draw {draw}: {time.perf_counter() - t0:.1f} s  " + "  ".join(
                f"{m} {100 * runs[m][k][-1][0]:.1f}" for m in METHODS), file=sys.stderr, flush=True)
    zs_acc = runs["zeroshot"][args.shots[0]][0][0]

    def stat(fn):
        return {m: {str(k): fn(runs[m][k]) for k in args.shots} for m in METHODS}

    return {"suite": args.suite, "seed": args.seed, "classes": list(store.classes), "zeroshot": zs_acc,
            "heads": stat(lambda r: float(np.mean([a for a, _ in r]))),
            "std": stat(lambda r: float(np.std([a for a, _ in r]))),
            "fit_s": stat(lambda r: float(np.mean([s for _, s in r]))),
            "auto_chosen": chosen, "draws": args.draws, "shots": list(args.shots),
            "n_val": int(len(data["val"][1])), "n_test": int(len(data["test"][1]))}


def table(res: dict) -> str:
    ks = [str(k) for k in res["shots"]]
    lines = ["| head | " + " | ".join(f"K={k}" for k in ks) + f" | fit s (K={ks[-1]}) |",
             "|---|" + "---|" * (len(ks) + 1)]
    for m in METHODS:
        cells = [f"{100 * res['heads'][m][k]:.1f} +- {100 * res['std'][m][k]:.1f}" for k in ks]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {res['fit_s'][m][ks[-1]]:.2f} |")
    lines.append("| auto kept | " + " | ".join(", ".join(f"{n} x{c}" for n, c in res["auto_chosen"][k].items())
                                               for k in ks) + " | |")
    return "\n".join(lines)


def losses(res: dict) -> list[str]:
    """Where each head is below zero-shot, and where auto is below the best single head (mean over draws)."""
    out, zs = [], res["zeroshot"]
    for m in METHODS[1:]:
        worse = [k for k, a in res["heads"][m].items() if a < zs]
        if worse:
            out.append(f"{m} is below zero-shot at K = {', '.join(worse)}")
    for k in res["heads"]["auto"]:
        best = max(METHODS[:-1], key=lambda m: res["heads"][m][k])
        gap = 100 * (res["heads"][best][k] - res["heads"]["auto"][k])
        if gap > 0:
            out.append(f"auto is {gap:.1f} points below the best head at K = {k} ({best})")
    return out


def plot(res: dict, path: Path) -> None:
    from toolkit.evaluation.plots import curve_png

    ks = res["shots"]
    series = {"zero-shot": (ks, [100 * res["zeroshot"]] * len(ks))}
    series.update({m: (ks, [100 * res["heads"][m][str(k)] for k in ks]) for m in METHODS[1:]})
    errors = {m: [100 * res["std"][m][str(k)] for k in ks] for m in METHODS[1:]}
    path.parent.mkdir(parents=True, exist_ok=True)
    curve_png(series, path, f"{res['suite']} suite ({len(res['classes'])} classes): test accuracy, mean of "
              f"{res['draws']} draws", "training images per class (K)", "test accuracy (%)", logx=True,
              ylim=(0, 100), errors=errors)


def markdown(res: dict, args, timings: dict) -> str:
    import textwrap

    cmd = " ".join(["scripts/eval_heads.py", *sys.argv[1:]])
    about = (f"The {res['suite']} suite of `clipkit demo-data --suite {res['suite']}` (generation seed {res['seed']}): "
             f"{len(res['classes'])} classes, the exercises the demo model was trained on next to ones it never saw, "
             f"drawn in a shifted style. Per class {args.train} train images (the pool of the K-shot draws), "
             f"{args.val} val (hyper-parameters, auto's choice) and {args.test} test: {res['n_test']} test images, "
             f"one is {100 / res['n_test']:.2f} points. Test accuracy in %, mean +- std over {res['draws']} draws of "
             f"the K-shot set; zero-shot (class names, the config's templates) {100 * res['zeroshot']:.1f}%. Fit "
             f"time: mean seconds per fit at the largest K (auto: all its candidates). Generated in "
             f"{timings['generate_s']:.0f} s, features extracted once in {timings['extract_s']:.0f} s; "
             f"{machine_note()}.")
    lines = [SECTION, "", "```", f".venv/bin/python {cmd}", "```", "", textwrap.fill(about, 115), "", table(res), "",
             f"![few-shot heads](docs/{args.plot.name})" if args.plot else "", "",
             "Where a head loses (means over the draws):", ""]
    lines += [f"- {line}" for line in losses(res)] or ["- nowhere below zero-shot"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    ap.add_argument("--suite", default="novel", help="demo-data suite (default: novel)")
    ap.add_argument("--classes", default=None, help="comma-separated class keys [default: the suite's]")
    ap.add_argument("--seed", type=int, default=0, help="generation seed of the images")
    ap.add_argument("--shots", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--draws", type=int, default=3, help="K-shot draws (seeds 0..draws-1) per K")
    ap.add_argument("--train", type=int, default=32, help="train images per class: the pool of the K-shot draws")
    ap.add_argument("--val", type=int, default=10, help="val images per class (auto scores on val from 5)")
    ap.add_argument("--test", type=int, default=30, help="test images per class")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    ap.add_argument("--plot", type=Path, default=None, help="accuracy against K, e.g. docs/fewshot_heads.png")
    ap.add_argument("--write", action="store_true", help="write the section into BENCHMARKS.md")
    ap.add_argument("--keep", type=Path, default=None, help="keep the generated images and store in this folder")
    args = ap.parse_args()
    if max(args.shots) > args.train:
        ap.error(f"--shots up to {max(args.shots)} needs --train >= {max(args.shots)}")
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="clipkit-eval-heads-"))
    try:
        store, zs, pcfg, timings = build(args, workdir)
        res = evaluate(args, store, zs, pcfg)
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(table(res))
    print("\n".join(losses(res)))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2))
    if args.plot:
        plot(res, args.plot)
    if args.write:
        write_section(ROOT / "BENCHMARKS.md", SECTION, markdown(res, args, timings))


if __name__ == "__main__":
    main()
