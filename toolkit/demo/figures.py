"""Stick figures: a ten-segment skeleton, named poses, random identities and a PIL renderer.

A pose is a float array of absolute segment angles in degrees, in ``SEGMENTS`` order
(see ``toolkit.demo.poses``, which holds the named poses). Lengths are in figure units (a standing
figure is about 0.93 units tall); pixels = units * ``Figure.scale``.

Each exercise is a (rest pose, peak pose) pair in ``MOTIONS``; a repetition is a cycle
rest -> peak -> rest, and ``pose_at(key, phase)`` interpolates the angles (phase 0 = rest,
1 = peak). Everything random flows from a ``numpy.random.Generator``, so a seed fixes the
image bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from toolkit.demo.poses import (  # noqa: F401  (re-exported: callers import them from here)
    DEFAULT_STILL_PHASE, HORIZONTAL, MOTIONS, POSES, PROPS, SEGMENTS, STILL_PHASE,
)

# Mean segment lengths in figure units; each figure scales them by up to +-10%.
LENGTHS: dict[str, float] = {
    "torso": 0.30, "neck": 0.03, "head_r": 0.065,
    "upper_arm": 0.16, "forearm": 0.15, "thigh": 0.24, "shin": 0.23,
}  # fmt: skip

# name -> RGB. Names are the words captions use for figure and background colours.
PALETTE: dict[str, tuple[int, int, int]] = {
    "black": (20, 20, 20), "white": (245, 245, 245), "gray": (128, 128, 128),
    "red": (200, 30, 30), "green": (40, 150, 50), "blue": (40, 70, 200),
    "yellow": (240, 210, 40), "orange": (240, 140, 30), "purple": (130, 50, 160),
    "pink": (240, 130, 180), "brown": (120, 75, 40), "light blue": (150, 200, 240),
    "beige": (225, 210, 180),
}  # fmt: skip
MIN_CONTRAST = 70.0  # luminance difference (0-255) between figure and background


@dataclass(frozen=True)
class Figure:
    """One person's identity and placement; constant across the frames of a video."""

    lengths: tuple[tuple[str, float], ...]  # (segment, length in units)
    angle_offsets: tuple[float, ...]  # degrees added to every pose, SEGMENTS order
    mirrored: bool  # True: side views face left
    scale: float  # pixels per unit
    anchor_x: float  # pixel x of the midpoint between the feet
    floor_y: float  # pixel y of the lowest point of the figure
    line_width: float  # pixels
    head_filled: bool
    color: str  # PALETTE name
    background: str  # PALETTE name
    rgb: tuple[int, int, int]  # figure colour after jitter
    background_rgb: tuple[int, int, int]
    gradient: float  # vertical background brightness ramp, fraction of the colour
    floor_line: bool
    noise: float  # std of per-pixel Gaussian noise, 0-255 scale

    @property
    def length(self) -> dict[str, float]:
        return dict(self.lengths)


def pose_at(key: str, phase: float) -> tuple[np.ndarray, bool]:
    """Angles of exercise ``key`` at ``phase`` (0 = rest, 1 = peak), and whether it is levelled."""
    rest, peak = MOTIONS[key]
    angles = POSES[rest] + float(phase) * (POSES[peak] - POSES[rest])
    return angles, rest in HORIZONTAL and peak in HORIZONTAL


def _direction(angle_deg: np.ndarray) -> np.ndarray:
    rad = np.deg2rad(angle_deg)
    return np.stack([np.sin(rad), np.cos(rad)], axis=-1)  # image coordinates, y down


def joints(angles: np.ndarray, length: dict[str, float], level: bool) -> dict[str, np.ndarray]:
    """Joint positions in units, hip at the origin (levelled poses: rotated about a foot)."""
    d = dict(zip(SEGMENTS, _direction(angles)))
    hip = np.zeros(2)
    neck = hip + length["torso"] * d["torso"]
    shoulder = hip + 0.88 * length["torso"] * d["torso"]
    pts = {"hip": hip, "neck": neck, "shoulder": shoulder,
           "head": neck + (length["neck"] + length["head_r"]) * d["head"]}  # fmt: skip
    for side in ("l", "r"):
        pts[f"elbow_{side}"] = shoulder + length["upper_arm"] * d[f"upper_arm_{side}"]
        pts[f"hand_{side}"] = pts[f"elbow_{side}"] + length["forearm"] * d[f"forearm_{side}"]
        pts[f"knee_{side}"] = hip + length["thigh"] * d[f"thigh_{side}"]
        pts[f"foot_{side}"] = pts[f"knee_{side}"] + length["shin"] * d[f"shin_{side}"]
    if level:
        pts = _level(pts)
    return pts


