"""The multi-label suite: exercise images with attributes drawn in, several labels per image.

Each image shows one exercise of ``MAIN_CLASSES`` (plain style) plus, each drawn independently at its
``RATES`` share of images, the attributes of ``ATTRIBUTES``: a dumbbell in the hand, a mat under the
figure, a ball on the floor, a cap on the head, an outdoor background (sky, grass and sun). An image's labels
are its exercise's label text and its attributes' label texts. The demo model was trained on the exercise
words only, so zero-shot knows the exercises and guesses the attributes: trained heads must earn their keep.

``write_multilabel`` writes OUT/images/{split}/NNNN.png, OUT/labels.csv (path,labels,split; labels joined
with '|'), the same rows as OUT/labels.jsonl, and OUT/classes.txt. Image ``i`` comes from its own
generator ``[seed, MULTILABEL_STREAM, i]``; the first images go to train, then val, then test.
"""
from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
from PIL import Image, ImageDraw

from toolkit.demo.figures import (
    MIN_CONTRAST, PALETTE, PROPS, Figure, _add_noise, _background, _luma, draw_figure, pixel_joints, random_figure,
    still_pose,
)
from toolkit.errors import DataError
from toolkit.fsio import atomic_dir
from toolkit.labels import EXERCISES, MAIN_CLASSES

ATTRIBUTES: dict[str, str] = {  # attribute key -> label text
    "dumbbell": "a person holding a dumbbell",
    "mat": "a mat on the floor",
    "ball": "a ball on the floor",
    "cap": "a person wearing a cap",
    "outdoor": "outdoors",
}
RATES: dict[str, float] = {"dumbbell": 0.35, "mat": 0.4, "ball": 0.3, "cap": 0.35, "outdoor": 0.4}
MULTILABEL_STREAM = 3_000_017  # second entropy word of every multi-label image's seed
SUPERSAMPLE = 2
SKY, GRASS, SUN = (150, 200, 240), (70, 150, 60), (250, 220, 80)


def multilabel_classes() -> list[str]:
    """Every label of the suite: the four exercises' texts, then the attributes' texts."""
    return [EXERCISES[k] for k in MAIN_CLASSES] + list(ATTRIBUTES.values())


def _object_color(figure: Figure, rng: np.random.Generator) -> tuple[int, int, int]:
    """A palette colour that stands out from both the figure and the background."""
    names = [n for n, rgb in PALETTE.items() if n not in (figure.color, figure.background)
             and abs(_luma(rgb) - _luma(figure.background_rgb)) >= MIN_CONTRAST / 2]
    return PALETTE[str(rng.choice(names))] if names else (200, 30, 30)


def _draw_outdoor(img: Image.Image, figure: Figure, k: int) -> None:
    draw = ImageDraw.Draw(img)
    horizon = figure.floor_y * k
    draw.rectangle([0, 0, img.width, horizon], fill=SKY)
    draw.rectangle([0, horizon, img.width, img.height], fill=GRASS)
    r = 0.07 * img.width
    cx = 0.15 * img.width if figure.anchor_x * k > img.width / 2 else 0.85 * img.width
    draw.ellipse([cx - r, 0.12 * img.height - r, cx + r, 0.12 * img.height + r], fill=SUN)


def _draw_mat(img: Image.Image, pts, figure: Figure, k: int, color) -> None:
    """A flat mat on the floor under the whole figure (its joints' horizontal extent, plus a margin)."""
    unit = figure.scale * k
    xs = [p[0] for p in pts.values()]
    y = figure.floor_y * k
    ImageDraw.Draw(img).rectangle([min(xs) - 0.15 * unit, y - 0.01 * unit, max(xs) + 0.15 * unit, y + 0.07 * unit],
                                  fill=color)


def _draw_ball(img: Image.Image, figure: Figure, k: int, color, rng: np.random.Generator) -> None:
    unit = figure.scale * k
    r = 0.13 * unit
    side = -1 if figure.anchor_x * k > img.width / 2 else 1
    cx = figure.anchor_x * k + side * rng.uniform(0.5, 0.7) * unit
    cx = float(np.clip(cx, r, img.width - r))
    cy = figure.floor_y * k - r
    ImageDraw.Draw(img).ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)


def _draw_dumbbell(img: Image.Image, pts, figure: Figure, k: int) -> None:
    """A bar through the hand across the forearm, a dark plate at each end."""
    unit = figure.scale * k
    d = pts["hand_r"] - pts["elbow_r"]
    d = d / (np.linalg.norm(d) + 1e-9)
    n = np.array([-d[1], d[0]])  # across the forearm
    a, b = pts["hand_r"] - n * 0.09 * unit, pts["hand_r"] + n * 0.09 * unit
    draw = ImageDraw.Draw(img)
    dark = (60, 60, 60) if _luma(figure.background_rgb) > 100 else (200, 200, 200)
    draw.line([tuple(a), tuple(b)], fill=dark, width=max(1, round(0.03 * unit)))
    s = 0.055 * unit
    for c in (a, b):
        draw.rectangle([c[0] - s, c[1] - s, c[0] + s, c[1] + s], fill=dark)


