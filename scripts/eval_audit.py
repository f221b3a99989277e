"""The errors in labels on the demo generator's novel suite: planted label flips and planted copies, found by
`clipkit audit` (toolkit.labeling.audit).

Label errors: the pool images (`--pool` per class, default 13 classes) are the labelled set. 5%, 10% and 20% of
their labels are flipped, uniformly (to any other class) or towards the most confusable class (the class a
held-out head on the clean labels most often mistakes it for); for each of `--seeds` seeds the audit's k-fold
confident learning flags rows. Reported: precision and recall of the flagged rows, the same for the top-k rows
(k = the number of flips, as if the count were known), and test accuracy of logistic regression (C = 30)
trained on the clean, the noisy and the cleaned set (flagged rows dropped).

Near-duplicates: `--copies` pool images each get a copy in the test split, a third each re-encoded as JPEG
(quality 70), resized to 2/3, or cropped by 5% (left and top); every image is written to a temporary folder and
the audit's near_duplicates (feature neighbours verified on the pixels) runs over pool + test + copies.
Reported: recall of the planted pairs, and every other pair found (false pairs: the goal is none).

    .venv/bin/python scripts/eval_audit.py --write
"""
from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from _bench import ROOT, machine_note, table, write_section
from eval_labeling import novel_suite

SECTION = "## Label errors and near-duplicates (issue 20)"
RATES = (0.05, 0.10, 0.20)


