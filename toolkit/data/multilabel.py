"""Multi-label datasets: images that carry several labels at once (or, per class, none).

Layouts understood by `load_multilabel`:

    labels.csv     columns path,labels[,split]; labels separated by '|' ("squat|dumbbell|outdoor")
    labels.jsonl   one object per line: {"path": ..., "labels": [...], "split": ...} (split optional)

Paths are relative to the file's folder. A dataset is recognised as multi-label from the file (a .jsonl, or a
CSV whose header has a `labels` column; `is_multilabel_source`), or because the caller says so.

A `MultiLabelDataset` is a `LabelledDataset` whose `labels` hold each image's label set joined with '|', so
feature stores, extraction and relabelling take it unchanged; `label_sets` and `targets(classes)` give the
sets and the (n, C) 0/1 matrix. Splits missing from the file are drawn at random (seeded), then checked:
every class needs a positive image in train. Nothing here imports torch or open_clip.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from toolkit.data.datasets import (SPLITS, LabelledDataset, listed_paths, load_dataset, read_csv_rows,
                                   split_column)
from toolkit.errors import DataError

SEP = "|"  # between the labels of one image, in CSV fields and in a store's label column
MULTILABEL_SUFFIXES = (".jsonl", ".ndjson")


@dataclass
class MultiLabelDataset(LabelledDataset):
    """Images with a set of labels each; `labels[i]` is image i's sorted labels joined with '|'."""

    multi_label: bool = True

    @property
    def label_sets(self) -> list[list[str]]:
        return split_labels(self.labels)

    def targets(self, classes: Optional[Sequence[str]] = None) -> np.ndarray:
        """(n_images, n_classes) float32 0/1: 1 where the image carries the class."""
        return label_matrix(self.labels, self.classes if classes is None else classes)

    def counts(self) -> dict[str, dict[str, int]]:
        """{split: {label: n_images carrying it}} for every split and class (zeros included)."""
        Y = self.targets()
        sp = np.asarray(self.splits)
        return {s: {c: int(Y[sp == s, j].sum()) for j, c in enumerate(self.classes)} for s in SPLITS}


def split_labels(joined: Sequence[str]) -> list[list[str]]:
    """Store/dataset label strings ('a|b') -> label lists (['a', 'b']); '' -> []."""
    return [[lb for lb in str(s).split(SEP) if lb] for s in joined]


def label_matrix(joined: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """'a|b' label strings -> (n, C) float32 0/1 targets over `classes` (labels outside `classes` ignored)."""
    pos = {c: j for j, c in enumerate(classes)}
    Y = np.zeros((len(joined), len(classes)), np.float32)
    for i, labels in enumerate(split_labels(joined)):
        for lb in labels:
            if lb in pos:
                Y[i, pos[lb]] = 1.0
    return Y


def is_multilabel_source(source: str | Path) -> bool:
    """True for a .jsonl file, or a CSV whose header names a `labels` column (not `label`)."""
    p = Path(source)
    if not p.is_file():
        return False
    if p.suffix.lower() in MULTILABEL_SUFFIXES:
        return True
    if p.suffix.lower() != ".csv":
        return False
    try:
        with open(p, newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    fields = [h.strip().lower() for h in header]
    return "labels" in fields and "label" not in fields


def load_any(source: str | Path, seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.15,
             multi_label: Optional[bool] = None) -> LabelledDataset:
    """A multi-label dataset when `multi_label` is True or the file says so, else `datasets.load_dataset`."""
    if multi_label or (multi_label is None and is_multilabel_source(source)):
        return load_multilabel(source, seed, val_fraction, test_fraction)
    return load_dataset(source, seed, val_fraction, test_fraction)


# ---------------------------------------------------------------- reading

def _check_label_field(raw: str, where: str) -> list[str]:
    """'a|b' -> ['a', 'b']; DataError for an empty field or an empty label between separators."""
    parts = [p.strip() for p in raw.split(SEP)]
    if not raw.strip():
        raise DataError(f"{where} has no labels; give every image at least one label (separated by '{SEP}'), "
                        "or drop the row")
    if any(not p for p in parts):
        raise DataError(f"{where} has an empty label in '{raw}'; remove the stray '{SEP}'")
    return parts


def _check_label_list(value, where: str) -> list[str]:
    if not isinstance(value, list) or not value:
        raise DataError(f"{where} has no labels (got {value!r}); give \"labels\" as a non-empty list of strings, "
                        "or drop the line")
    out = []
    for lb in value:
        if not isinstance(lb, str) or not lb.strip():
            raise DataError(f"{where} has an empty or non-string label {lb!r}; give non-empty strings")
        if SEP in lb:
            raise DataError(f"{where} has label '{lb}' with '{SEP}' inside; '{SEP}' separates labels, "
                            "rename the label without it")
        out.append(lb.strip())
    return out


def _read_rows(path: Path) -> list[dict]:
    """[{path, labels (list), split (str)}] of a CSV (path,labels[,split]) or JSON Lines file."""
    if path.suffix.lower() in MULTILABEL_SUFFIXES:
        rows = []
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"'{path}' can't be read ({e}); write it as UTF-8 JSON Lines") from None
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"'{path}' line {n} is not JSON ({e.msg}); write one object per line: "
                                '{"path": "img.jpg", "labels": ["a", "b"]}') from None
            if not isinstance(doc, dict) or not isinstance(doc.get("path"), str):
                raise DataError(f"'{path}' line {n} needs a \"path\" string; write "
                                '{"path": "img.jpg", "labels": ["a", "b"]}')
            rows.append({"path": doc["path"], "labels": _check_label_list(doc.get("labels"), f"'{path}' line {n}"),
                         "split": str(doc.get("split") or "")})
        return rows
    raw, fields = read_csv_rows(path, f"manifest '{path}'", "write it as UTF-8 'path,labels[,split]'")
    if "path" not in fields or "labels" not in fields:
        raise DataError(f"multi-label manifest '{path}' needs a header with 'path' and 'labels' columns (got "
                        f"{fields}); write 'path,labels[,split]' with labels separated by '{SEP}'")
    rows = []
    for n, r in enumerate(raw, start=2):
        r = {(k or "").strip().lower(): (v or "").strip() for k, v in r.items()}
        rows.append({"path": r["path"], "labels": _check_label_field(r["labels"], f"manifest '{path}' line {n}"),
                     "split": r.get("split", "")})
    return rows


