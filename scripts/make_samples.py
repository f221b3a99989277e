"""Render the shipped demo assets: data/samples/<exercise>.png and data/videos/workout.mp4 (+ .json truth).

    .venv/bin/python scripts/make_samples.py          # rewrites them bit for bit from fixed seeds

``make demo`` classifies data/samples with configs/demo.yaml, so the samples are the four main
exercises. The video is a short workout with per-frame ground truth for video and
repetition-counting demos.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from toolkit.demo import MAIN_CLASSES  # noqa: E402
from toolkit.demo.figures import render_example  # noqa: E402
from toolkit.demo.video import write_video  # noqa: E402

SAMPLE_SEED = 7
WORKOUT = "standing:1,squat:4x1.2,standing:1,jumping_jack:5x0.8,standing:1"


@click.command()
@click.option("--samples", default=str(ROOT / "data/samples"), show_default=True)
@click.option("--videos", default=str(ROOT / "data/videos"), show_default=True)
@click.option("--seed", default=SAMPLE_SEED, show_default=True)
@click.option("--size", default=224, show_default=True)
def main(samples, videos, seed, size):
    """Write one 224x224 PNG per main exercise and one workout MP4 with its ground truth."""
    Path(samples).mkdir(parents=True, exist_ok=True)
    for i, key in enumerate(MAIN_CLASSES):
        img, attrs = render_example(key, np.random.default_rng([seed, 0x5A4D, i]), size)
        path = Path(samples) / f"{key}.png"
        img.save(path)
        print(f"wrote {path} ({attrs['color']} on {attrs['background']})")
    Path(videos).mkdir(parents=True, exist_ok=True)
    video = Path(videos) / "workout.mp4"
    truth = write_video(video, WORKOUT, seed=seed, size=(160, 160), fps=15)
    truth.save(f"{video}.json")
    print(f"wrote {video} ({truth.n_frames} frames, reps {truth.reps_by_exercise()}) and {video}.json")


if __name__ == "__main__":
    main()
