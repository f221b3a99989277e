"""The novel suite's style shift: the same stick figures drawn the way the demo model never saw them.

The shift (``SHIFT``, the defaults of ``StyleShift``) changes two things against the plain style of
``figures.render_example``, each drawn from the image's ``rng`` (a seed still fixes the image bit
for bit, and the figure's pose, identity and placement are the plain style's for the same ``rng``):

- thick filled limbs: line width times 1.8-3x, head always filled;
- partial occlusion: half the images get a solid block over a random part of the figure's box.

``StyleShift`` can also clutter the background with shapes and roll the camera; the suite leaves
both off, because the tiny demo model's features do not survive them (see its docstring).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

from toolkit.demo.figures import (
    MIN_CONTRAST, PALETTE, PROPS, Figure, _add_noise, _background, _luma, draw_figure, random_figure,
    still_pose,
)

SUPERSAMPLE = 2


@dataclass(frozen=True)
class StyleShift:
    """How far the shifted style departs from the plain one (ranges are drawn uniformly).

    The defaults are the novel suite's: thick filled limbs and partial occlusion. Clutter and
    camera roll are there for stronger models; the 64 px demo model barely survives them (2-5
    shapes cut its zero-shot on the four main classes from 100% to 77%; a +-15 degree roll cost a
    16-shot probe on the novel suite 11 points).
    """

    thickness: tuple[float, float] = (1.8, 3.0)  # line width multiplier
    occlusion_p: float = 0.5  # chance of an occluding block
    occlusion_frac: tuple[float, float] = (0.15, 0.3)  # block side, fraction of the figure's box side
    clutter: tuple[int, int] = (0, 0)  # background shapes (rectangles, discs, bars)
    roll_deg: float = 0.0  # camera roll, up to this many degrees either way
    shrink: float = 1.0  # figure scale factor (below 1 keeps a rolled figure in the frame)


SHIFT = StyleShift()


def render_shifted(
    key: str, rng: np.random.Generator, size: int | tuple[int, int] = 224, shift: StyleShift = SHIFT
) -> tuple[Image.Image, dict]:
    """One image of class ``key`` in the shifted style, and its attributes (as ``render_example``,
    plus ``"style"``, ``"roll"`` and ``"occluded"``)."""
    wh = (size, size) if isinstance(size, int) else tuple(size)
    angles, level, phase = still_pose(key, rng)
    figure = random_figure(rng, wh, [(angles, level)])
    figure = replace(figure, line_width=figure.line_width * rng.uniform(*shift.thickness),
                     head_filled=True, scale=figure.scale * shift.shrink)  # fmt: skip
    k = SUPERSAMPLE
    img = Image.fromarray(_background(figure, wh[0] * k, wh[1] * k))
    _draw_clutter(img, figure, rng, int(rng.integers(shift.clutter[0], shift.clutter[1] + 1)))
    roll = float(rng.uniform(-shift.roll_deg, shift.roll_deg)) if shift.roll_deg else 0.0
    if roll:  # draw on a transparent layer, roll it about the figure's centre, lay it on the background
        layer = Image.new("RGBA", img.size, figure.rgb + (0,))  # edges fade to the figure's colour
        pts = draw_figure(layer, angles, figure, k, level, PROPS.get(key, ()))
        xy = np.stack(list(pts.values()))
        layer = layer.rotate(roll, Image.Resampling.BILINEAR, center=tuple((xy.min(0) + xy.max(0)) / 2))
        img.paste(layer, (0, 0), layer)
        xy = _rotated(xy, roll, (xy.min(0) + xy.max(0)) / 2)
    else:
        xy = np.stack(list(draw_figure(img, angles, figure, k, level, PROPS.get(key, ())).values()))
    occluded = bool(rng.random() < shift.occlusion_p)
    if occluded:
        _draw_occluder(img, figure, xy, rng, shift.occlusion_frac)
    img = img.resize(wh, Image.Resampling.BOX)
    img = _add_noise(img, figure.noise, rng)
    attrs = {"exercise": key, "phase": round(phase, 3), "color": figure.color,
             "background": figure.background, "floor_line": figure.floor_line,
             "mirrored": figure.mirrored, "style": "shifted", "roll": round(roll, 1),
             "occluded": occluded}  # fmt: skip
    return img, attrs


def _rotated(xy: np.ndarray, degrees: float, centre: np.ndarray) -> np.ndarray:
    """Points as ``Image.rotate(degrees, center=centre)`` moves them (counter-clockwise on screen)."""
    t = np.deg2rad(degrees)
    rot = np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])  # y points down
    return (xy - centre) @ rot.T + centre


def _other_color(figure: Figure, rng: np.random.Generator) -> tuple[int, int, int]:
    """A palette colour that stands out from the figure (so clutter never reads as a limb)."""
    names = [n for n, rgb in PALETTE.items()
             if abs(_luma(rgb) - _luma(figure.rgb)) >= MIN_CONTRAST / 2 and n != figure.color]  # fmt: skip
    return PALETTE[str(rng.choice(names))]


def _draw_clutter(img: Image.Image, figure: Figure, rng: np.random.Generator, n: int) -> None:
    """``n`` random rectangles, discs and bars anywhere on the background."""
    draw = ImageDraw.Draw(img)
    w, h = img.size
    for _ in range(n):
        color = _other_color(figure, rng)
        kind = int(rng.integers(3))
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        rx, ry = rng.uniform(0.03, 0.2) * w, rng.uniform(0.03, 0.2) * h
        if kind == 0:
            draw.rectangle([cx - rx, cy - ry, cx + rx, cy + ry], fill=color)
        elif kind == 1:
            draw.ellipse([cx - rx, cy - rx, cx + rx, cy + rx], fill=color)
        else:
            angle = rng.uniform(0, np.pi)
            dx, dy = np.cos(angle) * rx * 2, np.sin(angle) * rx * 2
            draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=color,
                      width=max(1, round(rng.uniform(0.01, 0.04) * w)))  # fmt: skip


def _draw_occluder(img: Image.Image, figure: Figure, xy: np.ndarray, rng: np.random.Generator,
                   frac: tuple[float, float]) -> None:
    """A solid block over a random part of the figure's bounding box."""
    (x0, y0), (x1, y1) = xy.min(axis=0), xy.max(axis=0)
    side = rng.uniform(*frac) * max(x1 - x0, y1 - y0)
    cx, cy = rng.uniform(x0, x1), rng.uniform(y0, y1)
    ImageDraw.Draw(img).rectangle([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2],
                                  fill=_other_color(figure, rng))  # fmt: skip