def _splits(rows: list[dict], path: Path) -> Optional[list[str]]:
    return split_column([r["split"] for r in rows], f"'{path}' row", first=1)


def _draw_splits(n: int, seed: int, val_fraction: float, test_fraction: float) -> list[str]:
    """Random (seeded) train/val/test assignment of n rows; at least one row in val and test when n >= 3."""
    order = np.random.default_rng(seed).permutation(n)
    n_test, n_val = max(1, round(test_fraction * n)), max(1, round(val_fraction * n))
    out = np.full(n, "train", dtype=object)
    out[order[:n_test]] = "test"
    out[order[n_test:n_test + n_val]] = "val"
    return [str(s) for s in out]


def load_multilabel(source: str | Path, seed: int = 0, val_fraction: float = 0.15,
                    test_fraction: float = 0.15) -> MultiLabelDataset:
    """Read a multi-label CSV (path,labels[,split]) or JSON Lines file; draw missing splits (random, seeded).

    DataError (one line, with the fix) for a missing file, a row without labels, an empty label, a label with
    the separator in it, fewer than two classes, or a class with no positive image in train (e.g. a label seen
    only in val or test)."""
    path = Path(source)
    if not path.is_file():
        raise DataError(f"multi-label dataset '{source}' is not a file; pass a CSV (path,labels[,split]) or a "
                        "JSON Lines file ({\"path\": ..., \"labels\": [...]})")
    rows = _read_rows(path)
    if not rows:
        raise DataError(f"'{path}' has no rows; write one image per row: path,labels[,split]")
    paths = listed_paths(rows, path)
    labels = [SEP.join(sorted(set(r["labels"]))) for r in rows]
    splits = _splits(rows, path)
    if splits is not None and "train" not in splits:
        raise DataError(f"'{path}' has splits but no train rows; mark some rows split=train")
    if splits is None:
        splits = _draw_splits(len(rows), seed, val_fraction, test_fraction)
    elif len(set(splits)) < 3:  # a missing val or test split is drawn from train
        drawn = _draw_splits(len(rows), seed, val_fraction, test_fraction)
        splits = [d if s == "train" and d not in splits else s for s, d in zip(splits, drawn)]
    classes = sorted({lb for s in split_labels(labels) for lb in s})
    if len(classes) < 2:
        raise DataError(f"dataset '{source}' has only one label {classes}; a multi-label classifier needs at "
                        "least two: add labels")
    in_train = {lb for s, sp in zip(split_labels(labels), splits) if sp == "train" for lb in s}
    absent = [c for c in classes if c not in in_train]
    if absent:
        where = sorted({sp for s, sp in zip(split_labels(labels), splits) if absent[0] in s})
        raise DataError(f"label '{absent[0]}' appears only in {'/'.join(where)}, never in train, in '{source}'; "
                        "add training images that carry it (or remove it from those rows)")
    return MultiLabelDataset(root=path.parent.resolve(), paths=paths, labels=labels, splits=splits, classes=classes)


# ---------------------------------------------------------------- stores

def is_multilabel_store(store) -> bool:
    """True for a feature store extracted from a multi-label dataset (meta.json "multi_label")."""
    return bool(store.meta.get("multi_label"))


def store_targets(store, rows: Optional[np.ndarray] = None) -> np.ndarray:
    """(n_rows, n_classes) 0/1 float32 targets of a multi-label store (all rows, or `rows`)."""
    labels = store.labels if rows is None else store.labels[rows]
    return label_matrix(list(labels), store.classes)
