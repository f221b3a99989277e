"""Write a labelled ImageFolder of generated exercise images: OUT/{train,val,test}/<label>/NNNN.png.

The class folder name is the label text (``EXERCISES[key]``), so a folder doubles as the
zero-shot label set. Image ``i`` of a class is drawn from ``example_rng(seed, class_index, i)``
(``class_index`` = position in ``EXERCISES``), so a class's images don't depend on which other
classes are written; the first images of a class go to train, then val, then test. Everything is
written into a temporary sibling folder that is renamed to OUT at the end.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np

from toolkit.demo import EXERCISES, label_of
from toolkit.demo.captions import caption
from toolkit.demo.figures import example_rng, render_example
from toolkit.errors import DataError
from toolkit.fsio import atomic_dir

SPLITS = ("train", "val", "test")


def parse_split(text: str) -> tuple[float, float, float]:
    """'0.7,0.15,0.15' -> (0.7, 0.15, 0.15); ValueError unless three fractions summing to 1."""
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) < 0 or abs(sum(parts) - 1) > 1e-6 or parts[0] <= 0:
        raise ValueError(
            f"bad split {text!r}; give train,val,test fractions that sum to 1, e.g. 0.7,0.15,0.15"
        )
    return parts  # type: ignore[return-value]


def parse_classes(text: str) -> list[str]:
    """'squat, plank' -> ['squat', 'plank']; 'all' -> every exercise; ValueError on unknown keys."""
    if text.strip() == "all":
        return list(EXERCISES)
    keys = [k.strip() for k in text.split(",") if k.strip()]
    for key in keys:
        label_of(key)
    if len(set(keys)) != len(keys) or not keys:
        raise ValueError(f"bad classes {text!r}; give distinct keys from {', '.join(EXERCISES)}")
    return keys


def split_counts(n: int, split: tuple[float, float, float]) -> dict[str, int]:
    """Images per split for ``n`` per class (largest remainder; ties go to the earlier split)."""
    exact = [n * f for f in split]
    counts = [int(np.floor(x + 1e-9)) for x in exact]
    by_remainder = sorted(range(3), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    return dict(zip(SPLITS, counts))


def write_imagefolder(
    out: str | Path,
    n_per_class: int,
    seed: int,
    classes: Iterable[str],
    split: tuple[float, float, float] = (0.7, 0.15, 0.15),
    size: int = 224,
    overwrite: bool = False,
    on_image: Optional[Callable[[], None]] = None,
) -> dict[str, dict[str, int]]:
    """Write the dataset; returns {split: {label: n_images}}. Also writes labels.txt and manifest.csv.

    ``on_image`` is called once per written image (a progress bar hook). Raises ``DataError``
    if OUT is a non-empty folder and ``overwrite`` is False, or a split would get no images.
    """
    out = Path(out)
    keys = list(classes)
    counts = split_counts(n_per_class, split)
    if counts["train"] < 1:
        raise DataError(f"--n-per-class {n_per_class} leaves no training images; use at least 2")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise DataError(f"output folder {out} is not empty; choose another folder or pass --overwrite")
    with atomic_dir(out) as tmp:  # a temp folder beside OUT (mode from the umask), swapped in when complete
        summary = _write_all(tmp, keys, n_per_class, seed, counts, size, on_image)
    return summary


def _write_all(root: Path, keys, n_per_class, seed, counts, size, on_image):
    digits = max(4, len(str(n_per_class - 1)))
    boundaries = np.cumsum([counts[s] for s in SPLITS])
    summary: dict[str, dict[str, int]] = {s: {} for s in SPLITS if counts[s]}
    rows = []
    for key in keys:
        label, class_index = EXERCISES[key], list(EXERCISES).index(key)
        for i in range(n_per_class):
            split = SPLITS[int(np.searchsorted(boundaries, i, side="right"))]
            rng = example_rng(seed, class_index, i)
            img, attrs = render_example(key, rng, size)
            rel = Path(split) / label / f"{i:0{digits}d}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            img.save(root / rel)
            rows.append([rel.as_posix(), split, label, key, caption(key, attrs, rng)])
            summary[split][label] = summary[split].get(label, 0) + 1
            if on_image:
                on_image()
    (root / "labels.txt").write_text("".join(EXERCISES[k] + "\n" for k in keys))
    with open(root / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "split", "label", "exercise", "caption"])
        writer.writerows(rows)
    return summary
