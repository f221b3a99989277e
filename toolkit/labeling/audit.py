"""The errors in labels, from a feature store: likely label errors, near-duplicates (leakage across splits
included) and outliers, each ranked, with the numbers a person needs to judge a row.

Label errors follow confident learning (Northcutt et al., 2021; cleanlab's `find_label_issues` without cleanlab):
out-of-sample probabilities by k-fold over the labelled rows (labeling.model.choose_c: the C of lowest held-out
log loss, since a large C fits the very label noise we look for), each class's
threshold t_j = the mean held-out probability of class j over the rows labelled j (its typical self-confidence),
and a row is flagged when its given label scores below that label's threshold while another class is the likelier
(the one above its own threshold: the off-diagonal of the confident joint; or, where no class reaches its
threshold, the likeliest class when it has more than half the probability). Flagged rows are ranked by how much more likely the suggested
class is than the given one (the normalized margin).

Near-duplicates: candidate pairs from the features (each row's nearest neighbours), verified on the image files
(a copy re-encoded, resized or cropped by 5% correlates > 0.99 with one of 16 crops of its original; look-alike
images of one class stay far below; features alone can't tell them apart on the demo suite), marked by whether
they sit in one split or across splits (leakage).
Outliers: mean distance to the k nearest labelled neighbours, robust z-score against all rows' (median, MAD).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from toolkit.errors import DataError

DUP_THRESHOLD = 0.95  # normalized pixel correlation of a verified pair: copies > 0.999, look-alikes < 0.85 (eval_audit.py)
DUP_CANDIDATE = 0.8  # feature cosine similarity of a candidate pair
DUP_NEIGHBOURS = 20  # candidates per row: its nearest rows by features
DUP_FEATURE_ONLY = 0.998  # feature similarity that makes a pair whose images can't be read a duplicate
OUTLIER_Z = 3.5  # robust z-score above which a row is an outlier
OUTLIER_NEIGHBOURS = 5


@dataclass
class AuditReport:
    """Ranked findings. Each list holds dicts ready for a table: issues {row, path, given, suggested, score,
    self_confidence, threshold, split}; duplicates {row_a, row_b, path_a, path_b, similarity, kind, splits};
    outliers {row, path, label, split, distance, z}."""

    issues: list[dict[str, Any]] = field(default_factory=list)
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    outliers: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary, "issues": self.issues, "duplicates": self.duplicates,
                "outliers": self.outliers}


def class_thresholds(proba: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(C,) each class's typical self-confidence: the mean held-out probability of class j over the rows labelled
    j (1 for a class without rows)."""
    return np.array([proba[y == j, j].mean() if (y == j).any() else 1.0 for j in range(proba.shape[1])])


