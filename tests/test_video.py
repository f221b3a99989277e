"""Video: smoothing / segments / rep counting (pure numpy), PyAV sampling, bad inputs, and `clipkit predict-video`
on generated videos with the tiny model."""
from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from toolkit.cli import main
from toolkit.cli.video import render_csv
from toolkit.config import VideoConfig, load_config
from toolkit.errors import ConfigError, InputError
from toolkit.video.overlay import FONT_FLOOR, draw_overlay, font, overlay_layout
from toolkit.video.reps import analyze, confidence, drop_short, hysteresis_events, join_rest_gaps, moving_average
from toolkit.video.pipeline import VideoLimitError, VideoLimits, iter_frames

STAND, SQUAT, JACK = "a person standing", "a person repeating a squat", "a person repeating a jumping jack"


# ---------------------------------------------------------------- helpers

def write_plain_video(path: Path, n: int = 30, fps: int = 10, size: tuple[int, int] = (64, 48),
                      faststart: bool = False, noisy: bool = False) -> Path:
    """An H.264 MP4 whose frame i is filled with grey level 8*i (or noise): frame i is recognisable."""
    import av

    rng = np.random.default_rng(0)
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(n):
            arr = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8) if noisy else \
                np.full((size[1], size[0], 3), (8 * i) % 256, np.uint8)
            c.mux(s.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")))
        c.mux(s.encode())
    return path


def write_audio_only(path: Path) -> Path:
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=16000)
        for _ in range(10):
            f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            f.sample_rate = 16000
            c.mux(s.encode(f))
        c.mux(s.encode())
    return path


@pytest.fixture(scope="module")
def demo_clip(tmp_path_factory) -> tuple[Path, object]:
    """A generated 64x64, 8 fps clip: standing 1 s, 3 squats of 1 s, standing 1 s (40 frames)."""
    from toolkit.demo.video import write_video

    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    truth = write_video(path, [("standing", 1.0), ("squat", 3, 1.0), ("standing", 1.0)], seed=1, size=(64, 64),
                        fps=8)
    return path, truth


def tiny_args(tiny_model) -> list[str]:
    return ["--model", tiny_model["config"], "--pretrained", tiny_model["checkpoint"], "--device", "cpu",
            "--batch-size", "8", "--no-progress"]


