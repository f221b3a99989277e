"""Write a labelled ImageFolder of generated images: OUT/{train,val,test}/<label>/NNNN.png.

Two suites: ``main`` (the exercises of ``EXERCISES``, plain style: what the demo model was trained
on) and ``novel`` (the classes of ``NOVEL``, which it never saw, drawn in the shifted style of
``toolkit.demo.style``). The class folder name is the label text, so a folder doubles as the
zero-shot label set. Image ``i`` of a class is drawn from its own generator (``suite_rng``: for
``main`` that is ``example_rng(seed, class_index, i)`` with ``class_index`` = position in
``EXERCISES``), so a class's images don't depend on which other classes are written; the first
images of a class go to train, then val, then test. Everything is written into a temporary sibling
folder that is renamed to OUT at the end.

    make_suite("novel", n_per_class=40, seed=0)["test"]   # (images, labels) in memory, no files
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import numpy as np
from PIL import Image

from toolkit.demo import LABELS, SUITES
from toolkit.demo.captions import caption
from toolkit.demo.figures import example_rng, render_example
from toolkit.demo.style import render_shifted
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


STYLES = ("plain", "shifted")
NOVEL_STREAM = 2_000_003  # second entropy word of every novel-suite image's seed


def parse_classes(text: str, suite: str = "main") -> list[str]:
    """'squat, plank' -> ['squat', 'plank']; 'all' -> every class ``suite`` can draw, 'default' -> its
    default classes; ValueError on unknown keys."""
    classes = _suite(suite)[0]
    if text.strip() == "default":
        return list(_suite(suite)[1])
    if text.strip() == "all":
        return list(classes)
    keys = [k.strip() for k in text.split(",") if k.strip()]
    for key in keys:
        if key not in classes:
            raise ValueError(f"unknown {suite}-suite class {key!r}; choose from {', '.join(classes)}")
    if len(set(keys)) != len(keys) or not keys:
        raise ValueError(f"bad classes {text!r}; give distinct keys from {', '.join(classes)}")
    return keys


def _suite(name: str):
    try:
        return SUITES[name]
    except KeyError:
        raise ValueError(f"unknown suite {name!r}; choose from {', '.join(SUITES)}") from None


def suite_rng(seed: int, suite: str, class_index: int, index: int) -> np.random.Generator:
    """The generator for image ``index`` of class ``class_index`` (position in the suite's classes)."""
    if suite == "main":
        return example_rng(seed, class_index, index)
    return np.random.default_rng([seed, NOVEL_STREAM, class_index, index])


def render_image(key: str, rng: np.random.Generator, size: int | tuple[int, int] = 224,
                 style: str = "plain") -> tuple[Image.Image, dict]:
    """One image of class ``key`` in ``style`` ("plain" or "shifted") and its attributes."""
    if style == "plain":
        return render_example(key, rng, size)
    if style == "shifted":
        return render_shifted(key, rng, size)
    raise ValueError(f"unknown style {style!r}; choose from {', '.join(STYLES)}")


@dataclass(frozen=True)
class Example:
    """One generated image with its split, class and a caption (as in manifest.csv)."""

    split: str
    key: str
    label: str
    index: int  # position within its class
    image: Image.Image
    caption: str


def iter_suite(
    suite: str = "main",
    n_per_class: int = 100,
    seed: int = 0,
    classes: Optional[Iterable[str]] = None,
    split: tuple[float, float, float] = (0.7, 0.15, 0.15),
    size: int = 224,
    style: Optional[str] = None,
) -> Iterator[Example]:
    """Every image of the suite, class by class; ``classes`` and ``style`` default to the suite's."""
    allowed, default_keys, default_style = _suite(suite)
    keys = list(default_keys if classes is None else classes)
    style = style or default_style
    boundaries = np.cumsum([split_counts(n_per_class, split)[s] for s in SPLITS])
    for key in keys:
        if key not in allowed:
            raise ValueError(f"unknown {suite}-suite class {key!r}; choose from {', '.join(allowed)}")
        class_index = allowed.index(key)
        for i in range(n_per_class):
            rng = suite_rng(seed, suite, class_index, i)
            img, attrs = render_image(key, rng, size, style)
            split_name = SPLITS[int(np.searchsorted(boundaries, i, side="right"))]
            yield Example(split_name, key, LABELS[key], i, img, caption(key, attrs, rng))


def make_suite(suite: str = "novel", n_per_class: int = 100, seed: int = 0, **kwargs
               ) -> dict[str, tuple[list[Image.Image], list[str]]]:
    """The suite in memory: {split: (PIL images, label texts)}, classes in order within a split; a
    split with no images is left out. ``kwargs`` as ``iter_suite`` (classes, split, size, style)."""
    out: dict[str, tuple[list[Image.Image], list[str]]] = {}
    for ex in iter_suite(suite, n_per_class, seed, **kwargs):
        images, labels = out.setdefault(ex.split, ([], []))
        images.append(ex.image)
        labels.append(ex.label)
    return out


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
    suite: str = "main",
    style: Optional[str] = None,
) -> dict[str, dict[str, int]]:
    """Write the dataset; returns {split: {label: n_images}}. Also writes labels.txt and manifest.csv.

    ``suite`` is "main" or "novel" (``classes`` are keys of that suite); ``style`` defaults to the
    suite's ("plain" for main, "shifted" for novel). ``on_image`` is called once per written image
    (a progress bar hook). Raises ``DataError`` if OUT is a non-empty folder and ``overwrite`` is
    False, or a split would get no images.
    """
    out = Path(out)
    keys = list(classes)
    counts = split_counts(n_per_class, split)
    if counts["train"] < 1:
        raise DataError(f"--n-per-class {n_per_class} leaves no training images; use at least 2")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise DataError(f"output folder {out} is not empty; choose another folder or pass --overwrite")
    examples = iter_suite(suite, n_per_class, seed, keys, split, size, style)
    with atomic_dir(out) as tmp:  # a temp folder beside OUT (mode from the umask), swapped in when complete
        summary = _write_all(tmp, examples, n_per_class, on_image)
        (tmp / "labels.txt").write_text("".join(LABELS[k] + "\n" for k in keys))
    return summary


def _write_all(root: Path, examples: Iterable[Example], n_per_class: int, on_image):
    digits = max(4, len(str(n_per_class - 1)))
    summary: dict[str, dict[str, int]] = {}
    rows = []
    for ex in examples:
        rel = Path(ex.split) / ex.label / f"{ex.index:0{digits}d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        ex.image.save(root / rel, compress_level=1)  # lossless either way; level 1 writes ~2x faster
        rows.append([rel.as_posix(), ex.split, ex.label, ex.key, ex.caption])
        per_label = summary.setdefault(ex.split, {})
        per_label[ex.label] = per_label.get(ex.label, 0) + 1
        if on_image:
            on_image()
    with open(root / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "split", "label", "exercise", "caption"])
        writer.writerows(rows)
    return summary
