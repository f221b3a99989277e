"""toolkit.demo without a model: figures, captions, videos, and the demo-data / demo-video commands."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from toolkit.demo import EXERCISES, MAIN_CLASSES
from toolkit.demo.captions import caption
from toolkit.demo.dataset import parse_split, split_counts
from toolkit.demo.figures import MOTIONS, example_rng, render_example
from toolkit.demo.video import GroundTruth, parse_schedule, render_frames, reps, write_video

ROOT = Path(__file__).resolve().parents[1]


def _pixels(img) -> np.ndarray:
    return np.asarray(img, dtype=np.int16)


@pytest.mark.parametrize("key", list(EXERCISES))
def test_render_example_is_deterministic_per_seed(key):
    a, attrs_a = render_example(key, example_rng(5, 0, 1), 96)
    b, attrs_b = render_example(key, example_rng(5, 0, 1), 96)
    c, _ = render_example(key, example_rng(5, 0, 2), 96)
    assert a.size == (96, 96) and a.mode == "RGB"
    assert np.array_equal(_pixels(a), _pixels(b)) and attrs_a == attrs_b
    assert not np.array_equal(_pixels(a), _pixels(c))


def test_figure_differs_from_background_and_fits_the_frame():
    for i in range(20):
        img, attrs = render_example("jumping_jack", example_rng(0, 2, i), (120, 80))
        arr = _pixels(img)
        assert arr.shape == (80, 120, 3)
        border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
        centre_spread = np.abs(arr - np.median(border, axis=0)).max(axis=2)
        assert (centre_spread > 60).mean() > 0.01  # a figure was drawn with visible contrast


def test_unknown_exercise_names_the_choices():
    with pytest.raises(ValueError, match="choose from standing"):
        render_example("burpee", np.random.default_rng(0))


def test_pushup_moves_between_two_plank_poses():
    assert MOTIONS["pushup"] == ("plank_high", "pushup_low")
    assert all(rest == "standing" for k, (rest, _) in MOTIONS.items() if k in ("squat", "jumping_jack", "lunge"))


def test_captions_vary_and_include_the_label_text():
    rng = np.random.default_rng(0)
    for key in EXERCISES:
        _, attrs = render_example(key, np.random.default_rng(1), 32)
        caps = [caption(key, attrs, rng) for _ in range(300)]
        assert len(set(caps)) > 40
        assert sum(EXERCISES[key] in c for c in caps) > 50  # exact label phrasing inside templates
        assert any(attrs["color"] in c for c in caps)  # colour words appear too
        assert not any(" a orange" in c or " a a" in c for c in caps)


def test_split_parsing_and_counts():
    assert parse_split("0.7,0.15,0.15") == (0.7, 0.15, 0.15)
    assert split_counts(10, (0.7, 0.15, 0.15)) == {"train": 7, "val": 2, "test": 1}
    assert split_counts(100, (0.7, 0.15, 0.15)) == {"train": 70, "val": 15, "test": 15}
    assert split_counts(3, (1.0, 0.0, 0.0)) == {"train": 3, "val": 0, "test": 0}
    for bad in ("0.7,0.3", "a,b,c", "0.5,0.5,0.5", "0,0.5,0.5"):
        with pytest.raises(ValueError, match="fractions that sum to 1"):
            parse_split(bad)


# ---------------------------------------------------------------- videos

SCHEDULE = [("standing", 0.5), ("squat", 3, 0.8), ("standing", 0.4), ("jumping_jack", 2, 0.6)]


def _count_peaks(phase: list[float], rep: list[int]) -> int:
    """Reps seen in the per-frame truth: distinct rep indices whose phase goes above 0.5."""
    return len({r for p, r in zip(phase, rep) if r >= 0 and p > 0.5})


def test_schedule_forms_agree():
    text = parse_schedule("standing:0.5, squat:3x0.8, standing:0.4, jumping_jack:2x0.6")
    assert text == parse_schedule(SCHEDULE)
    assert parse_schedule([reps("squat", 3, 0.8)]) == parse_schedule([{"exercise": "squat", "reps": 3, "period_s": 0.8}])
    for bad in (["squat"], "squat:fast", [("squat", 0, 1.0, 2)], []):
        with pytest.raises(ValueError):
            parse_schedule(bad)
    with pytest.raises(ValueError, match="frames per rep"):
        render_frames([("squat", 2, 0.1)], seed=0, fps=15)


def test_ground_truth_counts_reps_and_labels_frames():
    frames, truth = render_frames(SCHEDULE, seed=3, size=(64, 64), fps=20, tempo_jitter=0.2)
    assert truth.reps_by_exercise() == {"squat": 3, "jumping_jack": 2}
    n = truth.n_frames
    assert n == sum(s["end_frame"] - s["start_frame"] for s in truth.segments)
    assert len(truth.rep) == len(truth.phase) == len(truth.exercises) == len(truth.segment) == n
    for si, seg in enumerate(truth.segments):
        idx = [i for i in range(n) if truth.segment[i] == si]
        assert {truth.labels[i] for i in idx} == {EXERCISES[seg["exercise"]]}
        if seg["reps"]:
            assert _count_peaks([truth.phase[i] for i in idx], [truth.rep[i] for i in idx]) == seg["reps"]
            assert truth.phase[idx[0]] < 0.1  # every rep starts at rest
    assert sum(1 for _ in frames) == n


def test_identity_is_constant_within_a_video():
    frames, truth = render_frames([("standing", 1.0)], seed=1, size=(64, 64), fps=10)
    first, *rest = [_pixels(f) for f in frames]
    assert all(np.array_equal(first, f) for f in rest)  # a hold: same figure, colours, place, grain


def test_write_video_decodes_with_pyav(tmp_path):
    import av

    path = tmp_path / "workout.mp4"
    truth = write_video(path, SCHEDULE, seed=0, size=(64, 48), fps=12)
    truth.save(tmp_path / "truth.json")
    assert GroundTruth.load(tmp_path / "truth.json") == truth
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == truth.n_frames == len(truth.labels)
    assert frames[0].shape == (48, 64, 3)
    assert not list(tmp_path.glob(".*tmp*"))  # the temp file was renamed away
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "odd.mp4", SCHEDULE, seed=0, size=(63, 48))


# ---------------------------------------------------------------- CLI

def _cli():
    from toolkit.cli import main

    return main


def test_demo_data_writes_imagefolder_layout(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(_cli(), ["demo-data", str(out), "--n-per-class", "10", "--seed", "3",
                                         "--size", "48"])
    assert result.exit_code == 0, result.output
    labels = [EXERCISES[k] for k in MAIN_CLASSES]
    for split, n in (("train", 7), ("val", 2), ("test", 1)):
        assert sorted(p.name for p in (out / split).iterdir()) == sorted(labels)
        for label in labels:
            assert len(list((out / split / label).glob("*.png"))) == n
    assert (out / "labels.txt").read_text().splitlines() == labels
    with open(out / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 40 and all((out / r["path"]).is_file() for r in rows)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_demo_data_is_deterministic_and_refuses_to_clobber(tmp_path):
    runner = CliRunner()
    args = ["--n-per-class", "3", "--seed", "11", "--size", "32", "--classes", "plank,lunge", "--split", "1,0,0"]
    assert runner.invoke(_cli(), ["demo-data", str(tmp_path / "a"), *args]).exit_code == 0
    assert runner.invoke(_cli(), ["demo-data", str(tmp_path / "b"), *args]).exit_code == 0
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(files_a) == 6 and not (tmp_path / "a" / "val").exists()
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    again = runner.invoke(_cli(), ["demo-data", str(tmp_path / "a"), *args])
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert runner.invoke(_cli(), ["demo-data", str(tmp_path / "a"), *args, "--overwrite"]).exit_code == 0


@pytest.mark.parametrize("flag", [["--classes", "squat,burpee"], ["--split", "0.9,0.2,0.1"]])
def test_demo_data_bad_flags_exit_2(tmp_path, flag):
    result = CliRunner().invoke(_cli(), ["demo-data", str(tmp_path / "x"), "--n-per-class", "2", *flag])
    assert result.exit_code == 2 and "error:" in result.output


def test_demo_video_command_writes_video_and_truth(tmp_path):
    out = tmp_path / "v.mp4"
    result = CliRunner().invoke(_cli(), ["demo-video", str(out), "--schedule", "standing:0.5,pushup:2x1",
                                         "--size", "48", "--fps", "10"])
    assert result.exit_code == 0, result.output
    truth = GroundTruth.load(f"{out}.json")
    assert truth.reps_by_exercise() == {"pushup": 2} and out.stat().st_size > 0


def test_generator_modules_do_not_import_torch_or_open_clip():
    code = ("import sys, toolkit.demo.figures, toolkit.demo.captions, toolkit.demo.video, toolkit.demo.dataset; "
            "bad = [m for m in ('torch', 'open_clip') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