def label_issues(proba: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Confident learning on held-out (n, C) probabilities and given class indices y.

    Returns (flagged row indices ranked most likely first, suggested class per row (n,), per-class thresholds (C,))."""
    proba, y = np.asarray(proba, np.float64), np.asarray(y, np.int64)
    thresholds = class_thresholds(proba, y)
    above = proba >= thresholds[None, :] - 1e-12
    masked = np.where(above, proba, -np.inf)
    # the class each row confidently is (the likeliest above its own threshold), else the likeliest
    suggested = np.where(above.any(axis=1), masked.argmax(axis=1), proba.argmax(axis=1))
    self_conf = proba[np.arange(len(y)), y]
    sure = above.any(axis=1) | (proba.max(axis=1) >= 0.5)  # no class above its threshold: the likeliest over half
    flagged = np.flatnonzero((suggested != y) & (self_conf < thresholds[y]) & sure)
    margin = proba[flagged, suggested[flagged]] - self_conf[flagged]
    ranked = flagged[np.argsort(-margin, kind="stable")]
    return ranked, suggested, thresholds


def estimated_errors(proba: np.ndarray, y: np.ndarray) -> int:
    """How many of the rows are mislabelled, by confident learning's confident joint (calibrated to the given
    labels' counts): the rows whose likeliest class above its own threshold (label_issues' thresholds) is not the
    given one, summed off the diagonal. It counts the held-out head's confident mistakes on clean rows too, so it
    is an upper estimate when the head is weak (on the demo's novel suite, 67% right: ~4x the planted flips at 10%)."""
    proba, y = np.asarray(proba, np.float64), np.asarray(y, np.int64)
    n_classes = proba.shape[1]
    above = proba >= class_thresholds(proba, y)[None, :] - 1e-12
    sure = above.any(axis=1)
    joint = np.zeros((n_classes, n_classes))
    np.add.at(joint, (y[sure], np.where(above, proba, -np.inf).argmax(axis=1)[sure]), 1)
    counts = np.bincount(y, minlength=n_classes)
    joint = joint / np.maximum(joint.sum(axis=1, keepdims=True), 1) * counts[:, None]
    return int(round(joint.sum() - np.trace(joint)))


def candidate_pairs(X: np.ndarray, k: int = DUP_NEIGHBOURS, min_sim: float = DUP_CANDIDATE
                    ) -> list[tuple[int, int, float]]:
    """(i, j, cosine similarity) with i < j: each row's k nearest rows by feature similarity, kept when at
    least `min_sim` (a copy cropped by 5% can drop to ~0.85 on the demo features while staying a near neighbour)."""
    from sklearn.neighbors import NearestNeighbors

    X = np.asarray(X, np.float32)
    if len(X) < 2:
        return []
    k = min(k, len(X) - 1)
    dist, idx = NearestNeighbors(n_neighbors=k + 1).fit(X).kneighbors(X)
    sims = 1 - dist ** 2 / 2  # unit rows: |a - b|^2 = 2 - 2 cos
    pairs = {}
    for i in range(len(X)):
        for j, s in zip(idx[i, 1:], sims[i, 1:]):
            if s >= min_sim and i != j:
                pairs[(min(i, int(j)), max(i, int(j)))] = float(s)
    return [(i, j, s) for (i, j), s in pairs.items()]


def pixel_signatures(path: str, size: int = 24) -> Optional[np.ndarray]:
    """(16, size * size) zero-mean unit-norm grey thumbnails of the image under the 16 crops that take 0 or 5% off
    each side (row 0: uncropped); None when the file can't be read. A copy that was re-encoded, resized or cropped
    by up to 5% matches one of them almost exactly (normalized correlation > 0.99)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.draft("L", (4 * size, 4 * size))  # JPEG: decode at a reduced size
            g = im.convert("L")
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    w, h = g.size
    out = []
    for l_, t, r, b in ((l_, t, r, b) for l_ in (0, 1) for t in (0, 1) for r in (0, 1) for b in (0, 1)):
        box = (int(0.05 * w * l_), int(0.05 * h * t), w - int(0.05 * w * r), h - int(0.05 * h * b))
        v = np.asarray(g.crop(box).resize((size, size), Image.BILINEAR), np.float32).ravel()
        v = v - v.mean()
        out.append(v / (np.linalg.norm(v) + 1e-6))
    return np.stack(out)


def near_duplicates(X: np.ndarray, paths: Optional[Sequence[str]] = None, threshold: float = DUP_THRESHOLD,
                    feature_only: float = DUP_FEATURE_ONLY) -> list[dict[str, Any]]:
    """Near-duplicate pairs {a, b, similarity (features), pixel (correlation or None)}, most similar first.

    Candidates are feature neighbours (candidate_pairs); each is verified on the images (pixel_signatures: the
    best normalized correlation of one image against the other's crops, both ways) and kept at `threshold`.
    A pair whose images can't be read (or no `paths`) is kept when its feature similarity is `feature_only`."""
    cache: dict[int, Optional[np.ndarray]] = {}

    def sig(i: int) -> Optional[np.ndarray]:
        if i not in cache:
            cache[i] = pixel_signatures(str(paths[i])) if paths is not None else None
        return cache[i]

    found = []
    for i, j, s in candidate_pairs(X):
        a, b = sig(i), sig(j)
        if a is None or b is None:
            if s >= feature_only:
                found.append({"a": i, "b": j, "similarity": s, "pixel": None})
            continue
        pix = max(float((a[0] @ b.T).max()), float((b[0] @ a.T).max()))
        if pix >= threshold:
            found.append({"a": i, "b": j, "similarity": s, "pixel": pix})
    return sorted(found, key=lambda d: (-(d["pixel"] or d["similarity"]), d["a"], d["b"]))


def outlier_scores(X: np.ndarray, labelled: np.ndarray, k: int = OUTLIER_NEIGHBOURS) -> tuple[np.ndarray, np.ndarray]:
    """((n,) mean Euclidean distance to the k nearest labelled rows (itself excluded), (n,) robust z-score)."""
    from sklearn.neighbors import NearestNeighbors

    ref = np.asarray(X, np.float32)[labelled]
    k = int(min(k, len(ref) - 1))
    if k < 1:
        return np.zeros(len(X)), np.zeros(len(X))
    dist, idx = NearestNeighbors(n_neighbors=k + 1).fit(ref).kneighbors(np.asarray(X, np.float32))
    own = labelled[idx] == np.arange(len(X))[:, None]  # a labelled row finds itself: drop that neighbour
    dist = np.where(own, np.nan, dist)
    d = np.array([row[~np.isnan(row)][:k].mean() for row in dist])
    med = np.median(d)
    mad = np.median(np.abs(d - med)) * 1.4826 + 1e-12
    return d, (d - med) / mad


def audit(features: np.ndarray, labels: Sequence[str], classes: Sequence[str], paths: Sequence[str],
          splits: Optional[Sequence[str]] = None, folds: int = 5, seed: int = 0,
          dup_threshold: float = DUP_THRESHOLD, outlier_z: float = OUTLIER_Z,
          zeroshot: Optional[np.ndarray] = None) -> AuditReport:
    """Audit the rows of a store: `labels` per row ("" for an unlabelled row), `classes` the label set.

    Label errors are looked for among the labelled rows of every split together (k-fold, `folds`); duplicates and
    outliers over all rows. `zeroshot` ((n, C) or None) adds zero-shot's opinion of each flagged row."""
    from toolkit.labeling.model import choose_c

    X = np.asarray(features, np.float32)
    labels = np.asarray(list(labels), dtype=object)
    splits = np.asarray(list(splits) if splits is not None else [""] * len(X), dtype=object)
    pos = {c: i for i, c in enumerate(classes)}
    unknown = sorted({lb for lb in labels if lb and lb not in pos})
    if unknown:
        raise DataError(f"label '{unknown[0]}' is not one of the classes ({', '.join(classes)})")
    rows = np.flatnonzero(labels != "")
    y = np.asarray([pos[lb] for lb in labels[rows]], np.int64)
    report = AuditReport()
    if len(rows) >= 4 and len(np.unique(y)) >= 2:
        C, proba = choose_c(X[rows], y, len(classes), folds=folds, seed=seed)
        report.summary["C"] = C
        report.summary["estimated_errors"] = estimated_errors(proba, y)
        ranked, suggested, thresholds = label_issues(proba, y)
        for r in ranked:
            i = int(rows[r])
            item = {"row": i, "path": str(paths[i]), "split": str(splits[i]), "given": str(labels[i]),
                    "suggested": classes[suggested[r]], "score": float(proba[r, suggested[r]]),
                    "self_confidence": float(proba[r, y[r]]), "threshold": float(thresholds[y[r]])}
            if zeroshot is not None:
                item["zeroshot"] = classes[int(np.argmax(zeroshot[i]))]
            report.issues.append(item)
    for d in near_duplicates(X, paths, dup_threshold):
        i, j = d["a"], d["b"]
        kind = f"within {splits[i]}".strip() if splits[i] == splits[j] else "leak"
        report.duplicates.append({"row_a": i, "row_b": j, "path_a": str(paths[i]), "path_b": str(paths[j]),
                                  "similarity": d["similarity"], "pixel": d["pixel"], "kind": kind,
                                  "splits": f"{splits[i]}/{splits[j]}"})
    if len(rows) >= 2:
        dist, z = outlier_scores(X, rows)
        for i in np.argsort(-z, kind="stable"):
            if z[i] < outlier_z:
                break
            report.outliers.append({"row": int(i), "path": str(paths[i]), "label": str(labels[i]),
                                    "split": str(splits[i]), "distance": float(dist[i]), "z": float(z[i])})
    report.summary = {**report.summary, "rows": int(len(X)), "labelled": int(len(rows)), "classes": list(classes), "folds": folds,
                      "label_issues": len(report.issues), "duplicate_pairs": len(report.duplicates),
                      "leaking_pairs": sum(d["kind"] == "leak" for d in report.duplicates),
                      "outliers": len(report.outliers), "dup_threshold": dup_threshold, "outlier_z": outlier_z}
    return report
