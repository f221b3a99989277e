"""`clipkit demo-data` and `clipkit demo-video`: generated exercise images and videos, offline."""
from __future__ import annotations

import json
from pathlib import Path

import click

from toolkit.cli.common import show_progress
from toolkit.cli.outputs import overwrite_option, refuse_existing
from toolkit.errors import ConfigError

_SCHEDULE = "standing:1,squat:5x1.2,standing:1,jumping_jack:3x0.8,standing:1"


@click.command("demo-data")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--n-per-class", type=click.IntRange(2), default=100, show_default=True,
              help="Images per class, before the split.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same images.")
@click.option("--suite", type=click.Choice(["main", "novel", "multilabel"]), default="main", show_default=True,
              help="main: the exercises the demo model was trained on; novel: 7 classes it never saw "
                   "(sit_up, high_knees, side_plank, mountain_climber, arms_raised, lying_down, sitting) "
                   "next to the 6 trained ones, in a shifted style; multilabel: the 4 main exercises with "
                   "attributes drawn in (dumbbell, mat, ball, cap, outdoors), several labels per image, "
                   "N-PER-CLASS x 4 images in OUT/labels.csv (path,labels,split) and OUT/labels.jsonl.")
@click.option("--classes", default=None,
              help="Comma-separated class keys, 'default' or 'all'. Default main: standing,squat,jumping_jack,"
                   "plank ('all' adds pushup, lunge); novel: the 13 above ('all' adds walking, drinking).")
@click.option("--style", type=click.Choice(["plain", "shifted"]), default=None,
              help="plain: the training style; shifted: thick filled limbs, partly occluded. "
                   "[default: the suite's, plain for main, shifted for novel]")
@click.option("--split", default="0.7,0.15,0.15", show_default=True, help="train,val,test fractions.")
@click.option("--size", type=click.IntRange(16, 1024), default=224, show_default=True,
              help="Image side in pixels.")
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr (default: when a terminal).")
@overwrite_option
def demo_data(out, n_per_class, seed, suite, classes, style, split, size, progress, overwrite):
    """Write generated stick-figure exercise images to OUT/{train,val,test}/<label>/NNNN.png.

    Class folders are named by label text ("a person repeating a squat"), so OUT/labels.txt and
    the folder names work as zero-shot labels; OUT/manifest.csv lists every image with a caption.
    `--suite novel` is a benchmark where zero-shot is far from perfect and trained heads can win.
    """
    from tqdm import tqdm

    from toolkit.demo.dataset import parse_classes, parse_split, write_imagefolder

    show = show_progress(progress)  # a bar only in a terminal, like every other command
    if suite == "multilabel":
        return _multilabel_data(out, n_per_class, seed, classes, style, split, size, overwrite, show)
    try:
        keys, fractions = parse_classes(classes or "default", suite), parse_split(split)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    with tqdm(total=n_per_class * len(keys), desc="demo-data", unit="img", leave=False, delay=0.5,
              disable=not show) as bar:
        summary = write_imagefolder(out, n_per_class, seed, keys, fractions, size, overwrite,
                                    on_image=bar.update, suite=suite, style=style)  # fmt: skip
    for split_name, per_label in summary.items():
        click.echo(f"{split_name}: {sum(per_label.values())} images in {len(per_label)} classes")
    click.echo(f"wrote {Path(out)}")


def _multilabel_data(out, n_per_class, seed, classes, style, split, size, overwrite, show: bool) -> None:
    """`demo-data --suite multilabel`: toolkit.demo.attributes.write_multilabel."""
    from tqdm import tqdm

    from toolkit.demo.attributes import write_multilabel
    from toolkit.demo.dataset import parse_split

    if classes or style:
        raise ConfigError("--classes and --style don't apply to --suite multilabel (it draws the 4 main exercises "
                          "in the plain style); drop them")
    try:
        fractions = parse_split(split)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    n = n_per_class * 4
    with tqdm(total=n, desc="demo-data", unit="img", leave=False, delay=0.5, disable=not show) as bar:
        summary = write_multilabel(out, n, seed, fractions, size, overwrite, on_image=bar.update)
    for split_name, per_label in summary.items():
        n_split = sum(1 for _ in (Path(out) / "images" / split_name).iterdir())
        click.echo(f"{split_name}: {n_split} images, {sum(per_label.values())} labels over {len(per_label)} classes")
    click.echo(f"wrote {Path(out)} (labels.csv, labels.jsonl)")


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
@overwrite_option
def demo_video(out, schedule, with_other, other_seconds, seed, size, fps, tempo_jitter, overwrite):
    """Write a generated exercise video OUT (MP4) and its per-frame ground truth OUT.json.

    Frames of other activities are labelled with the activity ("a person walking") and have no reps.
    """
    from toolkit.demo.video import parse_schedule, with_other_activities, write_video

    refuse_existing(out, overwrite, "OUT")
    try:
        segments = with_other_activities(schedule, other_seconds) if with_other else parse_schedule(schedule)
        truth = write_video(out, segments, seed, (size, size), fps, tempo_jitter)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    truth_path = Path(f"{out}.json")
    truth.save(truth_path)
    reps = json.dumps(truth.reps_by_exercise())
    click.echo(f"wrote {out} ({truth.n_frames} frames at {fps:g} fps; reps {reps}) and {truth_path}")
