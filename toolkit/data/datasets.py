"""Labelled image datasets: ImageFolder layouts and CSV manifests -> a LabelledDataset with train/val/test.

Layouts understood by `load_dataset`:

    ROOT/<label>/*.jpg                       one folder per class; splits are drawn (stratified, seeded)
    ROOT/{train,val,test}/<label>/*.jpg      given splits; a missing val or test split is drawn from train
    manifest.csv                             columns path,label[,split]; paths relative to the CSV's folder

Class names are the folder names (or the CSV's labels), sorted. Folders are read as `inputs.scan_folder` reads
them: symlinked class folders and subfolders followed (each real folder once), hidden entries ignored, dangling
links kept as rows (their extraction error names the missing target), other files listed in `skipped`.
Nothing here imports torch or open_clip.
"""
from __future__ import annotations

import csv
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from toolkit.errors import DataError
from toolkit.encoder.inputs import IMAGE_KINDS, scan_folder

SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                  "test": "test", "testing": "test"}


@dataclass
class LabelledDataset:
    """Images with labels and a split each. `paths`, `labels`, `splits` are parallel lists (dataset order)."""

    root: Path
    paths: list[str]  # absolute file paths
    labels: list[str]
    splits: list[str]  # 'train' | 'val' | 'test'
    classes: list[str]  # sorted distinct labels
    skipped: list[str] = field(default_factory=list)  # files in class folders that are not images (not rows)

    def __len__(self) -> int:
        return len(self.paths)

    def counts(self) -> dict[str, dict[str, int]]:
        """{split: {label: n_images}} for every split and class (zeros included)."""
        c = Counter(zip(self.splits, self.labels))
        return {s: {lb: c[(s, lb)] for lb in self.classes} for s in SPLITS}


def dataset_name(source: str | Path) -> str:
    """A short name for a dataset (its folder or CSV stem), usable as a default experiment name."""
    p = Path(source).resolve()
    name = p.stem if p.is_file() else p.name
    if name in _SPLIT_ALIASES and p.parent.name:  # someone pointed at ROOT/train
        name = p.parent.name
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "dataset"


def _class_folders(folder: Path) -> list[Path]:
    """Subfolders (symbolic links to folders included), sorted; a dangling link without a suffix, which
    may have been a class folder, is an error rather than a silently missing class."""
    out = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir():
            out.append(p)
        elif p.is_symlink() and not p.exists() and not p.suffix:
            raise DataError(f"'{p}' is a broken symbolic link to '{os.readlink(p)}'; fix or remove the link")
    return out


def _row_path(p: Path) -> str:
    """Absolute, symbolic links resolved; a dangling link stays itself, so that its row's error names it."""
    return str(p.resolve()) if p.exists() else str(p.absolute())


def _read_class_folders(folder: Path, where: str, skipped: list[str]) -> tuple[list[str], list[str]]:
    """(paths, labels) of ROOT/<label>/**/image files (symlinked subfolders followed); a class folder without
    images is an error. Other files are appended to `skipped`."""
    paths: list[str] = []
    labels: list[str] = []
    for cls_dir in _class_folders(folder):
        found = scan_folder(cls_dir)
        if not found.files:
            raise DataError(f"class folder '{cls_dir}' has no images ({IMAGE_KINDS}); "
                            "add images or remove the folder")
        paths += [_row_path(p) for p in found.files]
        labels += [cls_dir.name] * len(found.files)
        skipped += [str(p) for p in found.skipped]
    if not paths:
        loose = scan_folder(folder).files
        hint = ("images must sit in one subfolder per class: ROOT/<label>/*.jpg" if loose
                else "add one subfolder per class with images in it: ROOT/<label>/*.jpg")
        raise DataError(f"{where} '{folder}' contains no class folders with images; {hint}")
    return paths, labels


def _read_image_folder(root: Path, skipped: list[str]) -> tuple[list[str], list[str], Optional[list[str]]]:
    subdirs = _class_folders(root)
    split_dirs = [d for d in subdirs if d.name.lower() in _SPLIT_ALIASES]
    if not split_dirs:
        paths, labels = _read_class_folders(root, "folder", skipped)
        return paths, labels, None
    others = [d.name for d in subdirs if d not in split_dirs]
    if others:
        raise DataError(f"folder '{root}' mixes split folders ({', '.join(d.name for d in split_dirs)}) with other "
                        f"folders ({', '.join(others)}); use either ROOT/<label>/ or ROOT/{{train,val,test}}/<label>/")
    paths, labels, splits = [], [], []
    for d in split_dirs:
        p, lb = _read_class_folders(d, "split folder", skipped)
        paths += p
        labels += lb
        splits += [_SPLIT_ALIASES[d.name.lower()]] * len(p)
    return paths, labels, splits


