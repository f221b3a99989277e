"""`clipkit predict-video`: a video classified frame by frame, smoothed, cut into segments, reps counted."""
from __future__ import annotations

import io
import json
from typing import Any, Optional

import click

from toolkit import fsio
from toolkit.errors import ConfigError
from toolkit.video.pipeline import MAX_FPS
from toolkit.cli.common import FRACTION, build_config, head_options, local_head, model_options, prompt_options, show_progress


def parse_repetitive(items: tuple[str, ...]) -> tuple[list[str], dict[str, str]]:
    """('squat', 'push-up=plank') -> (['squat', 'push-up'], {'push-up': 'plank'})."""
    labels, rest_for = [], {}
    for item in items:
        label, sep, rest = item.partition("=")
        if not label.strip() or (sep and not rest.strip()):
            raise ConfigError(f"--repetitive '{item}' is malformed; use LABEL or LABEL=REST_LABEL")
        labels.append(label.strip())
        if sep:
            rest_for[label.strip()] = rest.strip()
    return labels, rest_for


def check_video_labels(vcfg, classes: list[str], explicit: dict[str, Any]) -> None:
    """Labels given explicitly on the command line must be among the predictor's labels."""
    named = [("--rest-label", explicit.get("rest_label"))] + \
            [("--repetitive", lb) for lb in explicit.get("repetitive") or []] + \
            [("--repetitive", r) for r in (explicit.get("rest_for") or {}).values()]
    for flag, label in named:
        if label and label not in classes:
            raise ConfigError(f"{flag} '{label}' is not one of the labels {classes}; use one of them exactly")


def shown_label(item: dict[str, Any], doc: dict[str, Any]) -> str:
    """A frame's or segment's label for people: the unknown label ("none of these") when it was rejected."""
    return doc["settings"]["unknown_label"] if item["label"] is None else item["label"]


def render_table(doc: dict[str, Any]) -> str:
    """Video summary, the segments (with reps; rejected ones as the unknown label) and the rep totals."""
    v = doc["video"]
    lines = [f"{v['path']}: {v['width']}x{v['height']}, {v['duration_s'] or 0:.1f} s, "
             f"{v['sampled_frames']} of {v['decoded_frames']} frames scored ({doc['mode']}, {doc['model']})",
             "", f"{'start':>7} {'end':>7}  {'label':<36} {'frames':>6} {'score':>6} {'reps':>5}"]
    for s in doc["segments"]:
        lines.append(f"{s['start_s']:>7.2f} {s['end_s']:>7.2f}  {shown_label(s, doc)[:36]:<36} {s['frames']:>6} "
                     f"{s['mean_score']:>6.3f} {s.get('reps', ''):>5}")
    if doc["reps"]:
        lines += ["", "reps: " + ", ".join(f"{lb} {n}" for lb, n in doc["reps"].items())]
    for lb, segs in (doc.get("label_segments") or {}).items():  # multi-label: each label's own on/off segments
        lines.append(f"{lb}: " + (", ".join(f"{s['start_s']:.2f}-{s['end_s']:.2f} s" + (
            f" ({s['reps']} reps)" if "reps" in s else "") for s in segs) or "never on"))
    if doc["reject_below"]:
        n = sum(f["rejected"] for f in doc["frames"])
        lines.append(f"'{doc['settings']['unknown_label']}': {n} of {len(doc['frames'])} frames "
                     f"(confidence below {doc['reject_below']:g}); no reps are counted through them")
    return "\n".join(lines)


