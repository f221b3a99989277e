"""The exercise labels: clipkit's first use, and the default label set. Defined here once.

The demo generator draws these exercises and names its class folders by the label texts; the config's
defaults (prompts, video reps) read them from here.
"""
from __future__ import annotations

EXERCISES: dict[str, str] = {  # class key -> label text
    "standing": "a person standing",
    "squat": "a person repeating a squat",
    "jumping_jack": "a person repeating a jumping jack",
    "plank": "a person performing a plank",
    "pushup": "a person doing a push-up",
    "lunge": "a person doing a lunge",
}

# The default labels (and the four the shipped demo model and configs/demo.yaml are built around).
MAIN_CLASSES: tuple[str, ...] = ("standing", "squat", "jumping_jack", "plank")
DEFAULT_LABELS: list[str] = [EXERCISES[k] for k in MAIN_CLASSES]

# Video: the exercises done in repetitions, and the pose each one rests in between reps.
REST_LABEL = EXERCISES["standing"]
REPETITIVE: list[str] = [EXERCISES[k] for k in ("squat", "jumping_jack", "pushup", "lunge")]
REST_FOR: dict[str, str] = {EXERCISES["pushup"]: EXERCISES["plank"]}  # a push-up rests in a high plank
