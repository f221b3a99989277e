"""Figures as PNG files: the ONLY toolkit module that imports matplotlib (Agg backend, no display needed).

Each function takes plain data (lists / arrays), writes one PNG, and returns its path.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


# Distinct colours for classes: matplotlib's tab10 without its grey (grey marks "none of these"), then nine of
# Kelly's colours of maximum contrast that differ from those in hue or lightness (black, gold, light blue, ...),
# as hex strings so that code without matplotlib (the video overlay) can use them too.
CLASS_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
                 "#17becf", "#000000", "#f3c300", "#a1caf1", "#882d17", "#8db600", "#f99379", "#c2b280",
                 "#b3446c", "#604e97")


def class_colors(labels: Sequence[str]) -> dict[str, str]:
    """A colour per label that depends on the label's text, not its position, so a class keeps its colour in
    every plot (other label sets, other videos): each label (in sorted order) takes the palette slot its CRC-32
    points at, or the next free one, so up to len(CLASS_PALETTE) labels never share a colour; beyond that,
    colours are spread around the hue circle."""
    import colorsys
    import zlib

    out: dict[str, str] = {}
    free = list(range(len(CLASS_PALETTE)))
    for k, label in enumerate(sorted(set(labels))):
        if free:
            want = zlib.crc32(label.encode("utf-8", "surrogateescape")) % len(CLASS_PALETTE)
            slot = min(free, key=lambda s: (s - want) % len(CLASS_PALETTE))
            free.remove(slot)
            out[label] = CLASS_PALETTE[slot]
        else:
            r, g, b = colorsys.hsv_to_rgb((k * 0.618034) % 1.0, 0.65, 0.75)
            out[label] = f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"
    return out


def _short(label: str, width: int = 22) -> str:
    return label if len(label) <= width else label[:width - 1] + "…"


def _wrap(label: str, width: int = 18, max_lines: int = 3) -> str:
    """Wrap a long label onto a few lines (class names often differ only at the end: "...a squat")."""
    import textwrap

    lines = textwrap.wrap(label, width) or [label]
    if len(lines) > max_lines:
        lines = lines[:max_lines - 1] + ["…" + " ".join(lines[max_lines - 1:])[-(width - 1):]]
    return "\n".join(lines)


def confusion_matrix_png(cm: Sequence[Sequence[int]], classes: Sequence[str], path: str | Path,
                         title: str = "confusion matrix") -> Path:
    """Row-normalized confusion matrix (rows = true class) with the raw counts written in each cell."""
    plt = _pyplot()
    counts = np.asarray(cm, dtype=float)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n = len(classes)
    fig, ax = plt.subplots(figsize=(2.6 + 0.8 * n, 2.2 + 0.7 * n))
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), [_wrap(c, 12) for c in classes], rotation=0 if n <= 6 else 45,
                  ha="center" if n <= 6 else "right", fontsize=8)
    ax.set_yticks(range(n), [_wrap(c) for c in classes], fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=8,
                    color="white" if rates[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    return _save(plt, fig, path, bbox_inches="tight")


def sweep_png(sweep: Sequence[dict[str, Any]], path: str | Path, title: str = "hyper-parameter sweep",
              chosen: Optional[float] = None) -> Path:
    """Validation accuracy against a swept hyper-parameter ({param, value, val_accuracy} rows) on a log x-axis
    that is linear below the smallest positive value (symlog), so a value of 0 (no weight decay, alpha 0) is
    drawn at 0 and labelled so. Accuracy axis 0-100%."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    positive = [r["value"] for r in sweep if r["value"] > 0]
    for param in dict.fromkeys(r["param"] for r in sweep):
        rows = sorted((r for r in sweep if r["param"] == param), key=lambda r: r["value"])
        ax.plot([r["value"] for r in rows], [100 * r["val_accuracy"] for r in rows], "o-", ms=4, label=param)
    ax.set_xlabel(" / ".join(dict.fromkeys(r["param"] for r in sweep)))
    if chosen is not None:
        ax.axvline(chosen, color="gray", ls="--", lw=1, label=f"chosen {chosen:.3g}")
    if positive:
        ax.set_xscale("symlog", linthresh=min(positive), linscale=0.5)
        lo, hi = min([0.0] * (len(positive) < len(sweep)) + positive), max(positive)
        ax.set_xlim(lo - 0.05 * min(positive) if lo == 0 else lo / 2, hi * 2)
        decades = list(range(int(np.ceil(np.log10(min(positive)) - 1e-9)), int(np.floor(np.log10(hi))) + 1))
        decades = decades[::max(1, -(-len(decades) // 7))]  # at most 7 labels: a 1e-6..1e6 C sweep ran together
        ticks = [10.0 ** k for k in decades] or sorted(set(positive))  # 0, then decades: no crowding
        names = [_decade(t) for t in ticks]
        ax.set_xticks([0.0] * (lo == 0) + ticks, ["0"] * (lo == 0) + names, fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("validation accuracy (%)")
    return _finish(plt, fig, ax, title, path)


def _decade(t: float) -> str:
    """A tick label short enough to sit beside its neighbours: 0.01, 0.1, 1, 10, 100, else 1e-4 / 1e5."""
    if 0.01 <= t <= 100:
        return f"{t:g}"
    return f"1e{int(round(np.log10(t)))}" if np.isclose(t, 10 ** round(np.log10(t))) else f"{t:.0e}"


def _finish(plt, fig, ax, title: str, path: str | Path) -> Path:
    """Title, grid and legend in the house style, then `_save`."""
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)  # never over the values
    return _save(plt, fig, path, bbox_inches="tight")


def _save(plt, fig, path: str | Path, **savefig: Any) -> Path:
    """Lay out, write atomically (a temporary file renamed into place: never a half-written PNG) and close."""
    from toolkit.fsio import save

    fig.tight_layout()
    try:
        return save(path, lambda tmp: fig.savefig(tmp, **{"dpi": 110, "format": "png", **savefig}))
    finally:
        plt.close(fig)


def curve_png(series: dict[str, tuple[Sequence[float], Sequence[float]]], path: str | Path, title: str,
              xlabel: str, ylabel: str, logx: bool = False, ylim: Optional[tuple[float, float]] = None,
              errors: Optional[dict[str, Sequence[float]]] = None) -> Path:
    """Several named (x, y) lines on one axis, e.g. accuracy against shots per class; `ylim` (e.g. (0, 100)
    for an accuracy in %), `errors` {name: +- per point} drawn as a shaded band."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for name, (xs, ys) in series.items():
        style = "--" if len(xs) and len(set(ys)) == 1 else "o-"
        line, = ax.plot(xs, ys, style, ms=4, label=name)
        if errors and name in errors:
            lo, hi = np.subtract(ys, errors[name]), np.add(ys, errors[name])
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.12, lw=0)
    if ylim:
        ax.set_ylim(*ylim)
    if logx:
        ax.set_xscale("log", base=2)
        ticks = sorted({x for xs, _ in series.values() for x in xs})
        ax.set_xticks(ticks, [f"{x:g}" for x in ticks])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return _finish(plt, fig, ax, title, path)


def timeseries_png(times: Sequence[float], series: dict[str, Sequence[float]], segments: Sequence[dict[str, Any]],
                   path: str | Path, title: str = "smoothed class probabilities",
                   rep_events: Optional[dict[str, Sequence[float]]] = None,
                   thresholds: Optional[tuple[float, float]] = None) -> Path:
    """Probabilities over time (one line per label), segments shaded in their label's colour and named on
    top (rejected ones, `rejected: true`, in grey under the name they are given), counted reps as numbered
    ticks, the rep hysteresis thresholds as dotted lines. Atomic write."""
    plt = _pyplot()
    colors = class_colors(list(series))  # a class keeps its colour across plots; 18 before any repeats
    fig, ax = plt.subplots(figsize=(10, 4.2))
    for label, ys in series.items():
        ax.plot(times, ys, lw=1.6, color=colors[label], label=_short(label, 34))
    words = [label.split() for label in series]
    common = 0  # words every label starts with ("a person ..."): left out of the segment names
    while words and all(len(w) > common + 1 and w[common] == words[0][common] for w in words):
        common += 1
    span = max([s["end_s"] for s in segments] + list(times[-1:]) + [1e-3]) - min(times, default=0)
    row = 0  # named segments alternate between two rows of names, so neighbours' names never run together
    for seg in segments:
        grey = seg.get("rejected") or seg["label"] not in colors
        color = (0.45, 0.45, 0.45, 1) if grey else colors[seg["label"]]
        ax.axvspan(seg["start_s"], seg["end_s"], color=color, alpha=0.3 if seg.get("rejected") else 0.12, lw=0)
        reps = f" ({seg['reps']} reps)" if seg.get("reps") else ""
        if not reps and seg["end_s"] - seg["start_s"] < 0.04 * span:
            continue  # too narrow to name: the names of a flicker of short segments would overlap
        name = " ".join(seg["label"].split()[common:]) if seg["label"] in series else seg["label"]
        ax.text((seg["start_s"] + seg["end_s"]) / 2, 1.02 + 0.055 * row, _short(name, 24) + reps, ha="center",
                va="bottom", fontsize=7, color=color, transform=ax.get_xaxis_transform(), clip_on=False)
        row = 1 - row
    for label, ts in (rep_events or {}).items():
        for k, t in enumerate(ts, 1):
            ax.axvline(t, ymin=0, ymax=0.06, color=colors.get(label, "black"), lw=2)
            ax.text(t, 0.07, str(k), ha="center", fontsize=7, color=colors.get(label, "black"),
                    transform=ax.get_xaxis_transform())
    if thresholds:
        for y in thresholds:
            ax.axhline(y, color="gray", ls=":", lw=0.8)
    ax.set_ylim(0, 1)
    ax.set_xlim(min(times, default=0), max([s["end_s"] for s in segments] + list(times[-1:]) + [1e-3]))
    ax.set_xlabel("time (s)")
    ax.set_ylabel("probability")
    ax.set_title(title, fontsize=10, pad=26)  # room for the two rows of segment names
    ax.grid(alpha=0.25)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    return _save(plt, fig, path)


def _number(v: float, percent: bool) -> str:
    return f"{v:.1f}%" if percent else f"{v:.3f}"


def comparison_bars_png(names: Sequence[str], values: Sequence[float], kinds: Sequence[str], path: str | Path,
                        baseline: Optional[float] = None, title: str = "runs compared",
                        metric: str = "accuracy", percent: bool = True) -> Path:
    """Horizontal bars, best on top, one colour per run kind (prompt / probe), the zero-shot baseline dashed.
    `values` are fractions in [0, 1], drawn as % (`percent`), or plain numbers (e.g. NLL). Atomic write."""
    plt = _pyplot()
    colors = {"prompt": "#4c72b0", "probe": "#dd8452", "chosen": "#dd8452", "candidate": "#9a9a9a"}
    n = len(names)
    fig, ax = plt.subplots(figsize=(7.5, 1.4 + 0.38 * n))
    ys = np.arange(n)[::-1]  # first row (the best) at the top
    scale = 100 if percent else 1
    vals = [scale * float(v) for v in values]
    ax.barh(ys, vals, color=[colors.get(k, "gray") for k in kinds], height=0.7)
    top = max(vals + [scale * (baseline or 0), 1e-9]) * 1.1
    if percent and max(vals + [0]) <= 100:
        top = 100.0  # an accuracy axis ends at 100%
    for y, v in zip(ys, vals):  # near the end: written inside the bar, so it never runs off the axis
        inside = v > 0.85 * top
        ax.text(v - 0.01 * top if inside else v + 0.01 * top, y, _number(v, percent), va="center", fontsize=8,
                ha="right" if inside else "left", color="white" if inside else "black",
                bbox=None if inside else {"facecolor": "white", "edgecolor": "none", "pad": 0.6})  # over the line
    ax.set_yticks(ys, [_short(nm, 34) for nm in names], fontsize=8)
    if baseline is not None:
        ax.axvline(scale * baseline, color="black", ls="--", lw=1, label=f"zero-shot {_number(scale * baseline, percent)}")
    from matplotlib.patches import Patch

    handles = [Patch(color=c, label=k) for k, c in colors.items() if k in kinds]
    handles += ax.get_legend_handles_labels()[0]
    ax.set_xlim(0, top)
    ax.set_xlabel(f"{metric} (%)" if percent else metric)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)  # beside
    return _save(plt, fig, path, bbox_inches="tight")


def reliability_png(panels: Sequence[dict[str, Any]], path: str | Path, title: str = "reliability diagram",
                    columns: int = 2) -> Path:
    """Reliability diagrams side by side (e.g. before / after temperature scaling, one row per head).

    Each panel is {title, reliability: {count, accuracy, confidence} per equal-width confidence bin (None for
    an empty bin), ece}. Bars: accuracy per bin; hatched red: the gap to the bin's mean confidence; dashed:
    the diagonal (perfect calibration); the number of images above each bar. Atomic write."""
    plt = _pyplot()
    rows = max(1, -(-len(panels) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 4.0 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        _reliability_axis(ax, panel)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=11)
    return _save(plt, fig, path)


def _reliability_axis(ax, panel: dict[str, Any]) -> None:
    rel = panel["reliability"]
    n_bins = len(rel["count"])
    width = 1.0 / n_bins
    centers = (np.arange(n_bins) + 0.5) * width
    full = [i for i in range(n_bins) if rel["count"][i]]
    acc = np.array([rel["accuracy"][i] for i in full], float)
    conf = np.array([rel["confidence"][i] for i in full], float)
    ax.bar(centers[full], acc, width=width * 0.95, color="#4c72b0", edgecolor="white", label="accuracy")
    ax.bar(centers[full], conf - acc, bottom=acc, width=width * 0.95, color="none", edgecolor="#c44e52",
           hatch="//", lw=0.8, label="gap to confidence")
    ax.plot([0, 1], [0, 1], "--", color="gray", lw=1, label="perfectly calibrated")
    ax.plot([], [], " ", label="numbers: images per bin")
    for i, a, c in zip(full, acc, conf):
        ax.text(centers[i], max(a, c) + 0.015, str(rel["count"][i]), ha="center", va="bottom", fontsize=6.5,
                color="#333333")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.1)
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy")
    ece = panel.get("ece")
    ax.set_title(panel.get("title", "") + (f"\nECE {100 * ece:.1f}%" if ece is not None else ""), fontsize=9)
    ax.grid(alpha=0.25)
    ax.legend(fontsize=7, loc="upper left")


def contact_sheet_png(items: Sequence[dict[str, Any]], path: str | Path, title: str = "", cols: int = 6,
                      thumb: int = 160) -> Path:
    """A grid of images a person can scan: each item {path, lines: [caption lines]} (e.g. given label,
    suggested label, score). An image that can't be read shows as a grey tile with its caption."""
    from PIL import Image

    plt = _pyplot()
    n = max(len(items), 1)
    cols = min(cols, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.1 * cols, 2.5 * rows + (0.4 if title else 0)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, item in zip(axes.flat, items):
        try:
            with Image.open(item["path"]) as im:
                im = im.convert("RGB")
                im.thumbnail((thumb, thumb))
                ax.imshow(np.asarray(im))
        except (OSError, ValueError):
            ax.imshow(np.full((thumb, thumb, 3), 200, np.uint8))
        ax.set_title("\n".join(_short(str(t), 26) for t in item.get("lines", [])), fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(plt, fig, path)