def _level(pts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rotate a horizontal pose about its lower foot until its lower hand is at the same height."""
    foot = max((pts["foot_l"], pts["foot_r"]), key=lambda p: p[1])
    hand = max((pts["hand_l"], pts["hand_r"]), key=lambda p: p[1])
    v = hand - foot
    theta = -np.arctan2(v[1], abs(v[0])) * np.sign(v[0])  # brings v to horizontal
    c, s = np.cos(theta), np.sin(theta)
    rot = np.array([[c, -s], [s, c]])
    return {k: foot + rot @ (p - foot) for k, p in pts.items()}


def _bounds(pts: dict[str, np.ndarray], head_r: float) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) in units relative to (feet midpoint x, lowest point y)."""
    xy = np.stack(list(pts.values()))
    head = pts["head"]
    x0, x1 = min(xy[:, 0].min(), head[0] - head_r), max(xy[:, 0].max(), head[0] + head_r)
    y0, y1 = min(xy[:, 1].min(), head[1] - head_r), max(xy[:, 1].max(), head[1] + head_r)
    ref = (pts["foot_l"][0] + pts["foot_r"][0]) / 2
    return x0 - ref, y0 - y1, x1 - ref, 0.0


def _effective(angles: np.ndarray, offsets, mirrored: bool) -> np.ndarray:
    """The angles a figure actually shows: its own offsets added, negated when mirrored."""
    a = angles + np.asarray(offsets)
    return -a if mirrored else a


def _pick_colors(rng: np.random.Generator) -> tuple[str, str]:
    names = list(PALETTE)
    while True:
        fg, bg = rng.choice(names, size=2, replace=False)
        if abs(_luma(PALETTE[fg]) - _luma(PALETTE[bg])) >= MIN_CONTRAST:
            return str(fg), str(bg)


def _luma(rgb: tuple[int, int, int]) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def _jitter_rgb(rgb: tuple[int, int, int], rng: np.random.Generator) -> tuple[int, int, int]:
    out = np.clip(np.asarray(rgb) + rng.integers(-15, 16, size=3), 0, 255)
    return tuple(int(c) for c in out)


def random_figure(
    rng: np.random.Generator,
    size: tuple[int, int],
    poses: list[tuple[np.ndarray, bool]],
    angle_jitter: float = 7.0,
) -> Figure:
    """A random identity placed so that every (angles, level) in ``poses`` fits inside ``size``.

    ``size`` is (width, height) in pixels; ``angle_jitter`` is the std (degrees) of the
    per-figure offset added to every segment angle.
    """
    width, height = size
    length = {k: v * rng.uniform(0.9, 1.1) for k, v in LENGTHS.items()}
    offsets = rng.normal(0.0, angle_jitter, size=len(SEGMENTS))
    offsets[1] *= 1.5  # heads nod more than limbs bend
    mirrored = bool(rng.random() < 0.5)
    color, background = _pick_colors(rng)
    boxes = np.array([_bounds(joints(_effective(a, offsets, mirrored), length, lv), length["head_r"])
                      for a, lv in poses])  # fmt: skip
    x0, y0 = boxes[:, 0].min(), boxes[:, 1].min()
    x1 = boxes[:, 2].max()
    margin = 0.04 * min(width, height)
    fit = min((width - 2 * margin) / (x1 - x0), (height - 2 * margin) / -y0)
    scale = fit * rng.uniform(0.55, 0.95)
    anchor_x = rng.uniform(margin - scale * x0, width - margin - scale * x1)
    floor_y = rng.uniform(margin - scale * y0, height - margin)
    return Figure(
        lengths=tuple(length.items()),
        angle_offsets=tuple(float(o) for o in offsets),
        mirrored=mirrored,
        scale=float(scale),
        anchor_x=float(anchor_x),
        floor_y=float(floor_y),
        line_width=float(scale * rng.uniform(0.025, 0.06)),
        head_filled=bool(rng.random() < 0.5),
        color=color,
        background=background,
        rgb=_jitter_rgb(PALETTE[color], rng),
        background_rgb=_jitter_rgb(PALETTE[background], rng),
        gradient=float(rng.uniform(-0.15, 0.15)),
        floor_line=bool(rng.random() < 0.5),
        noise=float(rng.uniform(0.0, 12.0)),
    )


def anchor_range(
    figure: Figure, poses: list[tuple[np.ndarray, bool]], size: tuple[int, int]
) -> tuple[float, float]:
    """(leftmost, rightmost) pixel ``anchor_x`` at which every (angles, level) in ``poses`` fits
    across a (width, height) frame at the figure's scale, with ``random_figure``'s margin."""
    boxes = np.array([_bounds(joints(_effective(a, figure.angle_offsets, figure.mirrored), figure.length, lv),
                              figure.length["head_r"]) for a, lv in poses])  # fmt: skip
    width, height = size
    margin = 0.04 * min(width, height)
    lo, hi = margin - figure.scale * boxes[:, 0].min(), width - margin - figure.scale * boxes[:, 2].max()
    return (lo, hi) if lo <= hi else ((lo + hi) / 2, (lo + hi) / 2)


def render_pose(
    angles: np.ndarray,
    figure: Figure,
    size: tuple[int, int],
    rng: np.random.Generator,
    level: bool = False,
    supersample: int = 2,
    props: tuple[str, ...] = (),
) -> Image.Image:
    """Draw ``figure`` in pose ``angles`` on a (width, height) RGB image; ``rng`` draws the noise.

    ``props`` names objects drawn with the figure (see ``poses.PROPS``: "chair", "bottle").
    """
    width, height = size
    k = supersample
    img = Image.fromarray(_background(figure, width * k, height * k))
    draw_figure(img, angles, figure, k, level, props)
    if k > 1:
        img = img.resize((width, height), Image.Resampling.BOX)
    return _add_noise(img, figure.noise, rng)


def pixel_joints(angles: np.ndarray, figure: Figure, level: bool, k: int = 1) -> dict[str, np.ndarray]:
    """Joint positions in pixels of an image ``k`` times the figure's frame size."""
    length = figure.length
    pts = joints(_effective(angles, figure.angle_offsets, figure.mirrored), length, level)
    lowest = max(max(p[1] for p in pts.values()), pts["head"][1] + length["head_r"])
    ref_x = (pts["foot_l"][0] + pts["foot_r"][0]) / 2
    return {name: np.array([(figure.anchor_x + figure.scale * (p[0] - ref_x)) * k,
                            (figure.floor_y + figure.scale * (p[1] - lowest)) * k])
            for name, p in pts.items()}  # fmt: skip


def draw_figure(
    img: Image.Image, angles: np.ndarray, figure: Figure, k: int = 1, level: bool = False,
    props: tuple[str, ...] = (),
) -> dict[str, np.ndarray]:
    """Draw ``figure`` (and its ``props``) onto ``img``, an image ``k`` times the figure's frame.

    Returns the joint positions in ``img`` pixels.
    """
    pts = pixel_joints(angles, figure, level, k)
    draw = ImageDraw.Draw(img)
    lw = max(1.0, figure.line_width * k)
    if figure.floor_line:
        y = figure.floor_y * k + lw / 2
        draw.line([(0, y), (img.width, y)], fill=_floor_rgb(figure), width=max(1, round(lw * 0.7)))
    if "chair" in props:
        _draw_chair(draw, pts, figure, k, lw)
    bones = [("hip", "neck")] + [
        (a, b)
        for s in ("l", "r")
        for a, b in (("shoulder", f"elbow_{s}"), (f"elbow_{s}", f"hand_{s}"),
                     ("hip", f"knee_{s}"), (f"knee_{s}", f"foot_{s}"))
    ]  # fmt: skip
    for a, b in bones:
        draw.line([tuple(pts[a]), tuple(pts[b])], fill=figure.rgb, width=round(lw))
    for name, (x, y) in pts.items():  # round caps at every joint
        if name != "head":
            draw.ellipse([x - lw / 2, y - lw / 2, x + lw / 2, y + lw / 2], fill=figure.rgb)
    hx, hy = pts["head"]
    r = figure.length["head_r"] * figure.scale * k
    fill = figure.rgb if figure.head_filled else None
    draw.ellipse([hx - r, hy - r, hx + r, hy + r], outline=figure.rgb, fill=fill, width=round(lw))
    if "bottle" in props:
        _draw_bottle(draw, pts, figure, k, lw)
    return pts


def _draw_chair(draw: ImageDraw.ImageDraw, pts, figure: Figure, k: int, lw: float) -> None:
    """A side-view chair under the hips: seat from behind the hip to mid-thigh, legs, a backrest."""
    unit = figure.scale * k  # pixels per figure unit
    forward = np.sign(pts["knee_l"][0] + pts["knee_r"][0] - 2 * pts["hip"][0]) or 1.0
    seat_y = pts["hip"][1] + lw
    back_x, front_x = pts["hip"][0] - forward * 0.08 * unit, pts["hip"][0] + forward * 0.14 * unit
    floor_y = max(pts["foot_l"][1], pts["foot_r"][1]) + lw / 2
    color, width = _floor_rgb(figure), max(1, round(lw * 0.8))
    draw.line([(back_x, seat_y), (front_x, seat_y)], fill=color, width=width)
    for x in (back_x, front_x):
        draw.line([(x, seat_y), (x, floor_y)], fill=color, width=width)
    draw.line([(back_x, seat_y), (back_x, seat_y - 0.24 * unit)], fill=color, width=width)


def _draw_bottle(draw: ImageDraw.ImageDraw, pts, figure: Figure, k: int, lw: float) -> None:
    """A bottle in the right hand, pointing on along the forearm (into the mouth when drinking)."""
    d = pts["hand_r"] - pts["elbow_r"]
    d = d / (np.linalg.norm(d) + 1e-9)
    a, b = pts["hand_r"] - d * 0.02 * figure.scale * k, pts["hand_r"] + d * 0.07 * figure.scale * k
    draw.line([tuple(a), tuple(b)], fill=_floor_rgb(figure), width=max(1, round(lw * 1.8)))


def _background(figure: Figure, width: int, height: int) -> np.ndarray:
    ramp = 1.0 + figure.gradient * np.linspace(-1.0, 1.0, height)[:, None, None]
    rgb = np.asarray(figure.background_rgb, dtype=np.float32)[None, None, :] * ramp
    return np.broadcast_to(np.clip(rgb, 0, 255).astype(np.uint8), (height, width, 3)).copy()


def _floor_rgb(figure: Figure) -> tuple[int, int, int]:
    """Halfway between figure and background: visible, but never mistaken for a limb."""
    return tuple(int(c) for c in (np.asarray(figure.rgb) + np.asarray(figure.background_rgb)) // 2)


def _add_noise(img: Image.Image, sigma: float, rng: np.random.Generator) -> Image.Image:
    if sigma <= 0:
        return img
    arr = np.asarray(img, dtype=np.float32)
    arr += rng.normal(0.0, sigma, size=arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def still_pose(key: str, rng: np.random.Generator) -> tuple[np.ndarray, bool, float]:
    """A still-image pose of exercise ``key``: (angles, level, phase), near the peak."""
    lo, hi = STILL_PHASE.get(key, DEFAULT_STILL_PHASE)
    phase = float(rng.uniform(lo, hi))
    angles, level = pose_at(key, phase)
    if key == "standing" and rng.random() < 0.3:
        angles = POSES["hands_on_hips"].copy()
    return angles, level, phase


def render_example(
    key: str, rng: np.random.Generator, size: int | tuple[int, int] = 224
) -> tuple[Image.Image, dict]:
    """One random image of exercise ``key`` and its attributes (for captions and manifests).

    The attributes are ``{"exercise", "phase", "color", "background", "floor_line",
    "mirrored"}``; the same ``rng`` state always gives the same image and attributes.
    """
    if key not in MOTIONS:
        raise ValueError(f"unknown exercise {key!r}; choose from {', '.join(MOTIONS)}")
    wh = (size, size) if isinstance(size, int) else tuple(size)
    angles, level, phase = still_pose(key, rng)
    figure = random_figure(rng, wh, [(angles, level)])
    img = render_pose(angles, figure, wh, rng, level=level, props=PROPS.get(key, ()))
    attrs = {"exercise": key, "phase": round(phase, 3), "color": figure.color,
             "background": figure.background, "floor_line": figure.floor_line,
             "mirrored": figure.mirrored}  # fmt: skip
    return img, attrs


def example_rng(seed: int, class_index: int, index: int) -> np.random.Generator:
    """The generator for image ``index`` of class ``class_index`` under ``seed``.

    ``clipkit demo-data`` and ``scripts/eval_demo.py`` use this; training uses a different
    stream (see scripts/train_demo_model.py), so evaluation images never repeat training ones.
    """
    return np.random.default_rng([seed, class_index, index])
