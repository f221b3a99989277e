"""Per-label on/off segments of a video scored by a multi-label head.

Each label is decided on its own: a frame has the label where the label's smoothed probability reaches the
label's threshold (the head's per-class thresholds). Runs of "on" frames separated by an "off" gap shorter
than `min_segment_s` are joined, then runs shorter than `min_segment_s` are dropped, so a flicker neither splits
a segment nor makes one. numpy only.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np


def _runs(on: np.ndarray) -> list[tuple[int, int]]:
    """[(first, last)] frame positions of the runs of True in `on`."""
    edges = np.diff(np.r_[0, on.astype(np.int8), 0])
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1))


def label_segments(smoothed: np.ndarray, times: np.ndarray, classes: Sequence[str], thresholds: Sequence[float],
                   min_segment_s: float = 0.0, end_s: Optional[float] = None) -> dict[str, list[dict[str, Any]]]:
    """{label: [{start_s, end_s, mean_score}]} from (n_frames, C) smoothed probabilities and (n,) frame times.

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
                       "mean_score": round(float(smoothed[a:b + 1, j].mean()), 6)}
                      for a, b in merged if end_of(b) - times[a] >= min_segment_s]
    return out
