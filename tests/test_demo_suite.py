"""toolkit.demo suites and other activities: the novel suite, its style shift, and videos with walking,
sitting and drinking stretches. No model needed."""
from __future__ import annotations

import csv
import hashlib
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from toolkit.demo import EXERCISES, LABELS, NOVEL, NOVEL_CLASSES, OTHER_ACTIVITIES, SUITES
from toolkit.demo.dataset import iter_suite, make_suite, parse_classes, render_image, suite_rng
from toolkit.demo.video import GroundTruth, parse_schedule, render_frames, with_other_activities

NOVEL_DEFAULT = list(EXERCISES) + list(NOVEL_CLASSES)

# sha256 of `clipkit demo-data OUT --n-per-class 3 --seed 3 --size 32` (file paths, PNG pixels, labels.txt,
# manifest.csv) and of render_frames(VIDEO_SCHEDULE, seed=3, size=(48, 48), fps=10) (frame pixels; truth JSON),
# computed at commit 23d91d7, before the novel suite existed. If a Pillow upgrade changes how lines are
# rasterised, recompute them there; any other change means the main suite's output changed.
MAIN_DATA_SHA = "a795d968fd678601c0569a3adc987863dcc4d509f3aacb1e8c2d1db5953a4fb5"
VIDEO_SCHEDULE = "standing:0.5,squat:2x0.8,jumping_jack:1x0.6,plank:0.4"
MAIN_FRAMES_SHA = "999e2fcf95eb9cfb58f6b222e6b482600888256ee9ff33126184fbfa6a023fbb"
MAIN_TRUTH_SHA = "ca44729694f2fd376012d1d01bc9e9511b59c36df16aae5be820d12743f0ca4e"


def _cli():
    from toolkit.cli import main

    return main


def _pixels(img) -> np.ndarray:
    return np.asarray(img, dtype=np.int16)


def _ink(img) -> np.ndarray:
    """Pixels far from the image's median colour (the background): the figure and what covers it."""
    arr = _pixels(img)
    return np.abs(arr - np.median(arr.reshape(-1, 3), axis=0)).max(axis=2) > 60


# ---------------------------------------------------------------- main suite unchanged


def test_main_suite_output_is_unchanged(tmp_path):
    out = tmp_path / "d"
    result = CliRunner().invoke(_cli(), ["demo-data", str(out), "--n-per-class", "3", "--seed", "3", "--size", "32"])
    assert result.exit_code == 0, result.output
    h = hashlib.sha256()
    for p in sorted(out.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(out).as_posix().encode())
            h.update(np.asarray(Image.open(p)).tobytes() if p.suffix == ".png" else p.read_bytes())
    assert h.hexdigest() == MAIN_DATA_SHA


def test_main_video_output_is_unchanged():
    frames, truth = render_frames(VIDEO_SCHEDULE, seed=3, size=(48, 48), fps=10)
    h = hashlib.sha256()
    for frame in frames:
        h.update(np.asarray(frame).tobytes())
    assert h.hexdigest() == MAIN_FRAMES_SHA
    assert hashlib.sha256(json.dumps(truth.to_dict(), sort_keys=True).encode()).hexdigest() == MAIN_TRUTH_SHA


# ---------------------------------------------------------------- novel suite


def test_novel_suite_has_seven_never_seen_classes_next_to_the_trained_ones():
    assert len(NOVEL_CLASSES) >= 7 and not set(NOVEL_CLASSES) & set(EXERCISES)
    assert SUITES["novel"][1] == tuple(NOVEL_DEFAULT) and SUITES["novel"][2] == "shifted"
    assert set(OTHER_ACTIVITIES) <= set(NOVEL)
    assert len(set(LABELS.values())) == len(LABELS)  # label texts name the folders: no two alike
    assert parse_classes("default", "novel") == NOVEL_DEFAULT
    assert parse_classes("all", "novel") == list(EXERCISES) + list(NOVEL)
    with pytest.raises(ValueError, match="unknown main-suite class 'sit_up'"):
        parse_classes("squat,sit_up", "main")


def test_novel_suite_is_deterministic_per_seed_and_differs_across_seeds():
    def images(seed):
        return [_pixels(ex.image) for ex in iter_suite("novel", 2, seed, size=40, split=(1, 0, 0))]

    a, b, c = images(5), images(5), images(6)
    assert len(a) == 2 * len(NOVEL_DEFAULT)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert sum(np.array_equal(x, y) for x, y in zip(a, c)) == 0


def test_novel_suite_has_every_class_with_the_split_counts():
    data = make_suite("novel", n_per_class=10, seed=1, size=32)
    labels = [LABELS[k] for k in NOVEL_DEFAULT]
    for split, n in (("train", 7), ("val", 2), ("test", 1)):
        images, texts = data[split]
        assert len(images) == len(texts) == n * len(labels)
        assert {t: texts.count(t) for t in labels} == dict.fromkeys(labels, n)
        assert all(im.size == (32, 32) and im.mode == "RGB" for im in images)


def test_novel_images_never_repeat_main_suite_images():
    key = "squat"  # in both suites
    main = _pixels(render_image(key, suite_rng(0, "main", 1, 0), 48, "plain")[0])
    novel_plain = _pixels(render_image(key, suite_rng(0, "novel", 1, 0), 48, "plain")[0])
    assert not np.array_equal(main, novel_plain)


