"""Offline demo data: procedural stick-figure people doing exercises, as images and videos.

Everything here is numpy + PIL (+ PyAV for video); it never imports torch or open_clip, so it
is cheap to import from tests, scripts and the CLI.

``EXERCISES`` maps a class key to its label text. The label text is what the demo model is
prompted with and what ``clipkit demo-data`` uses as the ImageFolder class folder name.
"""
from __future__ import annotations

EXERCISES: dict[str, str] = {
    "standing": "a person standing",
    "squat": "a person repeating a squat",
    "jumping_jack": "a person repeating a jumping jack",
    "plank": "a person performing a plank",
    "pushup": "a person doing a push-up",
    "lunge": "a person doing a lunge",
}

# The four labels the shipped demo model and configs/demo.yaml are built around.
MAIN_CLASSES: tuple[str, ...] = ("standing", "squat", "jumping_jack", "plank")


def label_of(key: str) -> str:
    """The label text of an exercise key; ValueError naming the valid keys otherwise."""
    try:
        return EXERCISES[key]
    except KeyError:
        raise ValueError(
            f"unknown exercise {key!r}; choose from {', '.join(EXERCISES)}"
        ) from None


from toolkit.demo.figures import Figure, render_example, render_pose  # noqa: E402

__all__ = ["EXERCISES", "MAIN_CLASSES", "label_of", "Figure", "render_example", "render_pose"]
