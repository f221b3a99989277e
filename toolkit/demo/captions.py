"""Varied captions for generated exercise images (written to manifest.csv by ``clipkit demo-data``).

About a third of the captions wrap the exact label text (``label_of(key)``) in a prompt
template ("a photo of a person repeating a squat."), so zero-shot prompts built from the labels
land where the model was trained; the rest mix subjects, verb phrases, colour words and
background words, so the text tower has to learn the pose words rather than one string per
class.
"""
from __future__ import annotations

import numpy as np

from toolkit.demo import label_of

SUBJECTS = (
    "a person", "a man", "a woman", "someone", "a stick figure", "a figure", "an athlete",
    "a cartoon person", "a little person", "a guy", "a girl", "a kid", "a drawn person",
)  # fmt: skip

VERBS: dict[str, tuple[str, ...]] = {
    "standing": ("standing", "standing still", "standing upright", "standing straight",
                 "just standing", "standing up", "standing at rest", "standing relaxed",
                 "standing with arms down", "resting on two feet"),
    "squat": ("repeating a squat", "doing a squat", "doing squats", "squatting",
              "performing a squat", "in a squat", "doing a deep squat", "squatting down",
              "bending the knees in a squat", "holding a squat", "doing a bodyweight squat"),
    "jumping_jack": ("repeating a jumping jack", "doing a jumping jack", "doing jumping jacks",
                     "performing a jumping jack", "jumping with arms and legs spread",
                     "in the middle of a jumping jack", "doing star jumps",
                     "jumping with arms up", "repeating jumping jacks"),
    "plank": ("performing a plank", "doing a plank", "holding a plank", "in a plank position",
              "planking", "holding a forearm plank", "doing a forearm plank",
              "lying in a plank on the elbows", "performing a plank exercise"),
    "pushup": ("doing a push-up", "doing push-ups", "performing a push-up",
               "repeating a push-up", "lowering into a push-up", "doing a press-up",
               "doing pushups", "pushing up from the floor"),
    "lunge": ("doing a lunge", "doing lunges", "performing a lunge", "repeating a lunge",
              "lunging forward", "stepping into a lunge", "doing a forward lunge",
              "holding a lunge", "lunging"),
    # novel-suite classes: never used to train the demo model, only for manifests
    "sit_up": ("doing a sit-up", "doing sit-ups", "doing a crunch", "curling up from the floor"),
    "high_knees": ("doing high knees", "running in place with high knees", "raising a knee high"),
    "side_plank": ("doing a side plank", "holding a side plank", "balancing on one arm sideways"),
    "mountain_climber": ("doing a mountain climber", "doing mountain climbers",
                         "driving a knee to the chest in a plank"),
    "arms_raised": ("doing an arms-raised stretch", "stretching with arms overhead",
                    "reaching both arms up"),
    "lying_down": ("lying down", "lying on the back", "lying flat on the floor", "resting on the floor"),
    "sitting": ("sitting", "sitting on a chair", "sitting down", "seated on a chair"),
    "walking": ("walking", "walking across", "taking a walk", "walking by"),
    "drinking": ("drinking water", "drinking from a bottle", "taking a sip of water"),
}

# Templates around the exact label text (the zero-shot prompt families) ...
LABEL_TEMPLATES = (
    "{}", "{}.", "a photo of {}.", "a picture of {}.", "an image of {}.",
    "a photo of a person: {}.", "a drawing of {}.", "a sketch of {}.", "a rendering of {}.",
    "a cartoon of {}.", "an illustration of {}.", "a bad photo of {}.", "a good photo of {}.",
    "a low resolution photo of {}.", "a close-up photo of {}.", "a photo of the {}.",
    "a video frame of {}.", "a still of {}.", "this is {}.", "exercise: {}.",
)  # fmt: skip
# ... and around a free "<subject> <verb>" phrase, optionally with colour words.
PHRASE_TEMPLATES = (
    "{s} {v}.", "a photo of {s} {v}.", "a picture of {s} {v}.", "an image of {s} {v}.",
    "a drawing of {s} {v}.", "a simple illustration of {s} {v}.", "{s} {v} at the gym.",
    "{s} {v} during a workout.", "{s} {v}, drawn as a stick figure.", "workout: {s} {v}.",
)  # fmt: skip
COLOR_TEMPLATES = (
    "a {c} stick figure {v}.", "a {c} person {v} on a {b} background.",
    "{s} {v} on a {b} background.", "a {c} figure {v} in front of a {b} wall.",
    "a photo of a {c} stick figure {v}.", "a drawing of {s} {v}, in {c} on {b}.",
    "{s} {v} on a {b} background with a floor line.",
)  # fmt: skip


def caption(key: str, attrs: dict, rng: np.random.Generator) -> str:
    """A random caption for an image of class ``key`` with ``attrs`` from ``render_example``."""
    roll = rng.random()
    if roll < 0.35:
        return str(rng.choice(LABEL_TEMPLATES)).format(label_of(key))
    subject, verb = str(rng.choice(SUBJECTS)), str(rng.choice(VERBS[key]))
    if roll < 0.75:
        return str(rng.choice(PHRASE_TEMPLATES)).format(s=subject, v=verb)
    templates = [t for t in COLOR_TEMPLATES if "floor" not in t or attrs.get("floor_line")]
    text = str(rng.choice(templates)).format(
        s=subject, v=verb, c=attrs["color"], b=attrs["background"]
    )
    return _fix_articles(text)


def _fix_articles(text: str) -> str:
    """'a orange figure' -> 'an orange figure' (colour words are spliced in after 'a')."""
    words = text.split(" ")
    for i in range(len(words) - 1):
        if words[i] in ("a", "A") and words[i + 1][:1] in ("a", "e", "i", "o", "u"):
            words[i] += "n"
    return " ".join(words)
