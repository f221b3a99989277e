"""`clipkit demo-data` and `clipkit demo-video`: generated exercise images and videos, offline."""
from __future__ import annotations

import json
from pathlib import Path

import click

from toolkit.errors import ConfigError

_SCHEDULE = "standing:1,squat:5x1.2,standing:1,jumping_jack:3x0.8,standing:1"


@click.command("demo-data")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--n-per-class", type=click.IntRange(2), default=100, show_default=True,
              help="Images per class, before the split.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same images.")
@click.option("--suite", type=click.Choice(["main", "novel"]), default="main", show_default=True,
              help="main: the exercises the demo model was trained on; novel: 7 classes it never saw "
                   "(sit_up, high_knees, side_plank, mountain_climber, arms_raised, lying_down, sitting) "
                   "next to the 6 trained ones, in a shifted style.")
@click.option("--classes", default=None,
              help="Comma-separated class keys, 'default' or 'all'. Default main: standing,squat,jumping_jack,"
                   "plank ('all' adds pushup, lunge); novel: the 13 above ('all' adds walking, drinking).")
@click.option("--style", type=click.Choice(["plain", "shifted"]), default=None,
              help="plain: the training style; shifted: thick filled limbs, partly occluded. "
                   "[default: the suite's, plain for main, shifted for novel]")
@click.option("--split", default="0.7,0.15,0.15", show_default=True, help="train,val,test fractions.")
@click.option("--size", type=click.IntRange(16, 1024), default=224, show_default=True,
              help="Image side in pixels.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it is a non-empty folder.")
def demo_data(out, n_per_class, seed, suite, classes, style, split, size, overwrite):
    """Write generated stick-figure exercise images to OUT/{train,val,test}/<label>/NNNN.png.

    Class folders are named by label text ("a person repeating a squat"), so OUT/labels.txt and
    the folder names work as zero-shot labels; OUT/manifest.csv lists every image with a caption.
    `--suite novel` is a benchmark where zero-shot is far from perfect and trained heads can win.
    """
    from tqdm import tqdm

    from toolkit.demo.dataset import parse_classes, parse_split, write_imagefolder

    try:
        keys, fractions = parse_classes(classes or "default", suite), parse_split(split)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    with tqdm(total=n_per_class * len(keys), desc="demo-data", unit="img", leave=False, delay=0.5) as bar:
        summary = write_imagefolder(out, n_per_class, seed, keys, fractions, size, overwrite,
                                    on_image=bar.update, suite=suite, style=style)  # fmt: skip
    for split_name, per_label in summary.items():
        click.echo(f"{split_name}: {sum(per_label.values())} images in {len(per_label)} classes")
    click.echo(f"wrote {Path(out)}")


@click.command("demo-video")
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--schedule", default=_SCHEDULE, show_default=True,
              help="Comma-separated 'key:seconds' holds and 'key:REPSxSECONDS' rep segments; other "
                   "activities (no reps) as 'walking:3', 'sitting:2', 'drinking:2'.")
@click.option("--with-other", is_flag=True,
              help="Put an other-activity stretch (walking, sitting, drinking in turn) between every "
                   "two segments of the schedule.")
@click.option("--other-seconds", type=click.FloatRange(0.2, 60), default=2.0, show_default=True,
              help="Length of each stretch added by --with-other.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--size", type=click.IntRange(16, 1024), default=160, show_default=True,
              help="Frame side in pixels (even).")
@click.option("--fps", type=click.FloatRange(1, 120), default=15.0, show_default=True)
@click.option("--tempo-jitter", type=click.FloatRange(0, 0.5), default=0.0, show_default=True,
              help="Vary each rep's period by up to this fraction.")
def demo_video(out, schedule, with_other, other_seconds, seed, size, fps, tempo_jitter):
    """Write a generated exercise video OUT (MP4) and its per-frame ground truth OUT.json.

    Frames of other activities are labelled with the activity ("a person walking") and have no reps.
    """
    from toolkit.demo.video import parse_schedule, with_other_activities, write_video

    try:
        segments = with_other_activities(schedule, other_seconds) if with_other else parse_schedule(schedule)
        truth = write_video(out, segments, seed, (size, size), fps, tempo_jitter)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    truth_path = Path(f"{out}.json")
    truth.save(truth_path)
    reps = json.dumps(truth.reps_by_exercise())
    click.echo(f"wrote {out} ({truth.n_frames} frames at {fps:g} fps; reps {reps}) and {truth_path}")