def confusable(X: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """(C,) for each class the class a held-out head on clean labels most often predicts instead."""
    from toolkit.labeling.model import out_of_fold_proba

    pred = out_of_fold_proba(X, y, n_classes).argmax(axis=1)
    cm = np.zeros((n_classes, n_classes))
    np.add.at(cm, (y, pred), 1)
    np.fill_diagonal(cm, -1)
    return cm.argmax(axis=1)


def flip(y: np.ndarray, rate: float, mode: str, n_classes: int, towards: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
    rows = rng.choice(len(y), int(round(rate * len(y))), replace=False)
    noisy = y.copy()
    if mode == "uniform":
        noisy[rows] = (y[rows] + rng.integers(1, n_classes, len(rows))) % n_classes
    else:
        noisy[rows] = towards[y[rows]]
    return noisy, rows


def accuracy(X, y, X_test, y_test, n_classes: int) -> float:
    from toolkit.labeling.model import TorchLogReg

    return 100.0 * float((TorchLogReg(n_classes=n_classes).fit(X, y).full_proba(X_test).argmax(axis=1) == y_test).mean())


def label_errors(data, n_classes: int, seeds: int, zeroshot: np.ndarray) -> list[dict]:
    from toolkit.labeling.audit import estimated_errors, label_issues
    from toolkit.labeling.model import choose_c, out_of_fold_proba

    (X, y), (X_test, y_test) = data["pool"], data["test"]
    towards = confusable(X, y, n_classes)
    oracle = out_of_fold_proba(X, y, n_classes)  # held-out probabilities of heads fitted on the clean labels
    clean = accuracy(X, y, X_test, y_test, n_classes)
    out = []
    for mode in ("uniform", "confusable"):
        for rate in RATES:
            for seed in range(seeds):
                noisy, rows = flip(y, rate, mode, n_classes, towards, np.random.default_rng(seed))
                _, proba = choose_c(X, noisy, n_classes, seed=seed)
                ranked, _, _ = label_issues(proba, noisy)
                hit = np.isin(ranked, rows)
                keep = np.setdiff1d(np.arange(len(y)), ranked)
                out.append({"mode": mode, "rate": rate, "seed": seed, "flagged": len(ranked),
                            "precision": float(hit.mean()) if len(ranked) else 0.0,
                            "recall": float(hit.sum() / len(rows)),
                            "topk_precision": float(np.isin(ranked[:len(rows)], rows).sum() / len(rows)),
                            "ceiling": topk(oracle, noisy, rows), "estimated": estimated_errors(proba, noisy),
                            "flips": len(rows), **variants(X, noisy, rows, proba, zeroshot),
                            "acc_clean": clean, "acc_noisy": accuracy(X, noisy, X_test, y_test, n_classes),
                            "acc_cleaned": accuracy(X[keep], noisy[keep], X_test, y_test, n_classes)})
    return out


def topk(proba: np.ndarray, noisy: np.ndarray, flipped: np.ndarray) -> float:
    """The share of flips among the k rows (k = the number of flips) whose given label `proba` finds least likely
    against the likeliest other class."""
    other = proba.copy()
    other[np.arange(len(noisy)), noisy] = -1
    margin = other.max(axis=1) - proba[np.arange(len(noisy)), noisy]
    return float(np.isin(np.argsort(-margin, kind="stable")[:len(flipped)], flipped).mean())


def knn_vote(X: np.ndarray, y: np.ndarray, n_classes: int, k: int = 20) -> np.ndarray:
    """(n, C) the given labels of each row's k nearest feature neighbours (itself excluded), smoothed
    (SimiFeat's vote: detecting corrupted labels without training a model, Zhu et al., 2022)."""
    from sklearn.neighbors import NearestNeighbors

    _, idx = NearestNeighbors(n_neighbors=k + 1).fit(X).kneighbors(X)
    votes = np.zeros((len(y), n_classes))
    for j in range(1, k + 1):
        votes[np.arange(len(y)), y[idx[:, j]]] += 1
    return (votes + 0.5 / n_classes) / (k + 0.5)


def variants(X, noisy, flipped, proba, zeroshot) -> dict:
    """Other ways to flag, measured beside the audit's: the estimated count of rows by margin (confident learning's
    prune by noise rate), and the top-k precision of ensembles with a kNN vote and zero-shot as voters."""
    from toolkit.labeling.audit import estimated_errors

    n = estimated_errors(proba, noisy)
    other = proba.copy()
    other[np.arange(len(noisy)), noisy] = -1
    pruned = np.argsort(proba[np.arange(len(noisy)), noisy] - other.max(axis=1), kind="stable")[:n]
    hit = np.isin(pruned, flipped).sum()
    knn = knn_vote(X, noisy, proba.shape[1])
    return {"prune_precision": float(hit / max(n, 1)), "prune_recall": float(hit / len(flipped)),
            "topk_knn": topk((proba + knn) / 2, noisy, flipped),
            "topk_knn_zs": topk((proba + knn + zeroshot) / 3, noisy, flipped)}


def duplicates(images, data, n_copies: int, seed: int) -> dict:
    from PIL import Image

    from toolkit.config import load_config
    from toolkit.encoder.features import FeatureExtractor
    from toolkit.labeling.audit import near_duplicates

    rng = np.random.default_rng(seed)
    src = rng.choice(len(images["pool"]), n_copies, replace=False)

    def jpeg(im):
        b = io.BytesIO()
        im.convert("RGB").save(b, "JPEG", quality=70)
        return Image.open(io.BytesIO(b.getvalue())).convert("RGB")

    makes = {"jpeg": jpeg, "resize": lambda im: im.resize((im.width * 2 // 3, im.height * 2 // 3)),
             "crop5": lambda im: im.crop((im.width // 20, im.height // 20, im.width, im.height))}
    kinds = [list(makes)[i % 3] for i in range(n_copies)]
    copies = [makes[k](images["pool"][i]) for k, i in zip(kinds, src)]
    cfg = load_config(str(ROOT / "configs" / "demo.yaml"), {"model.device": "cpu"})
    Xc = FeatureExtractor.from_config(cfg.model).encode_images(copies)
    X = np.concatenate([data["pool"][0], data["test"][0], Xc])
    n_pool, n_test = len(data["pool"][0]), len(data["test"][0])
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for k, im in enumerate(images["pool"] + images["test"] + copies):
            paths.append(str(Path(tmp) / f"{k}.{'jpg' if k >= n_pool + n_test else 'png'}"))
            im.save(paths[-1], **({"quality": 95} if k >= n_pool + n_test else {}))
        found = near_duplicates(X, paths)
    dup_s = time.perf_counter() - t0
    planted = {(int(i), n_pool + n_test + k): kinds[k] for k, i in enumerate(src)}
    got = {(d["a"], d["b"]) for d in found}
    per_kind = {k: float(np.mean([p in got for p, kk in planted.items() if kk == k])) for k in makes}
    false = [d for d in found if (d["a"], d["b"]) not in planted]
    return {"planted": len(planted), "recall": float(np.mean([p in got for p in planted])), "recall_by_kind": per_kind,
            "false_pairs": len(false), "false_examples": false[:5], "rows": len(X), "seconds": dup_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    ap.add_argument("--pool", type=int, default=42, help="labelled images per class")
    ap.add_argument("--test", type=int, default=18, help="test images per class")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--copies", type=int, default=60, help="planted copies (a third of each kind)")
    ap.add_argument("--gen-seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--write", action="store_true", help="write the section into BENCHMARKS.md")
    args = ap.parse_args()
    data, texts, zs, images, load_s = novel_suite(args.config, args.pool, args.test, args.gen_seed, keep_images=True)
    t0 = time.perf_counter()
    flips = label_errors(data, len(texts), args.seeds, zs["pool"])
    flip_s = time.perf_counter() - t0
    dups = duplicates(images, data, args.copies, args.gen_seed)
    res = {"flips": flips, "duplicates": dups, "load_s": load_s, "flip_s": flip_s, "n_pool": len(data["pool"][1]),
           "n_test": len(data["test"][1])}
    text = report(res, args)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    if args.write:
        write_section(ROOT / "BENCHMARKS.md", SECTION, text)


def report(res: dict, args) -> str:
    rows = []
    for mode in ("uniform", "confusable"):
        for rate in RATES:
            runs = [r for r in res["flips"] if r["mode"] == mode and r["rate"] == rate]

            def m(key: str, pct: bool = False) -> str:
                v = np.array([r[key] for r in runs]) * (1 if pct else 1.0)
                return f"{v.mean():.2f} +- {v.std():.2f}" if not pct else f"{v.mean():.1f}"
            rows.append([mode, f"{100 * rate:.0f}%", f"{runs[0]['flips']}",
                         f"{np.mean([r['flagged'] for r in runs]):.0f}",
                         f"{np.mean([r['estimated'] for r in runs]):.0f}", m("precision"), m("recall"),
                         m("topk_precision"), m("ceiling"), m("acc_clean", True), m("acc_noisy", True),
                         m("acc_cleaned", True)])
    variant_rows = []
    for mode in ("uniform", "confusable"):
        for rate in RATES:
            runs = [r for r in res["flips"] if r["mode"] == mode and r["rate"] == rate]
            variant_rows.append([mode, f"{100 * rate:.0f}%", *[f"{np.mean([r[k] for r in runs]):.2f}" for k in (
                "prune_precision", "prune_recall", "topk_knn", "topk_knn_zs")]])
    d = res["duplicates"]
    at10 = [r for r in res["flips"] if r["rate"] == 0.10 and r["mode"] == "uniform"]
    p10, r10 = np.mean([r["precision"] for r in at10]), np.mean([r["recall"] for r in at10])
    c10, k10 = np.mean([r["ceiling"] for r in at10]), at10[0]["flips"]
    return "\n".join([
        SECTION, "", "```", ".venv/bin/python scripts/eval_audit.py --write", "```", "",
        f"The novel suite (13 classes, generation seed {args.gen_seed}): {res['n_pool']} labelled images "
        f"({args.pool} per class) with planted label flips, {res['n_test']} test images. Mean +- std over "
        f"{args.seeds} flip seeds. Flagged: rows `clipkit audit` lists as likely label errors (5-fold held-out "
        "probabilities at the C of lowest held-out loss, then confident learning); estimated: confident learning's "
        "count of label errors (the calibrated confident joint off its diagonal, `estimated_errors` in the audit's "
        "summary); top-k precision: the share of flips among the k highest-ranked rows, k = the number of flips "
        "(precision = recall when the count is known); top-k, clean head: the same ranking by held-out heads "
        "fitted on the clean labels, which the flips cannot have misled: the limit of a linear head on these "
        "features. Accuracy: test accuracy (%) of logistic regression on the clean labels, the noisy labels, and "
        f"the noisy labels with the flagged rows dropped. Features in {res['load_s']:.0f} s, the flip runs in "
        f"{res['flip_s']:.0f} s; {machine_note()} (the machine was shared with other jobs).", "",
        table(["flips", "rate", "flipped", "flagged", "estimated", "precision", "recall", "top-k precision",
               "top-k, clean head", "acc clean", "acc noisy", "acc cleaned"], rows), "",
        "Other ways to flag, on the same runs: the estimated count of rows with the lowest margin of the given "
        "label (confident learning's prune by noise rate), and the top-k precision of the held-out head averaged "
        "with a vote of each row's 20 nearest feature neighbours (SimiFeat), and with zero-shot as a third voter.",
        "",
        table(["flips", "rate", "prune: precision", "prune: recall", "top-k, head + kNN",
               "top-k, head + kNN + zero-shot"], variant_rows), "",
        f"- Goal at 10% uniform flips, precision and recall both >= 0.7: precision {p10:.2f}, recall {r10:.2f}: "
        + ("met." if p10 >= 0.7 and r10 >= 0.7 else
           f"not met, and out of reach of a linear head on these features: even the clean-label head puts only "
           f"{c10:.0%} flips among its top {k10} rows, so no flagged set it ranks reaches 0.7 on both "
           "(the head is right on about two images in three: every clean image it gets wrong with confidence "
           "looks like a flip, and confident learning's own count of errors is several times the planted one). "
           "Flagging the estimated count (prune by noise rate) trades precision for recall, the kNN vote moves "
           "top-k precision within the seed noise and zero-shot as a voter lowers it (second table), so the audit "
           "keeps its flagging rule and reports the estimate beside it (`estimated_errors`). The ranking "
           "is the useful part: a person scanning the contact sheet from the top meets flips far more often than "
           "in the flagged set as a whole. Dropping every flagged row costs accuracy here (it drops more clean "
           "hard images than flips): review, don't delete blindly."),
        "- Flips towards the most confusable class (the class a clean held-out head most often mistakes each "
        "class for) are harder: they look like the head's own mistakes (the confusable rows of the table).",
        "",
        f"Near-duplicates: {d['planted']} pool images each copied into the test split (a third each: JPEG quality 70, "
        f"resized to 2/3, cropped by 5%), searched among all {d['rows']} rows (feature neighbours, verified on the "
        f"pixels) in {d['seconds']:.1f} s: recall {d['recall']:.2f} (JPEG {d['recall_by_kind']['jpeg']:.2f}, "
        f"resized {d['recall_by_kind']['resize']:.2f}, cropped {d['recall_by_kind']['crop5']:.2f}), "
        f"{d['false_pairs']} false pair(s). Goal recall >= 0.95 with no false pair: "
        + ("met." if d["recall"] >= 0.95 and d["false_pairs"] == 0 else "not met."),
        "",
    ])


if __name__ == "__main__":
    main()