def render_csv(doc: dict[str, Any]) -> str:
    """One row per sampled frame: index, time_s, label (empty when rejected, as in `clipkit predict`), score,
    rejected (true/false), confidence, raw_label, segment (its number in the JSON 'segments'), reps (count of the current
    label's reps so far), then raw and smoothed score columns."""
    from toolkit.video.overlay import running_reps

    buf = io.StringIO()
    w = fsio.csv_writer(buf)
    labels = doc["labels"]
    w.writerow(["index", "time_s", "label", "score", "rejected", "confidence", "raw_label", "segment", "reps",
                *[f"raw:{lb}" for lb in labels], *[f"smoothed:{lb}" for lb in labels]])
    seg_of = [k for k, s in enumerate(doc["segments"]) for _ in range(s["frames"])]
    for k, (f, reps) in enumerate(zip(doc["frames"], running_reps(doc))):
        w.writerow([f["index"], f"{f['time_s']:.4f}", f["label"] or "", f"{f['score']:.6f}",
                    str(f["rejected"]).lower(), f"{f['confidence']:.6f}", f["raw_label"], seg_of[k],
                    "" if reps is None else reps, *[f"{f['scores'][lb]:.6f}" for lb in labels],
                    *[f"{f['smoothed'][lb]:.6f}" for lb in labels]])
    return buf.getvalue()


def write_plot(doc: dict[str, Any], path: str) -> None:
    from toolkit.evaluation.plots import timeseries_png

    times = [f["time_s"] for f in doc["frames"]]
    series = {lb: [f["smoothed"][lb] for f in doc["frames"]] for lb in doc["labels"]}
    events = {lb: [e["time_s"] for e in es] for lb, es in doc["rep_events"].items()}
    s = doc["settings"]
    same = s["rep_window"] == s["window"]  # the thresholds apply to the plotted lines only then
    segments = [{**seg, "label": shown_label(seg, doc)} for seg in doc["segments"]]
    timeseries_png(times, series, segments, path, rep_events=events,
                   thresholds=(s["rep_low"], s["rep_high"]) if same else None,
                   title=f"{doc['video']['path']}: smoothed probabilities (window {s['window']}), reps counted")


@click.command("predict-video")
@click.argument("video", type=click.Path(dir_okay=False))
@model_options
@prompt_options
@head_options
@click.option("--fps", type=click.FloatRange(min=0, max=MAX_FPS, min_open=True), default=None,
              help=f"Score this many frames per second of video (at most {MAX_FPS:g}); a source with fewer gives "
              "every frame. [default: 10]")
@click.option("--stride", type=click.IntRange(1), default=None,
              help="Score every K-th frame instead (--stride 1: every frame).")
@click.option("--window", type=click.IntRange(1), default=None,
              help="Centered moving-average window, in scored frames; shrinks at the ends. [default: 5]")
@click.option("--reject-below", "reject_below", type=FRACTION, default=None,
              help="\"None of these\": frames whose confidence (top calibrated probability, averaged over --window) "
              "is below this are rejected: "
              "their own segments, no reps counted through them; 0 rejects nothing. "
              "[default: the head's own threshold, if it has one]")
@click.option("--unknown-label", "unknown_label", default=None,
              help="What the table, plot and --annotate show for rejected frames (JSON: label null, rejected "
              "true; CSV: empty label). [default: 'none of these']")
@click.option("--min-segment-s", type=click.FloatRange(0), default=None,
              help="Segments shorter than this (seconds) join their longer neighbour. [default: 0]")
@click.option("--rest-label", default=None, help="The rest pose between reps. [default: 'a person standing']")
@click.option("--repetitive", multiple=True, help="A label done in reps; LABEL=REST gives its own rest pose. "
              "Repeat for several. [default: squat, jumping jack, push-up (rest: plank), lunge]")
@click.option("--rest-gap-s", type=click.FloatRange(0), default=None,
              help="Rest-pose runs shorter than this inside a set of reps belong to the set. [default: 1.5]")
@click.option("--rep-window", type=click.IntRange(1), default=None,
              help="Moving-average window for counting reps, lighter than --window so that a fast rep's "
              "rest phase stays visible. [default: 3]")
@click.option("--rep-high", type=click.FloatRange(0, 1), default=None,
              help="A rep counts when the exercise's probability (over --rep-window) reaches this... "
              "[default: 0.6]")
@click.option("--rep-low", type=click.FloatRange(0, 1), default=None,
              help="...after having dropped to this since the last rep. [default: 0.4]")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Write a PNG of the smoothed probabilities over time, segments shaded, reps marked.")
