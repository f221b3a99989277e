"""Exercise videos: a schedule of segments -> frames of one stick figure -> MP4, plus ground truth.

A schedule is a list of ``Segment``s, each either a *hold* (a still pose for ``duration_s``) or
*reps* (``reps`` cycles rest -> peak -> rest of ``period_s`` seconds each, see
``figures.MOTIONS`` for each exercise's (rest, peak) pair; push-ups go plank-high -> plank-low).
Within a rep the phase follows (1 - cos 2 pi u) / 2, so the motion is smooth and every rep has
exactly one peak. Frame ``i`` is sampled at ``t = i / fps``. One figure (colours, limb lengths,
placement) is kept for the whole video.
Consecutive segments whose boundary poses differ (standing -> plank) cut without a transition.
The background grain is the same on every frame, so the MP4 stays small.

Other activities (``OTHER_ACTIVITIES``: walking, sitting, drinking) are stretches of a duration
that are not exercises: their frames are labelled with the activity's label text ("a person
walking") and they have no reps. Walking cycles its gait every ``period_s`` seconds while the
figure crosses the frame in the direction it faces; drinking raises the bottle to the mouth,
holds it and lowers it; sitting holds still on a chair. ``with_other_activities`` puts them
between the segments of a schedule.

    truth = write_video("out.mp4", [("standing", 1.0), ("squat", 5, 1.2), ("walking", 3.0)], seed=0)
    truth.labels[i], truth.rep[i], truth.reps_by_exercise()   # per-frame and per-segment truth
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image

from toolkit import fsio
from toolkit.demo import OTHER_ACTIVITIES, label_of
from toolkit.demo.figures import PROPS, anchor_range, pose_at, random_figure, render_pose

MIN_FRAMES_PER_REP = 4  # below this a rep's peak may fall between frames
DRINK_RAISE_S = 0.6  # seconds to raise the bottle to the mouth (and to lower it again)


@dataclass(frozen=True)
class Segment:
    """``reps == 0``: hold exercise's peak pose (or do an other activity) for ``duration_s``;
    else ``reps`` cycles."""

    exercise: str
    reps: int = 0
    period_s: float = 1.0  # seconds per rep (rest -> peak -> rest); walking: per gait cycle
    duration_s: float = 0.0  # holds and other activities only

    def __post_init__(self) -> None:
        label_of(self.exercise)  # ValueError naming the valid keys
        if self.exercise in OTHER_ACTIVITIES and self.reps:
            raise ValueError(
                f"segment {self.exercise!r} is an other activity without reps; give a duration, "
                f"e.g. '{self.exercise}:3'"
            )
        if self.reps < 0 or (self.reps == 0 and self.duration_s <= 0):
            raise ValueError(
                f"segment {self.exercise!r}: give reps > 0 or a hold duration_s > 0 "
                f"(got reps={self.reps}, duration_s={self.duration_s})"
            )
        if self.reps and self.period_s <= 0:
            raise ValueError(f"segment {self.exercise!r}: period_s must be > 0, got {self.period_s}")


def hold(exercise: str, seconds: float) -> Segment:
    return Segment(exercise, duration_s=float(seconds))


def reps(exercise: str, n: int, period_s: float) -> Segment:
    return Segment(exercise, reps=int(n), period_s=float(period_s))


def parse_schedule(items: Iterable) -> list[Segment]:
    """Segments from ``Segment``s, ``(key, seconds)`` holds, ``(key, n, period_s)`` reps,
    dicts with ``Segment``'s fields, or one string ``"standing:1, squat:5x1.2, walking:3s"``
    (a trailing "s" on seconds is allowed)."""
    if isinstance(items, str):
        return [_parse_text(part) for part in items.split(",") if part.strip()]
    segments = []
    for item in items:
        if isinstance(item, Segment):
            segments.append(item)
        elif isinstance(item, dict):
            segments.append(Segment(**item))
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            segments.append(hold(item[0], item[1]))
        elif isinstance(item, (tuple, list)) and len(item) == 3:
            segments.append(reps(item[0], item[1], item[2]))
        else:
            raise ValueError(
                f"bad schedule item {item!r}; use ('standing', 1.0) for a hold or "
                f"('squat', 5, 1.2) for 5 reps of 1.2 s"
            )
    if not segments:
        raise ValueError("empty schedule; give at least one segment, e.g. [('squat', 3, 1.0)]")
    return segments


def _parse_text(part: str) -> Segment:
    m = re.fullmatch(r"\s*(\w+)\s*:\s*(?:(\d+)\s*x\s*)?([\d.]+)\s*s?\s*", part)
    if not m:
        raise ValueError(
            f"bad schedule item {part!r}; use 'standing:1.5' (hold seconds) or 'squat:5x1.2' "
            f"(reps x seconds per rep)"
        )
    key, n, seconds = m.group(1), m.group(2), float(m.group(3))
    return reps(key, int(n), seconds) if n else hold(key, seconds)


def with_other_activities(
    schedule: Iterable, seconds: float = 2.0, activities: Iterable[str] = OTHER_ACTIVITIES
) -> list[Segment]:
    """``schedule`` with an other-activity stretch of ``seconds`` between every two segments,
    taking ``activities`` in turn (walking, sitting, drinking, walking, ...)."""
    segments, names = parse_schedule(schedule), list(activities)
    for name in names or [""]:
        if name not in OTHER_ACTIVITIES:
            raise ValueError(f"unknown other activity {name!r}; choose from {', '.join(OTHER_ACTIVITIES)}")
    out = [segments[0]]
    for i, seg in enumerate(segments[1:]):
        out += [hold(names[i % len(names)], seconds), seg]
    return out


@dataclass
class GroundTruth:
    """Per-frame and per-segment truth of a generated video (lists have one entry per frame)."""

    fps: float
    size: tuple[int, int]  # (width, height)
    labels: list[str] = field(default_factory=list)  # label text, e.g. "a person repeating a squat"
    exercises: list[str] = field(default_factory=list)  # exercise key
    segment: list[int] = field(default_factory=list)  # index into ``segments``
    rep: list[int] = field(default_factory=list)  # 0-based rep in the segment; -1 in holds, other activities
    phase: list[float] = field(default_factory=list)  # 0 = rest pose, 1 = peak pose
    segments: list[dict] = field(default_factory=list)  # see ``_plan``

    @property
    def n_frames(self) -> int:
        return len(self.labels)

    def reps_by_exercise(self) -> dict[str, int]:
        """True rep count per exercise key over the whole video (only keys with reps)."""
        counts: dict[str, int] = {}
        for seg in self.segments:
            if seg["reps"]:
                counts[seg["exercise"]] = counts.get(seg["exercise"], 0) + seg["reps"]
        return counts

    def reps_by_label(self) -> dict[str, int]:
        """True rep count per label text for every label in the video (0 for holds and other
        activities), keyed like the ``reps`` of ``toolkit.video.pipeline.predict_video``."""
        counts: dict[str, int] = {}
        for seg in self.segments:
            counts[seg["label"]] = counts.get(seg["label"], 0) + seg["reps"]
        return counts

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "GroundTruth":
        data = json.loads(Path(path).read_text())
        data["size"] = tuple(data["size"])
        return cls(**data)


def _plan(segments: list[Segment], fps: float, rng: np.random.Generator, tempo_jitter: float):
    """Segment dicts with times in seconds, frame ranges [start_frame, end_frame) and rep periods."""
    plans, t = [], 0.0
    for seg in segments:
        periods = [seg.period_s * (1 + tempo_jitter * rng.uniform(-1, 1)) for _ in range(seg.reps)]
        if any(p * fps < MIN_FRAMES_PER_REP for p in periods):
            raise ValueError(
                f"segment {seg.exercise!r}: period {seg.period_s}s gives fewer than "
                f"{MIN_FRAMES_PER_REP} frames per rep at {fps} fps; use a longer period or more fps"
            )
        duration = sum(periods) if seg.reps else seg.duration_s
        plans.append({
            "exercise": seg.exercise, "label": label_of(seg.exercise), "reps": seg.reps,
            "period_s": seg.period_s, "rep_periods_s": [round(p, 4) for p in periods],
            "start_s": round(t, 4), "end_s": round(t + duration, 4),
            "start_frame": math.ceil(t * fps - 1e-9), "end_frame": math.ceil((t + duration) * fps - 1e-9),
        })  # fmt: skip
        t += duration
    return plans


def _phase_at(plan: dict, t: float) -> tuple[int, float]:
    """(rep index, phase) at time ``t`` seconds inside segment ``plan``."""
    if plan["exercise"] in OTHER_ACTIVITIES:
        return -1, _activity_phase(plan, t - plan["start_s"])
    if not plan["reps"]:
        return -1, 1.0
    local = t - plan["start_s"]
    for i, period in enumerate(plan["rep_periods_s"]):
        if local < period or i == plan["reps"] - 1:
            u = min(max(local / period, 0.0), 1.0)
            return i, 0.5 * (1 - math.cos(2 * math.pi * u))
        local -= period
    raise AssertionError("unreachable")


def _activity_phase(plan: dict, local: float) -> float:
    """Phase of an other activity ``local`` seconds into its stretch (see ``poses.MOTIONS``)."""
    if plan["exercise"] == "walking":  # walk_a -> walk_b -> walk_a every period_s
        return 0.5 * (1 - math.cos(2 * math.pi * local / plan["period_s"]))
    if plan["exercise"] == "drinking":  # raise, hold at the mouth, lower
        duration = plan["end_s"] - plan["start_s"]
        ramp = min(DRINK_RAISE_S, duration / 3)
        u = min(local, duration - local, ramp) / ramp
        return 0.5 * (1 - math.cos(math.pi * max(u, 0.0)))
    return 1.0


def render_frames(
    schedule: Iterable,
    seed: int,
    size: tuple[int, int] = (160, 160),
    fps: float = 15.0,
    tempo_jitter: float = 0.0,
) -> tuple[Iterator[Image.Image], GroundTruth]:
    """Lazily rendered frames of one figure following ``schedule``, and the full ground truth.

    ``tempo_jitter`` varies each rep's period by up to +-that fraction (0.1 = +-10%), so reps
    within a segment run at different speeds; the truth records every rep's period.
    """
    segments = parse_schedule(schedule)
    rng = np.random.default_rng([seed, 0x51DE0])
    plans = _plan(segments, fps, rng, tempo_jitter)
    keys = {s.exercise for s in segments}
    extremes = [pose_at(k, p) for k in sorted(keys) for p in (0.0, 0.25, 0.5, 0.75, 1.0)]
    figure = random_figure(rng, size, extremes)
    truth = GroundTruth(fps=fps, size=tuple(size))
    for si, plan in enumerate(plans):
        for i in range(plan["start_frame"], plan["end_frame"]):
            rep_i, phase = _phase_at(plan, i / fps)
            truth.labels.append(plan["label"])
            truth.exercises.append(plan["exercise"])
            truth.segment.append(si)
            truth.rep.append(rep_i)
            truth.phase.append(round(phase, 4))
    truth.segments = plans

    noise_seed = int(rng.integers(2**32))
    walk = anchor_range(figure, [pose_at("walking", p) for p in (0.0, 0.5, 1.0)], tuple(size))

    def frames() -> Iterator[Image.Image]:
        for i, (key, phase) in enumerate(zip(truth.exercises, truth.phase)):
            angles, level = pose_at(key, phase)
            who = _walker(figure, plans[truth.segment[i]], i / fps, walk) if key == "walking" else figure
            # The same grain on every frame: static noise keeps the MP4 small.
            grain = np.random.default_rng(noise_seed)
            yield render_pose(angles, who, tuple(size), grain, level=level, props=PROPS.get(key, ()))

    return frames(), truth


def _walker(figure, plan: dict, t: float, span: tuple[float, float]):
    """``figure`` moved along ``span`` (pixel anchors) at time ``t``: it walks the way it faces."""
    progress = (t - plan["start_s"]) / max(plan["end_s"] - plan["start_s"], 1e-9)
    start, end = (span[1], span[0]) if figure.mirrored else span
    return replace(figure, anchor_x=start + (end - start) * min(max(progress, 0.0), 1.0))


def write_video(
    path: str | Path,
    schedule: Iterable,
    seed: int,
    size: tuple[int, int] = (160, 160),
    fps: float = 15.0,
    tempo_jitter: float = 0.0,
    crf: int = 20,
) -> GroundTruth:
    """Render ``schedule`` to an H.264 MP4 at ``path`` (written to a temp file, then renamed)."""
    import av  # PyAV: only needed when a video is written

    width, height = size
    if width % 2 or height % 2:
        raise ValueError(f"video size must be even for yuv420p, got {width}x{height}")
    frames, truth = render_frames(schedule, seed, size, fps, tempo_jitter)

    def encode(tmp: Path) -> None:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.options = {"crf": str(crf)}
            for img in frames:
                frame = av.VideoFrame.from_ndarray(np.asarray(img), format="rgb24")
                container.mux(stream.encode(frame))
            container.mux(stream.encode())

    fsio.save(path, encode)
    return truth