def test_style_shift_thickens_the_figure():
    ratios = []
    for i, key in enumerate(NOVEL_DEFAULT):
        plain, _ = render_image(key, suite_rng(2, "novel", i, 0), 96, "plain")
        shifted, attrs = render_image(key, suite_rng(2, "novel", i, 0), 96, "shifted")
        assert attrs["style"] == "shifted"
        ratios.append(_ink(shifted).sum() / max(_ink(plain).sum(), 1))
    assert np.median(ratios) > 1.5  # limbs 1.8-3x as thick, same pose and placement
    with pytest.raises(ValueError, match="choose from plain, shifted"):
        render_image("squat", np.random.default_rng(0), 32, "sketchy")


def test_stronger_shifts_roll_the_figure_and_clutter_the_background():
    from toolkit.demo.style import StyleShift, render_shifted

    strong = StyleShift(clutter=(4, 4), roll_deg=40, shrink=0.85, occlusion_p=1.0)
    a, attrs = render_shifted("plank", np.random.default_rng(3), 64, strong)
    b, _ = render_shifted("plank", np.random.default_rng(3), 64, strong)
    default, _ = render_shifted("plank", np.random.default_rng(3), 64)
    assert np.array_equal(_pixels(a), _pixels(b)) and attrs["roll"] != 0 and attrs["occluded"]
    assert len(np.unique(_pixels(a).reshape(-1, 3) // 32, axis=0)) > len(
        np.unique(_pixels(default).reshape(-1, 3) // 32, axis=0))  # clutter brings more colours


def test_demo_data_novel_writes_the_imagefolder(tmp_path):
    out = tmp_path / "novel"
    result = CliRunner().invoke(_cli(), ["demo-data", str(out), "--suite", "novel", "--n-per-class", "3",
                                         "--seed", "2", "--size", "32", "--split", "0.34,0.33,0.33"])
    assert result.exit_code == 0, result.output
    labels = [LABELS[k] for k in NOVEL_DEFAULT]
    for split in ("train", "val", "test"):
        assert sorted(p.name for p in (out / split).iterdir()) == sorted(labels)
        assert all(len(list((out / split / label).glob("*.png"))) == 1 for label in labels)
    assert (out / "labels.txt").read_text().splitlines() == labels
    with open(out / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * len(labels) and {r["exercise"] for r in rows} == set(NOVEL_DEFAULT)
    pick = CliRunner().invoke(_cli(), ["demo-data", str(tmp_path / "two"), "--suite", "novel", "--n-per-class", "2",
                                       "--size", "32", "--classes", "walking,drinking", "--style", "plain"])
    assert pick.exit_code == 0, pick.output
    assert (tmp_path / "two" / "labels.txt").read_text().splitlines() == [NOVEL["walking"], NOVEL["drinking"]]
    bad = CliRunner().invoke(_cli(), ["demo-data", str(tmp_path / "x"), "--suite", "novel", "--classes", "burpee"])
    assert bad.exit_code == 2 and "burpee" in bad.output


# ---------------------------------------------------------------- videos with other activities


def test_other_activity_stretches_are_labelled_and_have_no_reps():
    frames, truth = render_frames("standing:0.4,walking:2s,squat:2x0.8,sitting:0.6,drinking:1.5", seed=1,
                                  size=(64, 48), fps=10)
    for key in OTHER_ACTIVITIES:
        idx = [i for i, e in enumerate(truth.exercises) if e == key]
        assert idx and {truth.labels[i] for i in idx} == {NOVEL[key]}
        assert {truth.rep[i] for i in idx} == {-1}
        assert [s["reps"] for s in truth.segments if s["exercise"] == key] == [0]
    assert truth.reps_by_exercise() == {"squat": 2}
    assert truth.reps_by_label() == {EXERCISES["standing"]: 0, NOVEL["walking"]: 0, EXERCISES["squat"]: 2,
                                     NOVEL["sitting"]: 0, NOVEL["drinking"]: 0}
    drink = [truth.phase[i] for i, e in enumerate(truth.exercises) if e == "drinking"]
    assert drink[0] < 0.3 and max(drink) == 1.0 and drink[-1] < 0.5  # the bottle goes up and comes down
    walk = [i for i, e in enumerate(truth.exercises) if e == "walking"]
    xs = {}
    for i, frame in enumerate(frames):
        if i in (walk[0], walk[-1]):
            xs[i] = np.nonzero(_ink(frame))[1].mean()
    assert abs(xs[walk[-1]] - xs[walk[0]]) > 0.3 * 64  # walks across the frame


def test_other_activities_take_durations_not_reps():
    with pytest.raises(ValueError, match="'walking' is an other activity"):
        parse_schedule("walking:3x1")
    assert [s.exercise for s in with_other_activities("standing:1,squat:2x1,plank:1,lunge:1x1")] == [
        "standing", "walking", "squat", "sitting", "plank", "drinking", "lunge"]
    with pytest.raises(ValueError, match="unknown other activity"):
        with_other_activities("standing:1,squat:2x1", activities=["dancing"])


def test_demo_video_with_other_writes_their_truth(tmp_path):
    out = tmp_path / "v.mp4"
    result = CliRunner().invoke(_cli(), ["demo-video", str(out), "--schedule", "standing:0.3,squat:2x0.8,plank:0.3",
                                         "--with-other", "--other-seconds", "0.6", "--size", "48", "--fps", "10"])
    assert result.exit_code == 0, result.output
    truth = GroundTruth.load(f"{out}.json")
    assert [s["exercise"] for s in truth.segments] == ["standing", "walking", "squat", "sitting", "plank"]
    assert truth.reps_by_exercise() == {"squat": 2} and NOVEL["walking"] in truth.labels
    bad = CliRunner().invoke(_cli(), ["demo-video", str(tmp_path / "b.mp4"), "--schedule", "sitting:2x1"])
    assert bad.exit_code == 2 and "other activity" in bad.output
