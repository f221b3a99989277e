"""Per-label on/off segments of a video scored by a multi-label head.

Each label is decided on its own: a frame has the label where the label's smoothed probability reaches the
label's threshold (the head's per-class thresholds). Runs of "on" frames separated by an "off" gap shorter
than `min_segment_s` are joined, then runs shorter than `min_segment_s` are dropped, so a flicker neither splits
a segment nor makes one. numpy only.

Reps (`label_reps`) are counted per repetitive label on the label's own series, as the single-label pipeline
counts them on the decided label's (video/reps.py): its probability smoothed over `rep_window` frames, with
hysteresis around the label's own threshold t: a rep counts when the series climbs to t + (rep_high - 0.5)
after having dropped to t - (0.5 - rep_low) (0.4/0.6: t +- 0.1, clipped into (0, 1)), so noise around t never
counts twice and a series that starts "on" has shown no rep yet. A rep of a squat is one off -> on -> off cycle
of "a person repeating a squat", whatever the other labels do meanwhile.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np


def _runs(on: np.ndarray) -> list[tuple[int, int]]:
    """[(first, last)] frame positions of the runs of True in `on`."""
    edges = np.diff(np.r_[0, on.astype(np.int8), 0])
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1))


def label_reps(probs: np.ndarray, classes: Sequence[str], thresholds: Sequence[float], repetitive: Sequence[str],
               rep_window: int = 3, rep_high: float = 0.6, rep_low: float = 0.4) -> dict[str, list[int]]:
    """{repetitive label in `classes`: frame positions of its reps} from (n_frames, C) raw probabilities (see the
    module docstring)."""
    from toolkit.video.reps import hysteresis_events, moving_average

    series = moving_average(np.asarray(probs, np.float64), rep_window)
    out: dict[str, list[int]] = {}
    for label in repetitive:
        if label in classes:
            j = list(classes).index(label)
            t = float(thresholds[j])
            high, low = min(t + rep_high - 0.5, 1.0), max(t - (0.5 - rep_low), 0.0)
            out[label] = [int(i) for i in hysteresis_events(series[:, j], high, low)] if low < high else []
    return out


def label_segments(smoothed: np.ndarray, times: np.ndarray, classes: Sequence[str], thresholds: Sequence[float],
                   min_segment_s: float = 0.0, end_s: Optional[float] = None,
                   reps: Optional[dict[str, list[int]]] = None) -> dict[str, list[dict[str, Any]]]:
    """{label: [{start_s, end_s, mean_score[, reps]}]} from (n_frames, C) smoothed probabilities and (n,) frame
    times; `reps` ({label: rep frame positions}, from `label_reps`) adds each segment's count of them.

    A segment ends where the next frame starts (or at `end_s`, else its last frame's time, for the last frame)."""
    smoothed, times = np.asarray(smoothed, np.float64), np.asarray(times, np.float64)
    out: dict[str, list[dict[str, Any]]] = {}

    def end_of(last: int) -> float:
        if last + 1 < len(times):
            return float(times[last + 1])
        return float(end_s if end_s is not None else times[last])

    for j, label in enumerate(classes):
        runs = _runs(smoothed[:, j] >= thresholds[j])
        merged: list[list[int]] = []
        for first, last in runs:
            if merged and times[first] - end_of(merged[-1][1]) < min_segment_s:
                merged[-1][1] = last  # a short gap: the label stayed on
            else:
                merged.append([first, last])
        out[label] = [{"start_s": round(float(times[a]), 3), "end_s": round(end_of(b), 3),
                       "mean_score": round(float(smoothed[a:b + 1, j].mean()), 6),
                       **({"reps": sum(a <= i <= b for i in reps[label])} if reps and label in reps else {})}
                      for a, b in merged if end_of(b) - times[a] >= min_segment_s]
    return out