@click.option("--annotate", "annotate_path", type=click.Path(dir_okay=False), default=None,
              help="Write an MP4 copy of the video with the label, score and rep count on each frame.")
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr (default: when a terminal).")
@click.option("--engine", type=click.Choice(["auto", "onnx", "torch"]), default=None,
              help="auto: frames through ONNX Runtime on the CPU where the model allows (as `clipkit predict`), "
                   "else torch; onnx: that or an error; torch: always PyTorch. [default: the config's model.engine]")
def predict_video(video: str, config_path: Optional[str], head: Optional[str], fmt: str, plot_path: Optional[str],
                  annotate_path: Optional[str], progress: Optional[bool], repetitive: tuple[str, ...],
                  engine: Optional[str], **flags: Any) -> None:
    """Classify a video frame by frame: smoothed scores, segments and repetition counts.

    \b
    Examples:
      clipkit predict-video --config configs/demo.yaml workout.mp4
      clipkit predict-video clip.mp4 --fps 15 --window 7 --plot scores.png --annotate labelled.mp4
      clipkit predict-video clip.mp4 --head out/head --format json > clip.json
      clipkit predict-video clip.mp4 --head out/head --reject-below 0.6 --min-segment-s 0.5
      clipkit predict-video clip.mp4 --repetitive "a person doing a push-up=a person performing a plank"

    \b
    How it works: each sampled frame is scored like an image; the per-label probabilities are averaged
    over a centered window; each frame takes the best smoothed label. Short rest-pose stretches inside a
    set of reps join the set, and consecutive frames with one label form a segment. A rep is counted
    each time an exercise's probability (smoothed over --rep-window) climbs to --rep-high after
    dropping to --rep-low. Rep counting needs the rest phase between reps to be sampled: keep at least
    ~10 scored frames per second (the default).

    \b
    "None of these": with a head saved with a threshold (train-probe/eval-prompts --target-precision ...)
    or --reject-below, frames that look like none of the labels (walking in, sitting, drinking) are
    rejected: they form their own segments, shown as --unknown-label, and never count reps (a rep in
    progress is abandoned). A frame's confidence is the top (calibrated) probability of each frame averaged
    over --window: a frame between two poses, or one confused frame, in a set stays accepted.
    JSON has every frame (raw and smoothed scores), the segments and the reps; CSV has the frames.
    """
    from toolkit.cli.predict import _negatives_cache, _open_extractor
    from toolkit.predictor import build_predictor
    from toolkit.video.overlay import annotate_video
    from toolkit.video.pipeline import predict_video as run, probe_video

    if flags.get("fps") is not None and flags.get("stride") is not None:
        raise ConfigError("give --fps or --stride, not both")
    labels, rest_for = parse_repetitive(repetitive)
    video_keys = ["fps", "stride", "window", "reject_below", "unknown_label", "min_segment_s", "rest_label",
                  "rest_gap_s", "rep_window", "rep_high", "rep_low"]
    explicit = {k: flags.pop(k) for k in video_keys}
    explicit.update(repetitive=labels or None, rest_for=rest_for or None)
    overrides = {f"video.{k}": v for k, v in explicit.items() if k != "rest_for"}
    overrides["model.engine"] = engine
    cfg = build_config(config_path, **flags, **overrides)
    if explicit["stride"] is not None:
        cfg.video.fps = None  # --stride replaces the default (or configured) fps sampling
    if rest_for:
        cfg.video.rest_for = {**cfg.video.rest_for, **rest_for}
    probe_video(video)  # not a video / no video stream: fail before the (slow) model load
    # frames through encoder.fast's choice (ONNX Runtime where it applies, as `clipkit predict` and the server)
    predictor = build_predictor(cfg, head=local_head(head, cfg), open_extractor=_open_extractor,
                                cache_dir=_negatives_cache())
    check_video_labels(cfg.video, predictor.labels, explicit)
    show = show_progress(progress)
    doc = run(predictor, video, cfg.video, progress=show)
    if plot_path:
        write_plot(doc, plot_path)
    if annotate_path:
        annotate_video(video, annotate_path, doc)
    out = {"table": lambda: render_table(doc), "csv": lambda: render_csv(doc),
           "json": lambda: json.dumps(doc, indent=1)}[fmt]()
    click.echo(out.rstrip("\n"))
