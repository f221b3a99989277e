"""Offline demo data: procedural stick-figure people doing exercises, as images and videos.

Everything here is numpy + PIL (+ PyAV for video); it never imports torch or open_clip, so it
is cheap to import from tests, scripts and the CLI.

``EXERCISES`` maps a class key to its label text. The label text is what the demo model is
prompted with and what ``clipkit demo-data`` uses as the ImageFolder class folder name.
``NOVEL`` holds the classes of the novel suite, which the demo model never saw in training;
three of them (``OTHER_ACTIVITIES``) are the non-exercise stretches of demo videos.
"""
from __future__ import annotations

from toolkit.labels import EXERCISES, MAIN_CLASSES  # the exercise labels, defined once

NOVEL: dict[str, str] = {
    "sit_up": "a person doing a sit-up",
    "high_knees": "a person doing high knees",
    "side_plank": "a person doing a side plank",
    "mountain_climber": "a person doing a mountain climber",
    "arms_raised": "a person doing an arms-raised stretch",
    "lying_down": "a person lying down",
    "sitting": "a person sitting",
    "walking": "a person walking",
    "drinking": "a person drinking water",
}

# Not exercises: a video stretch of one of these has no reps (walking crosses the frame).
OTHER_ACTIVITIES: tuple[str, ...] = ("walking", "sitting", "drinking")

# The novel suite's default classes: seven the demo model never saw, next to the six it was trained
# on, like a user's label set that mixes labels a CLIP model knows with niche ones it does not.
# (Zero-shot on never-seen classes alone is near chance with the demo model; see scripts/suite_check.py.)
NOVEL_CLASSES: tuple[str, ...] = ("sit_up", "high_knees", "side_plank", "mountain_climber",
                                  "arms_raised", "lying_down", "sitting")

LABELS: dict[str, str] = {**EXERCISES, **NOVEL}  # every class key -> label text

# suite name -> (the class keys it can draw, its default class keys, its default image style)
SUITES: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    "main": (tuple(EXERCISES), MAIN_CLASSES, "plain"),
    "novel": (tuple(LABELS), tuple(EXERCISES) + NOVEL_CLASSES, "shifted"),
}


def label_of(key: str) -> str:
    """The label text of a class key; ValueError naming the valid keys otherwise."""
    try:
        return LABELS[key]
    except KeyError:
        raise ValueError(
            f"unknown exercise {key!r}; choose from {', '.join(LABELS)}"
        ) from None


from toolkit.demo.figures import Figure, render_example, render_pose  # noqa: E402

__all__ = ["EXERCISES", "MAIN_CLASSES", "NOVEL", "NOVEL_CLASSES", "OTHER_ACTIVITIES", "SUITES", "LABELS", "label_of",
           "Figure", "render_example", "render_pose"]