def read_csv_rows(path: Path, name: str, fix: str) -> tuple[list[dict[str, str]], list[str]]:
    """A UTF-8 CSV's rows (a BOM allowed) and its header, lower-cased; DataError "<name> can't be read as CSV
    (why); <fix>" when it can't be read. The labelled-data CSVs (manifests, multi-label, labels.csv) use it."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            fields = [(c or "").strip().lower() for c in (reader.fieldnames or [])]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{name} can't be read as CSV ({e}); {fix}") from None
    return rows, fields


def listed_paths(rows: list[dict[str, str]], path: Path) -> list[str]:
    """Each row's "path", resolved against the folder of the file that lists it; DataError naming the missing
    ones (at most five shown)."""
    base = path.parent
    paths = [str((base / r["path"]).resolve()) for r in rows]
    missing = [r["path"] for r, p in zip(rows, paths) if not Path(p).is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
        raise DataError(f"{len(missing)} file(s) listed in '{path}' don't exist: {shown}; "
                        "paths are relative to the file's folder")
    return paths


def _read_csv(path: Path) -> tuple[list[str], list[str], Optional[list[str]]]:
    rows, fields = read_csv_rows(path, f"manifest '{path}'", "write it as UTF-8 'path,label[,split]'")
    if not rows:
        raise DataError(f"manifest '{path}' has no rows; write a header 'path,label[,split]' and one row per image")
    if "path" not in fields or "label" not in fields:
        raise DataError(f"manifest '{path}' needs a header with 'path' and 'label' columns (got {fields}); "
                        "write 'path,label[,split]' as its first line")
    rows = [{(k or "").strip().lower(): (v or "").strip() for k, v in r.items()} for r in rows]
    paths = listed_paths(rows, path)
    labels = [r["label"] for r in rows]
    if any(not lb for lb in labels):
        line = labels.index("") + 2
        raise DataError(f"manifest '{path}' line {line} has an empty label; give every row a label")
    return paths, labels, split_column([r.get("split", "") for r in rows], f"manifest '{path}' line", first=2)


def split_column(raw: Sequence[str], where: str, first: int) -> Optional[list[str]]:
    """A manifest's split column as train/val/test (aliases allowed), or None when every entry is empty (splits
    are then drawn). `where` names the file and its unit ("manifest 'x.csv' line"), numbered from `first`."""
    if not any(raw):
        return None
    splits = []
    for n, s in enumerate(raw, start=first):
        if s.lower() not in _SPLIT_ALIASES:
            raise DataError(f"{where} {n} has unknown split '{s}'; use train, val or test "
                            "(or leave the whole column empty to draw splits)")
        splits.append(_SPLIT_ALIASES[s.lower()])
    return splits


def _approximate_mode(class_counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    """Draws per class of n_draws, about proportional to class_counts; remainders round up largest first, ties
    broken by `rng` (scikit-learn's utils.extmath._approximate_mode, step for step)."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (inds,) = np.where(remainder == value)
            add_now = min(len(inds), need_to_add)
            floored[rng.choice(inds, size=add_now, replace=False)] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    return floored.astype(int)


def stratified_split(idx: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rest, carved) of `idx`, `fraction` of it carved out stratified by `y` (one label per entry of idx):
    the same draw as scikit-learn's `train_test_split(idx, test_size=fraction, random_state=seed, stratify=y)`
    (StratifiedShuffleSplit, same random stream; tests/test_data.py compares them), without importing
    scikit-learn, whose import alone took 2.2-2.9 s of `clipkit extract` (`python -X importtime`).
    ValueError for a draw that can't be made, as scikit-learn raises it."""
    n = len(idx)
    if not 0 < fraction < 1:
        raise ValueError(f"test_size={fraction} should be a float in the (0, 1) range")
    n_test = int(np.ceil(fraction * n))
    n_train = n - n_test
    classes, y_indices, class_counts = np.unique(y, return_inverse=True, return_counts=True)
    if n_train == 0:
        raise ValueError(f"with {n} samples and test_size={fraction} the train set would be empty")
    if class_counts.min() < 2:
        raise ValueError(f"the least populated class has only 1 member: {classes[class_counts < 2].tolist()}")
    for name, size in (("train_size", n_train), ("test_size", n_test)):
        if size < len(classes):
            raise ValueError(f"the {name} = {size} should be greater or equal to the number of classes = "
                             f"{len(classes)}")
    class_indices = np.split(np.argsort(y_indices, kind="stable"), np.cumsum(class_counts)[:-1])
    rng = np.random.RandomState(seed)
    n_i = _approximate_mode(class_counts, n_train, rng)
    t_i = _approximate_mode(class_counts - n_i, n_test, rng)
    train, test = [], []
    for i in range(len(classes)):
        perm = class_indices[i].take(rng.permutation(class_counts[i]), mode="clip")
        train.extend(perm[:n_i[i]])
        test.extend(perm[n_i[i]:n_i[i] + t_i[i]])
    return idx[rng.permutation(train)], idx[rng.permutation(test)]


def _carve(idx: np.ndarray, labels: np.ndarray, fraction: float, seed: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Split `idx` into (rest, carved) with `fraction` of it carved out, stratified by label."""
    counts = Counter(labels[idx])
    small = [lb for lb, n in counts.items() if n < 3]
    if small:
        raise DataError(f"class '{small[0]}' has only {counts[small[0]]} training image(s); drawing a stratified "
                        f"{what} split needs at least 3 per class; add images or give explicit splits")
    try:
        rest, carved = stratified_split(idx, labels[idx], fraction, seed)
    except ValueError as e:
        raise DataError(f"can't draw a stratified {what} split of {len(idx)} images over {len(counts)} classes "
                        f"({e}); add images, change the fraction, or give explicit splits") from None
    return np.sort(rest), np.sort(carved)


def _assign_splits(labels: Sequence[str], splits: Optional[list[str]], seed: int, val_fraction: float,
                   test_fraction: float) -> list[str]:
    """Fill in missing splits: test first, then val, each drawn from train (stratified, seeded)."""
    lab = np.asarray(labels)
    out = np.asarray(splits if splits is not None else ["train"] * len(labels), dtype=object)
    if not (out == "test").any():
        _, test = _carve(np.flatnonzero(out == "train"), lab, test_fraction, seed, "test")
        out[test] = "test"
    if not (out == "val").any():
        train = np.flatnonzero(out == "train")
        # val_fraction is of the whole dataset; rescale to what is left in train
        frac = min(val_fraction * len(lab) / max(len(train), 1), 0.5) if splits is None else val_fraction
        _, val = _carve(train, lab, frac, seed + 1, "validation")
        out[val] = "val"
    return [str(s) for s in out]


def _check_classes(labels: list[str], splits: list[str], source: Path) -> list[str]:
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise DataError(f"dataset '{source}' has only one class ({classes[0]!r}); a classifier needs at least two: "
                        "add a folder (or CSV label) per class")
    in_train = {lb for lb, s in zip(labels, splits) if s == "train"}
    missing = [c for c in classes if c not in in_train]
    if missing:
        raise DataError(f"class '{missing[0]}' has no training examples in '{source}'; add images of it to the "
                        "train split (or drop it from val/test)")
    return classes


def load_dataset(source: str | Path, seed: int = 0, val_fraction: float = 0.15,
                 test_fraction: float = 0.15) -> LabelledDataset:
    """Read an ImageFolder (with or without split folders) or a CSV manifest; draw missing splits.

    Rows are in a deterministic order (sorted by class folder and file name, or the CSV's order), so the
    same files always give the same row numbers in a feature store.
    """
    root = Path(source)
    skipped: list[str] = []
    if not root.exists():
        raise DataError(f"dataset '{source}' does not exist; pass an image folder (ROOT/<label>/*.jpg) "
                        "or a CSV manifest (path,label[,split])")
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise DataError(f"dataset '{source}' is a file but not a .csv manifest; pass a folder or a CSV")
        paths, labels, splits = _read_csv(root)
        base = root.parent
    else:
        if not any(root.iterdir()):
            raise DataError(f"dataset folder '{source}' is empty; add one subfolder per class with images in it")
        paths, labels, splits = _read_image_folder(root, skipped)
        base = root
    if splits is not None and "train" not in splits:
        raise DataError(f"dataset '{source}' has splits but no train split; add a train folder/rows")
    if splits is None or len(set(splits)) < 3:
        _check_classes(labels, splits or ["train"] * len(labels), root)
        splits = _assign_splits(labels, splits, seed, val_fraction, test_fraction)
    classes = _check_classes(labels, splits, root)
    return LabelledDataset(root=base.resolve(), paths=paths, labels=labels, splits=splits, classes=classes,
                           skipped=skipped)


def unlabelled_dataset(paths: Sequence[str | Path]) -> LabelledDataset:
    """Images with no labels (for `clipkit embed`): every row's label and split are empty. Paths become
    absolute, in the given order, so the same files always give the same store rows."""
    files = [str(Path(p).absolute()) for p in paths]
    if not files:
        raise DataError("no images to embed; pass image files, folders or globs")
    root = Path(os.path.commonpath([str(Path(f).parent) for f in files]))
    return LabelledDataset(root=root, paths=files, labels=[""] * len(files), splits=[""] * len(files), classes=[])