@pytest.fixture(scope="module")
def tiny_doc(tiny_model, demo_clip) -> dict:
    """The JSON document of the demo clip with the tiny model, nothing rejected."""
    r = CliRunner().invoke(main, ["predict-video", str(demo_clip[0]), *tiny_args(tiny_model), "--format", "json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def middle_threshold(doc: dict) -> float:
    """A threshold between two of the document's frame confidences, near the median: rejects about half."""
    conf = sorted({f["confidence"] for f in doc["frames"]})
    k = len(conf) // 2
    return round((conf[k - 1] + conf[k]) / 2, 7)


# ---------------------------------------------------------------- smoothing

def test_moving_average_shrinks_the_window_at_the_ends():
    rng = np.random.default_rng(0)
    x = rng.dirichlet(np.ones(3), size=12)
    sm = moving_average(x, 5)
    np.testing.assert_allclose(sm[0], x[0:3].mean(axis=0))  # rows -2, -1 don't exist: averaged over 3, not 5
    np.testing.assert_allclose(sm[1], x[0:4].mean(axis=0))
    np.testing.assert_allclose(sm[6], x[4:9].mean(axis=0))
    np.testing.assert_allclose(sm[-1], x[-3:].mean(axis=0))
    np.testing.assert_allclose(sm.sum(axis=1), 1.0)
    const = np.tile([0.7, 0.2, 0.1], (6, 1))  # zero padding would pull the ends below 0.7
    np.testing.assert_allclose(moving_average(const, 5), const)
    np.testing.assert_allclose(moving_average(x, 1), x)


def test_moving_average_even_window_and_short_series():
    x = np.arange(6, dtype=float)[:, None]
    np.testing.assert_allclose(moving_average(x, 4)[:, 0], [1.0, 1.5, 2.5, 3.5, 4.0, 4.5])  # rows i-1..i+2
    np.testing.assert_allclose(moving_average(x[:2], 9)[:, 0], [0.5, 0.5])
    assert moving_average(np.zeros((0, 3)), 5).shape == (0, 3)


# ---------------------------------------------------------------- hysteresis, flickers, rest gaps

def test_hysteresis_counts_noise_around_a_threshold_once():
    peak = [0.1, 0.3, 0.59, 0.61, 0.58, 0.62, 0.59, 0.64, 0.3, 0.1]  # wobbles across 0.6 four times
    assert hysteresis_events(np.array(peak * 3), 0.6, 0.4) == [3, 13, 23]
    # a dip that never reaches 0.4 does not re-arm: two humps, one rep
    assert hysteresis_events(np.array([0.1, 0.7, 0.5, 0.7, 0.1]), 0.6, 0.4) == [1]
    assert hysteresis_events(np.array([0.1, 0.7, 0.4, 0.7, 0.1]), 0.6, 0.4) == [1, 3]
    with pytest.raises(ValueError, match="rep_low"):
        hysteresis_events(np.zeros(3), 0.5, 0.5)


def test_a_series_that_never_drops_low_counts_no_rep():
    """Regression: a clip whose squat probability is high from the first frame and never drops below rep_low
    was counted as 1 rep; a rep is a rise to rep_high after a low that was seen."""
    assert hysteresis_events(np.full(40, 0.9), 0.6, 0.4) == []
    assert hysteresis_events(np.array([0.9, 0.7, 0.5, 0.8, 0.9]), 0.6, 0.4) == []  # wobbles, never low
    assert hysteresis_events(np.array([0.9, 0.8, 0.3, 0.7, 0.2, 0.7]), 0.6, 0.4) == [3, 5]  # first low at 2
    probs = np.tile([0.05, 0.9, 0.05], (30, 1))  # (standing, squat, jack): squatting the whole clip
    out = analyze(probs, np.arange(30) * 0.1, [STAND, SQUAT, JACK], repetitive=[SQUAT, JACK],
                  rest_of={SQUAT: STAND}, rest_gap_s=1.5)
    assert out["reps"] == {SQUAT: 0, JACK: 0} and out["segments"][0]["reps"] == 0


def test_a_blocked_frame_abandons_the_rep_in_progress():
    signal = np.array([0.1, 0.3, 0.5, 0.7, 0.9, 0.2, 0.4, 0.5, 0.7, 0.3, 0.8])
    assert hysteresis_events(signal, 0.6, 0.4) == [3, 8, 10]
    blocked = np.zeros(len(signal), bool)
    blocked[7] = True  # rejected on the way up: that rise doesn't count, the next low re-arms
    assert hysteresis_events(signal, 0.6, 0.4, blocked) == [3, 10]
    blocked[:] = False
    blocked[0:2] = True  # rejected at the start: the low at frame 2 isn't low enough; armed only at 5
    assert hysteresis_events(signal, 0.6, 0.4, blocked) == [8, 10]


def test_drop_short_gives_flickers_to_the_longer_neighbour():
    times = np.arange(24) * 0.1
    labels = ["a"] * 10 + ["b"] + ["c"] * 13
    assert drop_short(labels, times, 0.0) == labels
    out = drop_short(labels, times, 0.3)
    assert out == ["a"] * 10 + ["c"] * 14
    assert drop_short(["b"] + ["a"] * 5, times[:6], 0.3) == ["a"] * 6  # a flicker at the start
    assert drop_short(["a"] * 3, times[:3], 10.0) == ["a"] * 3  # a lone segment always stays


def test_join_rest_gaps_only_inside_a_set_of_reps():
    times = np.arange(30) * 0.1
    rest_of = {SQUAT: STAND}
    labels = [SQUAT] * 5 + [STAND] * 4 + [SQUAT] * 5
    assert join_rest_gaps(labels, times[:14], rest_of, 1.0) == [SQUAT] * 14
    assert join_rest_gaps(labels, times[:14], rest_of, 0.3) == labels  # a 0.4 s pause is longer than 0.3 s
    between = [SQUAT] * 5 + [STAND] * 4 + [JACK] * 5
    assert join_rest_gaps(between, times[:14], rest_of, 1.0) == between
    flicker = [SQUAT] * 5 + [JACK] + [STAND] * 3 + [SQUAT] * 5  # one confused frame at the turn of the rep
    assert join_rest_gaps(flicker, times[:14], rest_of, 1.0) == [SQUAT] * 14
    other = [SQUAT] * 5 + [JACK] * 3 + [STAND] + [SQUAT] * 5  # mostly another exercise: not a rest
    assert join_rest_gaps(other, times[:14], rest_of, 1.0) == other
    edge = [STAND] * 4 + [SQUAT] * 5
    assert join_rest_gaps(edge, times[:9], rest_of, 1.0) == edge


def squat_series(n_reps: int, frames_per_rep: int = 10, lead: int = 10):
    """Probabilities of (standing, squat, jack) for standing -> n squats (cosine) -> standing, at 10 fps."""
    phase = [0.5 * (1 - np.cos(2 * np.pi * k / frames_per_rep)) for k in range(frames_per_rep)] * n_reps
    p_squat = np.array([0.02] * lead + [0.02 + 0.9 * p for p in phase] + [0.02] * lead)
    probs = np.stack([0.96 - p_squat + 0.02, p_squat, np.full_like(p_squat, 0.02)], axis=1)
    return probs / probs.sum(axis=1, keepdims=True), np.arange(len(p_squat)) * 0.1


@pytest.mark.parametrize("n_reps", [3, 7])
def test_analyze_turns_a_set_of_reps_into_one_segment_with_its_count(n_reps):
    probs, times = squat_series(n_reps)
    out = analyze(probs, times, [STAND, SQUAT, JACK], window=3, repetitive=[SQUAT, JACK], rest_of={SQUAT: STAND},
                  rest_gap_s=1.0)
    assert [s["label"] for s in out["segments"]] == [STAND, SQUAT, STAND]
    assert out["reps"] == {SQUAT: n_reps, JACK: 0}
    assert out["segments"][1]["reps"] == n_reps
    assert sum(s["frames"] for s in out["segments"]) == len(times)
    starts = [s["start_s"] for s in out["segments"]]
    assert starts == sorted(starts) and out["segments"][-1]["end_s"] == pytest.approx(times[-1] + 0.1)
    # without the rest-gap rule the tops of the reps split the set into many segments
    split = analyze(probs, times, [STAND, SQUAT, JACK], window=3, repetitive=[SQUAT], rest_gap_s=0.0)
    assert len(split["segments"]) > 3 and split["reps"] == {SQUAT: n_reps}


@pytest.mark.parametrize("window", [1, 3, 5])
def test_a_set_starts_where_the_first_rep_starts(window):
    probs, times = squat_series(4)  # the set is frames 10..49: the first and last frames look like standing
    kw = dict(window=window, repetitive=[SQUAT], rest_gap_s=1.0)
    out = analyze(probs, times, [STAND, SQUAT, JACK], rest_of={SQUAT: STAND}, **kw)
    squat = out["segments"][1]
    spread = max(1, window // 2)  # smoothing smears a change over window // 2 frames each way
    assert abs(squat["first"] - 10) <= spread and abs(squat["last"] - 49) <= spread, squat
    assert out["segments"][0]["frames"] + squat["frames"] + out["segments"][2]["frames"] == 60
    bare = analyze(probs, times, [STAND, SQUAT, JACK], rest_of={}, **kw)  # no rest label: no growing
    assert bare["segments"][1]["frames"] <= squat["frames"] - 2 and bare["reps"] == out["reps"] == {SQUAT: 4}


def test_analyze_rejects_unsure_frames_into_their_own_segments_and_min_segment():
    probs = np.array([[0.9, 0.1]] * 5 + [[0.45, 0.55]] * 5 + [[0.1, 0.9]] * 5)
    times = np.arange(15) * 0.2
    out = analyze(probs, times, ["a", "b"], window=1, reject_below=0.6)
    assert out["labels"] == ["a"] * 5 + [None] * 5 + ["b"] * 5
    assert out["segments"][1] == {"label": None, "rejected": True, "start_s": 1.0, "end_s": 2.0, "frames": 5,
                                  "first": 5, "last": 9, "mean_score": pytest.approx(0.55)}
    assert out["segments"][0]["mean_score"] == pytest.approx(0.9) and not out["segments"][0]["rejected"]
    for off in (None, 0.0):
        assert None not in analyze(probs, times, ["a", "b"], window=1, reject_below=off)["labels"]
    flicker = np.array([[0.9, 0.1]] * 5 + [[0.2, 0.8]] * 2 + [[0.9, 0.1]] * 5)  # b for 0.4 s
    assert len(analyze(flicker, times[:12], ["a", "b"], window=1, min_segment_s=0.3)["segments"]) == 3
    merged = analyze(flicker, times[:12], ["a", "b"], window=1, min_segment_s=0.5)
    assert merged["labels"] == ["a"] * 12 and len(merged["segments"]) == 1


def test_confidence_is_each_frames_top_probability_averaged():
    """One confidently confused frame (or a frame between two poses) is a change of label, not an unknown
    activity: the averaged top probability stays high where the best smoothed probability dips."""
    probs = np.array([[1.0, 0.0, 0.0]] * 4 + [[0.0, 0.0, 1.0]] + [[1.0, 0.0, 0.0]] * 4)
    np.testing.assert_allclose(confidence(probs, 5), 1.0)
    assert moving_average(probs, 5).max(axis=1)[4] == pytest.approx(0.8)
    unsure = np.array([[0.4, 0.35, 0.25]] * 6)
    np.testing.assert_allclose(confidence(unsure, 3), 0.4)
    assert confidence(np.zeros((0, 3)), 5).shape == (0,)


def test_rejected_stretch_counts_no_reps_and_counting_restarts_after():
    """3 squats, a stretch the head is unsure about whose squat probability still swings over rep_high
    (an unknown activity), 3 squats: the stretch is one rejected segment and counts nothing."""
    squats, _ = squat_series(3)
    low, high = [0.4, 0.2, 0.4], [0.3, 0.62, 0.08]  # per-frame top probability 0.4 / 0.62
    unknown = np.array(([low] * 5 + [high] * 5) * 3 + [low] * 5)  # frames 50..84
    probs = np.concatenate([squats, unknown, squats])
    times = np.arange(len(probs)) * 0.1
    kw = dict(repetitive=[SQUAT, JACK], rest_of={SQUAT: STAND}, rest_gap_s=1.0)
    assert confidence(squats, 5).min() > 0.7 > confidence(unknown, 5).max()
    plain = analyze(probs, times, [STAND, SQUAT, JACK], **kw)
    assert plain["reps"][SQUAT] == 9 and sum(50 <= i < 85 for i in plain["rep_events"][SQUAT]) == 3
    out = analyze(probs, times, [STAND, SQUAT, JACK], reject_below=0.7, **kw)
    assert out["reps"] == {SQUAT: 6, JACK: 0}
    assert not [i for i in out["rep_events"][SQUAT] if 50 <= i < 85] and max(out["rep_events"][SQUAT]) > 85
    rejected = [seg for seg in out["segments"] if seg["rejected"]]
    assert len(rejected) == 1 and rejected[0]["label"] is None and "reps" not in rejected[0]
    assert abs(rejected[0]["first"] - 50) <= 2 and abs(rejected[0]["last"] - 84) <= 2
    assert [seg["reps"] for seg in out["segments"] if seg["label"] == SQUAT] == [3, 3]


# ---------------------------------------------------------------- decoding

def test_iter_frames_samples_by_stride_and_by_fps(tmp_path):
    path = write_plain_video(tmp_path / "v.mp4", n=30, fps=10)
    frames = list(iter_frames(path))
    assert [i for i, _, _ in frames] == list(range(30))
    assert [t for _, t, _ in frames] == pytest.approx([i / 10 for i in range(30)])
    img = frames[12][2]
    assert isinstance(img, Image.Image) and img.size == (64, 48) and img.mode == "RGB"
    assert abs(np.asarray(img).mean() - 96) < 6  # frame 12 was filled with grey 96
    assert [i for i, _, _ in iter_frames(path, stride=4)] == [0, 4, 8, 12, 16, 20, 24, 28]
    by_fps = list(iter_frames(path, fps=2.5))
    assert [i for i, _, _ in by_fps] == [0, 4, 8, 12, 16, 20, 24, 28]
    assert [t for _, t, _ in by_fps] == pytest.approx([0, 0.4, 0.8, 1.2, 1.6, 2.0, 2.4, 2.8])
    assert len(list(iter_frames(path, fps=50))) == 30  # more than the source rate: every frame once


def test_iter_frames_enforces_duration_and_frame_limits(tmp_path):
    path = write_plain_video(tmp_path / "v.mp4", n=30, fps=10)
    with pytest.raises(VideoLimitError, match="3.0 s, over the limit of 2 s"):
        list(iter_frames(path, limits=VideoLimits(max_seconds=2)))
    with pytest.raises(VideoLimitError, match="over the limit of 10"):
        list(iter_frames(path, limits=VideoLimits(max_frames=10)))
    assert len(list(iter_frames(path, stride=3, limits=VideoLimits(max_frames=10)))) == 10  # sampling brings it under the limit
    assert VideoLimitError.http_status == 422


def bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, a fragment of the expected message)."""
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 20)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    big = write_plain_video(tmp_path / "full.mp4", n=50, fps=25, noisy=True, faststart=True).read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(big[: len(big) // 2])  # the index survives, half the frames don't
    moov_last = write_plain_video(tmp_path / "ml.mp4", n=40, noisy=True).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(moov_last[: len(moov_last) // 2])  # the index at the end is lost
    data = bytearray(write_plain_video(tmp_path / "z.mp4", n=20).read_bytes())
    start, stop = data.find(b"mdat") + 4, data.find(b"moov") - 4
    data[start:stop] = bytes(stop - start)  # every frame's bytes zeroed: a video stream, no decodable frame
    zeroed = tmp_path / "zeroed.mp4"
    zeroed.write_bytes(bytes(data))
    return {"text": (text, "is not a readable video"), "empty": (empty, "empty file"),
            "audio": (write_audio_only(tmp_path / "sound.m4a"), "has no video stream (it has audio streams)"),
            "truncated": (truncated, "truncated"), "cut": (cut, "is not a readable video"),
            "zero_frames": (zeroed, "has no decodable frames"), "missing": (tmp_path / "nope.mp4", "not found")}


@pytest.mark.parametrize("case", ["text", "empty", "audio", "truncated", "cut", "zero_frames", "missing"])
def test_bad_videos_raise_input_errors(tmp_path, case):
    path, fragment = bad_inputs(tmp_path)[case]
    with pytest.raises(InputError, match=re.escape(fragment)) as info:
        list(iter_frames(path))
    assert "\n" not in info.value.message and str(path.name) in info.value.message


# ---------------------------------------------------------------- the CLI

def test_cli_json_has_frames_segments_and_reps(tiny_model, demo_clip):
    path, truth = demo_clip
    r = CliRunner().invoke(main, ["predict-video", str(path), *tiny_args(tiny_model), "--format", "json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["video"]["decoded_frames"] == truth.n_frames == len(doc["frames"]) == 40
    assert doc["labels"] == [STAND, SQUAT, JACK, "a person performing a plank"]
    f = doc["frames"][7]
    assert f["index"] == 7 and f["time_s"] == pytest.approx(7 / 8)
    assert sum(f["scores"].values()) == pytest.approx(1, abs=1e-4)
    assert sum(f["smoothed"].values()) == pytest.approx(1, abs=1e-4)
    window = [doc["frames"][k]["scores"][STAND] for k in range(5, 10)]
    assert f["smoothed"][STAND] == pytest.approx(np.mean(window), abs=1e-5)
    assert f["label"] in doc["labels"] and f["raw_label"] in doc["labels"]
    segs = doc["segments"]
    assert sum(s["frames"] for s in segs) == 40 and segs[0]["start_s"] == 0
    assert all(a["end_s"] == pytest.approx(b["start_s"]) for a, b in zip(segs, segs[1:]))
    assert segs[-1]["end_s"] == pytest.approx(5.0)
    assert set(doc["reps"]) == {SQUAT, JACK} and doc["settings"]["window"] == 5


def test_cli_csv_table_stride_and_window(tiny_model, demo_clip):
    path, _ = demo_clip
    r = CliRunner().invoke(main, ["predict-video", str(path), *tiny_args(tiny_model), "--format", "csv",
                                  "--stride", "2", "--window", "3"])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [int(row["index"]) for row in rows] == list(range(0, 40, 2))
    assert {"time_s", "label", "score", "raw_label", "segment", "reps", f"raw:{STAND}", f"smoothed:{SQUAT}"} \
        <= set(rows[0])
    r = CliRunner().invoke(main, ["predict-video", str(path), *tiny_args(tiny_model), "--fps", "4"])
    assert r.exit_code == 0, r.output
    assert "20 of 40 frames scored" in r.stdout and "reps:" in r.stdout and "start" in r.stdout


def test_cli_writes_plot_and_annotated_video(tiny_model, demo_clip, tiny_doc, tmp_path):
    """With about half the frames rejected: the plot and the annotated copy draw both kinds."""
    import av

    path, _ = demo_clip
    png, mp4 = tmp_path / "plot.png", tmp_path / "out" / "labelled.mp4"
    r = CliRunner().invoke(main, ["predict-video", str(path), *tiny_args(tiny_model), "--plot", str(png),
                                  "--annotate", str(mp4), "--reject-below", str(middle_threshold(tiny_doc))])
    assert r.exit_code == 0, r.output
    with Image.open(png) as im:
        assert im.size[0] > 600 and im.format == "PNG"
    with av.open(str(path)) as src, av.open(str(mp4)) as out:
        assert out.streams.video[0].codec_context.name in ("h264", "mpeg4")
        pairs = list(zip(src.decode(video=0), out.decode(video=0)))
    assert len(pairs) == 40
    a, b = (np.asarray(f.to_image(), np.float32) for f in pairs[10])
    band = max(overlay_layout(64, 64, label, "0.50", reps).band  # the tallest band any frame can get
               for label in tiny_doc["labels"] + ["none of these"] for reps in (None, "reps 3"))
    assert np.abs(a[:band] - b[:band]).mean() > 20  # the label band is drawn on top
    assert np.abs(a[band + 6:] - b[band + 6:]).mean() < 8  # the rest of the picture is the source
    assert not list(mp4.parent.glob(".*tmp*"))


@pytest.mark.parametrize("case", ["text", "audio", "truncated", "zero_frames"])
def test_cli_bad_video_exits_2_with_one_line(tiny_model, tmp_path, case):
    path, fragment = bad_inputs(tmp_path)[case]
    r = CliRunner().invoke(main, ["predict-video", str(path), *tiny_args(tiny_model)])
    assert r.exit_code == 2
    assert r.stderr.startswith("error: ") and fragment in r.stderr and r.stderr.count("\n") == 1


@pytest.mark.parametrize("flags, fragment", [
    (["--fps", "2", "--stride", "2"], "--fps or --stride, not both"),
    (["--repetitive", "a person juggling"], "--repetitive 'a person juggling' is not one of the labels"),
    (["--rest-label", "a person sitting"], "--rest-label 'a person sitting' is not one of the labels"),
    (["--repetitive", "=x"], "malformed"),
    (["--unknown-label", STAND], f"unknown_label '{STAND}' is one of the labels"),
    (["--reject-below", "1.5"], "'1.5' should be a number between 0 and 1"),
    (["--rep-high", "0.3", "--rep-low", "0.5"], "must be below rep_high"),
])
def test_cli_bad_flags_exit_2(tiny_model, demo_clip, flags, fragment):
    path, _ = demo_clip
    r = CliRunner().invoke(main, ["predict-video", str(path), *tiny_args(tiny_model), *flags])
    assert r.exit_code == 2 and fragment in r.stderr, r.output


def test_cli_rejection_in_every_format(tiny_model, demo_clip, tiny_doc):
    """Frames whose confidence is below --reject-below: JSON label null + rejected, their own segments, no
    reps; the table shows --unknown-label, CSV an empty label; old flag names still work."""
    path, _ = demo_clip
    assert tiny_doc["reject_below"] is None and not any(f["rejected"] for f in tiny_doc["frames"])
    t = middle_threshold(tiny_doc)
    args = ["predict-video", str(path), *tiny_args(tiny_model)]
    r = CliRunner().invoke(main, [*args, "--format", "json", "--reject-below", str(t)])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["reject_below"] == t and doc["settings"]["unknown_label"] == "none of these"
    rejected = [f["confidence"] < t for f in doc["frames"]]
    assert 0 < sum(rejected) < len(rejected)
    assert [f["rejected"] for f in doc["frames"]] == rejected
    assert all((f["label"] is None) == f["rejected"] for f in doc["frames"])
    assert [f["scores"] for f in doc["frames"]] == [f["scores"] for f in tiny_doc["frames"]]  # scores kept
    k = 0
    for seg in doc["segments"]:  # every segment is all rejected (label null) or all accepted
        assert seg["rejected"] == (seg["label"] is None) and "reps" not in seg if seg["rejected"] else True
        assert {f["rejected"] for f in doc["frames"][k:k + seg["frames"]]} == {seg["rejected"]}
        k += seg["frames"]
    assert not [f for f in doc["frames"] if "rep" in f and f["rejected"]]
    table = CliRunner().invoke(main, [*args, "--reject-below", str(t), "--unknown-label", "no idea"])
    assert table.exit_code == 0, table.output
    assert "no idea" in table.stdout and f"'no idea': {sum(rejected)} of {len(rejected)} frames" in table.stdout
    rows = list(csv.DictReader(io.StringIO(render_csv(doc))))  # what --format csv prints
    assert [row["rejected"] == "true" for row in rows] == rejected
    assert all((row["label"] == "") == (row["rejected"] == "true") for row in rows)


def test_video_config_refuses_the_removed_old_keys(tmp_path):
    """min_confidence / fallback were renamed reject_below / unknown_label before 0.1: an unknown key now,
    with the new name suggested."""
    yaml_file = tmp_path / "old.yaml"
    yaml_file.write_text("video:\n  min_confidence: 0.4\n")
    with pytest.raises(ConfigError, match="unknown config key 'video.min_confidence'"):
        load_config(yaml_file)
    assert VideoConfig().unknown_label == "none of these" and VideoConfig().reject_below is None


# ---------------------------------------------------------------- the overlay of --annotate

@pytest.mark.parametrize("size", [(160, 160), (90, 160), (640, 360), (64, 64)])
@pytest.mark.parametrize("label", [JACK, STAND, "none of these"])
def test_overlay_text_fits_the_frame_with_score_and_reps_whole(size, label):
    """Regression: on a 160 px frame the score was cut off and the rep count never showed; on a portrait
    frame only 'a person repeating' fitted. Every piece's drawn box lies inside the frame (and the band)."""
    from PIL import ImageDraw

    w, h = size
    for reps in (None, "reps 12"):
        layout = overlay_layout(w, h, label, "0.87", reps)
        fnt = font(layout.font_size)
        measure = ImageDraw.Draw(Image.new("RGB", size))
        pieces = {p.role: p for p in layout.pieces}
        assert pieces["score"].text == "0.87" and (reps is None) == ("reps" not in pieces)
        if reps:
            assert pieces["reps"].text == reps
        shown = pieces["label"].text
        assert shown == label or (shown.startswith("\u2026") and label.endswith(shown[1:]) and len(shown) > 4)
        boxes = [measure.textbbox(p.xy, p.text, font=fnt) for p in layout.pieces]
        for box in boxes:
            assert 0 <= box[0] and box[2] <= w and 0 <= box[1] and box[3] <= layout.band, (size, box, layout)
        for i, a in enumerate(boxes):  # pieces never overlap
            for b in boxes[i + 1:]:
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)
        assert FONT_FLOOR <= layout.font_size and layout.band <= h // 2


def test_overlay_layout_prefers_large_text_then_two_lines_then_a_shorter_label():
    wide = overlay_layout(640, 360, JACK, "0.87", "reps 12")
    assert wide.font_size == 360 // 14 and len({p.xy[1] for p in wide.pieces}) == 1  # one line, full size
    square = overlay_layout(160, 160, JACK, "0.87", "reps 12")
    assert [p.text for p in square.pieces] == [JACK, "0.87", "reps 12"]
    assert len({p.xy[1] for p in square.pieces}) == 2  # the label alone on the first line
    portrait = overlay_layout(90, 160, JACK, "0.87", "reps 12")
    assert portrait.font_size == FONT_FLOOR and portrait.pieces[0].text == "\u2026a jumping jack"


def test_overlay_draws_each_piece_where_the_layout_says():
    from PIL import ImageDraw

    img = Image.new("RGB", (160, 160), (30, 90, 150))
    out = np.asarray(draw_overlay(img, JACK, 0.87, 12), np.int16)
    layout = overlay_layout(160, 160, JACK, "0.87", "reps 12")
    measure = ImageDraw.Draw(Image.new("RGB", (160, 160)))
    for p in layout.pieces:
        x0, y0, x1, y1 = measure.textbbox(p.xy, p.text, font=font(layout.font_size))
        assert out[y0:y1, x0:x1].max() >= 200, p  # white text on the dark band
    assert (out[layout.band + 2:] == np.asarray(img, np.int16)[layout.band + 2:]).all()  # the picture below
    grey = np.asarray(draw_overlay(img, "none of these", 0.3, None, rejected=True), np.int16)
    bar = grey[overlay_layout(160, 160, "none of these", "0.30", None).band - 1, 5]
    assert abs(int(bar[0]) - int(bar[1])) < 12  # a rejected frame's score bar is grey, not green
