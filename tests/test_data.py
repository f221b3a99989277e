"""Labelled datasets: ImageFolder with/without split folders, CSV manifests, stratified seeded splits, errors."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from toolkit.data.datasets import dataset_name, load_dataset
from toolkit.errors import DataError


def _img(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = (np.random.default_rng(seed).random((12, 12, 3)) * 255).astype("uint8")
    Image.fromarray(arr).save(path)


def make_folder(root: Path, counts: dict[str, int]) -> Path:
    for c, n in counts.items():
        for i in range(n):
            _img(root / c / f"{i:03d}.png", hash((c, i)) % 1000)
    return root


def test_image_folder_draws_stratified_seeded_splits(tmp_path):
    root = make_folder(tmp_path / "ds", {"cat": 20, "dog": 20, "fish": 20})
    ds = load_dataset(root, seed=0, val_fraction=0.15, test_fraction=0.15)
    assert ds.classes == ["cat", "dog", "fish"] and len(ds) == 60
    counts = ds.counts()
    for c in ds.classes:  # stratified: each class is in every split, about 70/15/15
        assert counts["train"][c] >= 12 and counts["val"][c] >= 2 and counts["test"][c] >= 2
    assert sum(counts["test"].values()) == 9
    again = load_dataset(root, seed=0)
    other = load_dataset(root, seed=1)
    assert again.splits == ds.splits and other.splits != ds.splits
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in ds.paths)


def test_split_folders_are_kept_and_missing_val_is_drawn_from_train(tmp_path):
    make_folder(tmp_path / "ds" / "train", {"a": 10, "b": 10})
    make_folder(tmp_path / "ds" / "test", {"a": 3, "b": 2})
    ds = load_dataset(tmp_path / "ds", seed=0)
    c = Counter(ds.splits)
    assert c["test"] == 5 and c["val"] > 0 and c["train"] + c["val"] == 20
    test_paths = [p for p, s in zip(ds.paths, ds.splits) if s == "test"]
    assert all("/test/" in p for p in test_paths)
    assert dataset_name(tmp_path / "ds" / "train") == "ds"


def test_csv_manifest_with_splits_and_relative_paths(tmp_path):
    make_folder(tmp_path / "imgs", {"x": 4, "y": 4})
    rows = ["path,label,split"]
    for c in "xy":
        rows += [f"imgs/{c}/{i:03d}.png,{c},{['train', 'train', 'val', 'test'][i]}" for i in range(4)]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    ds = load_dataset(tmp_path / "m.csv")
    assert ds.classes == ["x", "y"] and Counter(ds.splits) == {"train": 4, "val": 2, "test": 2}
    assert dataset_name(tmp_path / "m.csv") == "m"


def test_csv_errors_name_the_bad_value(tmp_path):
    make_folder(tmp_path / "imgs", {"x": 1})
    (tmp_path / "missing.csv").write_text("path,label\nimgs/x/000.png,x\nimgs/x/nope.png,x\n")
    with pytest.raises(DataError, match=r"1 file\(s\) listed .* don't exist: imgs/x/nope.png"):
        load_dataset(tmp_path / "missing.csv")
    (tmp_path / "split.csv").write_text("path,label,split\nimgs/x/000.png,x,training-set\n")
    with pytest.raises(DataError, match="unknown split 'training-set'"):
        load_dataset(tmp_path / "split.csv")
    (tmp_path / "cols.csv").write_text("file,class\nimgs/x/000.png,x\n")
    with pytest.raises(DataError, match="'path' and 'label' columns"):
        load_dataset(tmp_path / "cols.csv")


@pytest.mark.parametrize("layout, message", [
    ({}, "is empty"),
    ({"only": 5}, "only one class"),
    ({"a": 5, "b": 0}, "class folder .*b' has no images"),
    ({"a": 5, "b": 2}, "class 'b' has only 2"),
])
def test_unusable_folders_raise_one_line_errors(tmp_path, layout, message):
    root = tmp_path / "ds"
    root.mkdir()
    make_folder(root, {k: v for k, v in layout.items() if v})
    for k, v in layout.items():
        (root / k).mkdir(exist_ok=True)
    with pytest.raises(DataError, match=message) as e:
        load_dataset(root)
    assert "\n" not in e.value.message


def test_class_without_training_examples_is_refused(tmp_path):
    make_folder(tmp_path / "ds" / "train", {"a": 5, "b": 5})
    make_folder(tmp_path / "ds" / "val", {"a": 2, "c": 2})
    make_folder(tmp_path / "ds" / "test", {"a": 2, "b": 2})
    with pytest.raises(DataError, match="class 'c' has no training examples"):
        load_dataset(tmp_path / "ds")


def test_missing_source_and_mixed_layout(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "nope")
    make_folder(tmp_path / "ds" / "train", {"a": 3})
    make_folder(tmp_path / "ds", {"b": 3})
    with pytest.raises(DataError, match="mixes split folders"):
        load_dataset(tmp_path / "ds")


def test_stratified_split_is_scikit_learns_draw():
    """datasets.stratified_split repeats train_test_split(stratify=...) without importing scikit-learn: the same
    rows on either side for uneven classes, fractions, seeds and label orders, and a ValueError where it raises."""
    from sklearn.model_selection import train_test_split

    from toolkit.data.datasets import stratified_split

    rng = np.random.default_rng(0)
    for case in range(60):
        n_classes = int(rng.integers(2, 7))
        counts = rng.integers(3, 40, n_classes)
        y = rng.permutation(np.repeat([f"c{k}" for k in rng.permutation(n_classes)], counts))
        idx = np.sort(rng.choice(10 * len(y), len(y), replace=False))  # a subset's row numbers, as _carve passes
        fraction, seed = float(rng.uniform(0.05, 0.5)), int(rng.integers(0, 2**31))
        try:
            want = train_test_split(idx, test_size=fraction, random_state=seed, stratify=y)
        except ValueError:
            with pytest.raises(ValueError):
                stratified_split(idx, y, fraction, seed)
            continue
        got = stratified_split(idx, y, fraction, seed)
        assert [a.tolist() for a in got] == [a.tolist() for a in want], case
    y = np.repeat(["a", "b", "c"], 3)
    for fraction in (0.1, 0.7):  # too few to carve one per class out, or to leave one per class in
        with pytest.raises(ValueError):
            train_test_split(np.arange(9), test_size=fraction, random_state=0, stratify=y)
        with pytest.raises(ValueError, match="number of classes"):
            stratified_split(np.arange(9), y, fraction, 0)