def _draw_cap(img: Image.Image, pts, figure: Figure, k: int, color) -> None:
    """A dome on the top half of the head and a brim to the side the figure faces."""
    r = figure.length["head_r"] * figure.scale * k
    hx, hy = pts["head"]
    draw = ImageDraw.Draw(img)
    draw.pieslice([hx - 1.4 * r, hy - 1.7 * r, hx + 1.4 * r, hy + 1.1 * r], 180, 360, fill=color)
    facing = -1 if figure.mirrored else 1
    x0, x1 = sorted((hx, hx + facing * 2.5 * r))
    draw.rectangle([x0, hy - 0.3 * r, x1, hy + 0.1 * r], fill=color)


def render_multilabel(rng: np.random.Generator, size: int = 224) -> tuple[Image.Image, str, list[str]]:
    """One image: (image, exercise key, attribute keys present), all drawn from `rng`."""
    key = str(rng.choice(list(MAIN_CLASSES)))
    attrs = [a for a in ATTRIBUTES if rng.random() < RATES[a]]
    angles, level, _ = still_pose(key, rng)
    wh = (size, size)
    figure = random_figure(rng, wh, [(angles, level)])
    k = SUPERSAMPLE
    if "outdoor" in attrs and abs(_luma(figure.rgb) - _luma(SKY)) < MIN_CONTRAST:
        figure = replace(figure, rgb=(20, 20, 20))  # a figure as light as the sky would vanish
    img = Image.fromarray(_background(figure, size * k, size * k))
    if "outdoor" in attrs:
        _draw_outdoor(img, figure, k)
    if "mat" in attrs:
        _draw_mat(img, pixel_joints(angles, figure, level, k), figure, k, _object_color(figure, rng))
    if "ball" in attrs:
        _draw_ball(img, figure, k, _object_color(figure, rng), rng)
    pts = draw_figure(img, angles, figure, k, level, PROPS.get(key, ()))
    if "dumbbell" in attrs:
        _draw_dumbbell(img, pts, figure, k)
    if "cap" in attrs:
        _draw_cap(img, pts, figure, k, _object_color(figure, rng))
    img = img.resize(wh, Image.Resampling.BOX)
    return _add_noise(img, figure.noise, rng), key, attrs


def iter_multilabel(n_images: int, seed: int = 0, split: tuple[float, float, float] = (0.7, 0.15, 0.15),
                    size: int = 224) -> Iterator[tuple[str, int, Image.Image, list[str]]]:
    """(split, index, image, label texts) of every image, in index order."""
    from toolkit.demo.dataset import SPLITS, split_counts

    boundaries = np.cumsum([split_counts(n_images, split)[s] for s in SPLITS])
    for i in range(n_images):
        img, key, attrs = render_multilabel(np.random.default_rng([seed, MULTILABEL_STREAM, i]), size)
        labels = [EXERCISES[key]] + [ATTRIBUTES[a] for a in attrs]
        yield SPLITS[int(np.searchsorted(boundaries, i, side="right"))], i, img, labels


def write_multilabel(out: str | Path, n_images: int, seed: int = 0,
                     split: tuple[float, float, float] = (0.7, 0.15, 0.15), size: int = 224, overwrite: bool = False,
                     on_image: Optional[Callable[[], None]] = None) -> dict[str, dict[str, int]]:
    """Write the suite (see the module docstring); returns {split: {label: n_images carrying it}}."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise DataError(f"output folder {out} is not empty; choose another folder or pass --overwrite")
    digits = max(4, len(str(n_images - 1)))
    summary: dict[str, dict[str, int]] = {}
    rows = []
    with atomic_dir(out) as tmp:
        for split_name, i, img, labels in iter_multilabel(n_images, seed, split, size):
            rel = Path("images") / split_name / f"{i:0{digits}d}.png"
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            img.save(tmp / rel, compress_level=1)  # lossless either way; level 1 writes ~2x faster
            rows.append((rel.as_posix(), labels, split_name))
            per = summary.setdefault(split_name, {})
            for lb in labels:
                per[lb] = per.get(lb, 0) + 1
            if on_image:
                on_image()
        with open(tmp / "labels.csv", "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["path", "labels", "split"])
            w.writerows([p, "|".join(lb), s] for p, lb, s in rows)
        (tmp / "labels.jsonl").write_text("".join(json.dumps({"path": p, "labels": lb, "split": s}) + "\n"
                                                  for p, lb, s in rows))
        (tmp / "classes.txt").write_text("".join(c + "\n" for c in multilabel_classes()))
    return summary
