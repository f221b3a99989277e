"""Per-frame scores -> smoothed series, decided labels, segments and repetition counts. Pure numpy.

Everything here works on sampled frames: `probs` is (n_frames, n_classes) with rows summing to 1,
`times` is (n_frames,) seconds from the start of the video, columns follow `classes`.

The pipeline (see `analyze`):
  1. smooth: centered moving average over `window` frames; the window shrinks at both ends (no zero padding,
     which would pull the first and last frames towards 0);
  2. decide: argmax of the smoothed row; a frame whose confidence is below `reject_below` is rejected ("none
     of these", label None). The confidence is each frame's own top probability (what an image's threshold is
     calibrated on), averaged over the same window: a frame between two known poses (half-way down a squat,
     0.45 squat and 0.45 standing once smoothed) or one confidently confused frame doesn't lower it much, a
     stretch of frames the head is unsure about does. It is never below the best smoothed probability;
  3. bouts: a short run of an exercise's rest label between two runs of that exercise is the top of a rep,
     not a pause, so it joins the exercise (`rest_gap_s`);
  4. flickers: runs shorter than `min_segment_s` join their longer neighbour;
  5. reps: hysteresis on each repetitive label's probability, smoothed over `rep_window` frames (lighter than
     `window`, so a fast rep's short rest phase stays visible): a rep is counted when the probability climbs
     to `high` after having dropped to `low` (the rest pose) since the last rep, so noise around one
     threshold never counts twice; a series that starts high has not shown a rep yet. Only rises on frames of
     that label count, and a rejected frame abandons the rep in progress (counting restarts at the next low);
  6. sets: a run of an exercise with reps grows into the rest frames where its probability is still rising
     into the first rep / falling out of the last one (the first descent looks like the rest pose);
  7. segments: consecutive frames with one label (rejected frames form their own), with their rep counts.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np


def moving_average(x: np.ndarray, window: int) -> np.ndarray:
    """Centered moving average of (n, C) rows over `window` rows, shrinking the window at the ends.

    Row i averages rows [i - (window-1)//2, i + window//2], clipped to [0, n). Rows that sum to 1 stay so.
    """
    x = np.asarray(x, np.float64)
    n = len(x)
    if window <= 1 or n == 0:
        return x.copy()
    left, right = (window - 1) // 2, window // 2
    csum = np.concatenate([np.zeros((1,) + x.shape[1:]), np.cumsum(x, axis=0)])
    idx = np.arange(n)
    lo, hi = np.maximum(idx - left, 0), np.minimum(idx + right + 1, n)
    counts = (hi - lo).reshape((n,) + (1,) * (x.ndim - 1))
    return (csum[hi] - csum[lo]) / counts


def confidence(probs: np.ndarray, window: int) -> np.ndarray:
    """(n, C) raw per-frame probabilities -> (n,) each frame's top probability, averaged over `window` frames
    like `moving_average`: how sure the head is that the frames around it show one of its labels."""
    probs = np.asarray(probs, np.float64)
    if len(probs) == 0:
        return np.zeros(0)
    return moving_average(probs.max(axis=1), window)


def decide(smoothed: np.ndarray, classes: Sequence[str], reject_below: Optional[float] = None,
           conf: Optional[np.ndarray] = None) -> list[Optional[str]]:
    """The argmax label of each (smoothed) row; None ("none of these") where `conf` ((n,), default: the
    row's best value) is below `reject_below` (None or 0: nothing is rejected)."""
    if len(smoothed) == 0:
        return []
    best = np.asarray(smoothed).argmax(axis=1)
    if not reject_below:
        return [classes[b] for b in best]
    conf = np.asarray(smoothed).max(axis=1) if conf is None else conf
    return [None if c < reject_below else classes[b] for b, c in zip(best, conf)]


def runs(labels: Sequence[Any]) -> list[tuple[int, int, Any]]:
    """Maximal runs of equal labels as (start, stop, label), stop exclusive."""
    out: list[tuple[int, int, Any]] = []
    start = 0
    for i in range(1, len(labels) + 1):
        if i == len(labels) or labels[i] != labels[start]:
            out.append((start, i, labels[start]))
            start = i
    return out


def frame_ends(times: np.ndarray, end_s: Optional[float] = None) -> np.ndarray:
    """When each sampled frame stops being current: the next frame's time; the last one lasts one median step."""
    times = np.asarray(times, np.float64)
    if len(times) == 0:
        return times
    step = float(np.median(np.diff(times))) if len(times) > 1 else 0.0
    last = times[-1] + step if end_s is None else max(end_s, times[-1])
    return np.append(times[1:], last)


def join_rest_gaps(labels: list[str], times: np.ndarray, rest_of: dict[str, str], max_gap_s: float,
                   ends: Optional[np.ndarray] = None) -> list[str]:
    """Relabel the frames between two runs of a repetitive label when they last less than `max_gap_s` and are
    mostly its rest label (a frame or two of another label at the turn of a rep doesn't break the set)."""
    out = list(labels)
    ends = frame_ends(times) if ends is None else ends
    for label, rest in rest_of.items():
        own = [(start, stop) for start, stop, lb in runs(out) if lb == label]
        for (_, gap_start), (gap_stop, _) in zip(own, own[1:]):
            gap = out[gap_start:gap_stop]
            if ends[gap_stop - 1] - times[gap_start] < max_gap_s and 2 * gap.count(rest) > len(gap):
                out[gap_start:gap_stop] = [label] * len(gap)
    return out


def drop_short(labels: list[str], times: np.ndarray, min_segment_s: float,
               ends: Optional[np.ndarray] = None) -> list[str]:
    """Runs shorter than `min_segment_s` take the label of their longer neighbour, shortest run first."""
    out = list(labels)
    ends = frame_ends(times) if ends is None else ends
    while min_segment_s > 0:
        rs = runs(out)
        if len(rs) < 2:
            break
        dur = [ends[stop - 1] - times[start] for start, stop, _ in rs]
        k = int(np.argmin(dur))
        if dur[k] >= min_segment_s:
            break
        neighbours = [j for j in (k - 1, k + 1) if 0 <= j < len(rs)]
        j = max(neighbours, key=lambda m: dur[m])
        start, stop, _ = rs[k]
        out[start:stop] = [rs[j][2]] * (stop - start)
    return out


def hysteresis_events(signal: np.ndarray, high: float, low: float,
                      blocked: Optional[np.ndarray] = None) -> list[int]:
    """Indices where `signal` reaches `high` after having been at or below `low`.

    (n,) -> rising-edge indices. A signal that starts high has shown no rep yet: the counter arms only at a
    low, and a wobble that stays above `low` never re-arms it. A `blocked` frame ((n,) bools: rejected,
    "none of these") disarms it: the rep in progress is abandoned and counting restarts at the next low.
    """
    if low >= high:
        raise ValueError(f"rep_low ({low}) must be below rep_high ({high})")
    events, armed = [], False
    high, low = high - 1e-9, low + 1e-9  # a moving average of 0/1 frames lands exactly on 0.4, 0.6, ...
    for i, v in enumerate(np.asarray(signal, np.float64)):
        if blocked is not None and blocked[i]:
            armed = False
        elif armed and v >= high:
            events.append(i)
            armed = False
        elif not armed and v <= low:
            armed = True
    return events


def extend_sets(labels: list[str], smoothed: np.ndarray, classes: Sequence[str], rest_of: dict[str, str],
                events: dict[str, list[int]]) -> list[str]:
    """Grow each set of reps into the neighbouring rest frames where the exercise's probability is still
    rising into the first rep (before the set) or falling out of the last one (after it), by at most half a
    rep. The first descent of a squat looks like standing frame by frame, but it is part of the set."""
    out = list(labels)
    for start, stop, label in runs(labels):
        n_reps = sum(start <= i < stop for i in events.get(label, ()))
        rest = rest_of.get(label)
        if not n_reps or rest is None:
            continue
        sig = smoothed[:, list(classes).index(label)]
        cap = int(round(0.5 * (stop - start) / n_reps))
        i = start  # frame i-1 joins while it is on the slope: the frame before it is lower still
        while i > 1 and start - i < cap and out[i - 1] == rest and sig[i - 2] < sig[i - 1] - 1e-6:
            i -= 1
        j = stop  # frame j joins while the frame after it is lower still
        while j < len(out) - 1 and j - stop < cap and out[j] == rest and sig[j + 1] < sig[j] - 1e-6:
            j += 1
        out[i:j] = [label] * (j - i)
    return out


def make_segments(labels: Sequence[Optional[str]], times: np.ndarray, smoothed: np.ndarray,
                  classes: Sequence[str], ends: Optional[np.ndarray] = None) -> list[dict[str, Any]]:
    """{label, rejected, start_s, end_s, frames, first, last, mean_score} per run; mean_score is the mean
    smoothed probability of the segment's label, or of each frame's best label in a rejected run (label None)."""
    ends = frame_ends(times) if ends is None else ends
    col = {c: i for i, c in enumerate(classes)}
    segs = []
    for start, stop, label in runs(list(labels)):
        scores = smoothed[start:stop, col[label]] if label is not None else smoothed[start:stop].max(axis=1)
        segs.append({"label": label, "rejected": label is None, "start_s": round(float(times[start]), 4),
                     "end_s": round(float(ends[stop - 1]), 4), "frames": stop - start,
                     "first": start, "last": stop - 1, "mean_score": float(np.mean(scores))})
    return segs


def rep_events(series: np.ndarray, classes: Sequence[str], labels: Sequence[Optional[str]],
               repetitive: Sequence[str], high: float, low: float) -> dict[str, list[int]]:
    """{repetitive label present in classes: frame positions of counted reps} from the (n, C) `series`
    (probabilities smoothed over rep_window); a rise counts only on a frame decided as that label, and a
    rejected frame (label None) abandons the rep in progress."""
    events: dict[str, list[int]] = {}
    blocked = np.array([lb is None for lb in labels], bool)
    for label in repetitive:
        if label in classes:
            rises = hysteresis_events(series[:, list(classes).index(label)], high, low, blocked)
            events[label] = [i for i in rises if labels[i] == label]
    return events


def analyze(probs: np.ndarray, times: np.ndarray, classes: Sequence[str], *, window: int = 5,
            reject_below: Optional[float] = None, min_segment_s: float = 0.0,
            repetitive: Sequence[str] = (), rest_of: Optional[dict[str, str]] = None, rest_gap_s: float = 0.0,
            rep_window: int = 3, rep_high: float = 0.6, rep_low: float = 0.4, end_s: Optional[float] = None,
            unfamiliar: Optional[np.ndarray] = None) -> dict[str, Any]:
    """The whole pipeline on (n, C) raw probabilities. Returns {smoothed, confidence, raw_labels, labels,
    segments, rep_events, reps, unfamiliar}: smoothed (n, C); confidence (n,); labels after bouts and flicker
    removal (None: rejected, "none of these", when `reject_below` is set, or where the head's out-of-set
    detector found the frame `unfamiliar` (n,) bools, smoothed over `window` by majority); reps {label: count}."""
    probs = np.asarray(probs, np.float64)
    times = np.asarray(times, np.float64)
    smoothed = moving_average(probs, window)
    ends = frame_ends(times, end_s)
    conf = confidence(probs, window)
    labels = decide(smoothed, classes, reject_below, conf)
    far = np.zeros(len(probs), bool) if unfamiliar is None else \
        moving_average(np.asarray(unfamiliar, np.float64)[:, None], window)[:, 0] > 0.5
    labels = [None if f else lb for lb, f in zip(labels, far)]
    rest_of = {k: v for k, v in (rest_of or {}).items() if k in repetitive}
    if rest_gap_s > 0 and rest_of:
        labels = join_rest_gaps(labels, times, rest_of, rest_gap_s, ends)
    labels = drop_short(labels, times, min_segment_s, ends)
    rep_series = smoothed if rep_window == window else moving_average(probs, rep_window)
    events = rep_events(rep_series, classes, labels, repetitive, rep_high, rep_low)
    if rest_of:
        labels = extend_sets(labels, smoothed, classes, rest_of, events)
    segments = make_segments(labels, times, smoothed, classes, ends)
    for seg in segments:
        if seg["label"] in events:
            seg["reps"] = sum(seg["first"] <= i <= seg["last"] for i in events[seg["label"]])
    return {"smoothed": smoothed, "confidence": conf,
            "raw_labels": decide(probs, classes), "labels": labels, "segments": segments, "rep_events": events,
            "reps": {k: len(v) for k, v in events.items()}, "unfamiliar": far}
