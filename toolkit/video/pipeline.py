"""Videos: PyAV decoding -> per-frame scores from the Predictor -> smoothed series, segments and reps.

ONE pipeline for the CLI and the server (`predict_video`): frames are decoded one at a time, preprocessed at
once (one full-size frame in memory), encoded in batches and scored by `Predictor.proba`, so memory holds one
batch of model-sized frames plus an (n_frames, n_classes) score table, however long the video. The annotated copy is written in a
second decoding pass (overlay.py). The time-series logic (smoothing, "none of these", segments, reps) lives
in `reps.py`.

"None of these": frames whose confidence is below the threshold (VideoConfig.reject_below, else the head's
calibrated `reject_below`; 0 turns it off) are rejected: label null and "rejected": true in the document, their
own segments, and no reps counted through them. Frames the head's out-of-set detector finds unfamiliar (by
majority over the smoothing window) are rejected too; frames and rejected segments say why ("reason":
"unfamiliar" or "low_confidence").
"""
from __future__ import annotations

import math
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
from PIL import Image

from toolkit.config import VideoConfig
from toolkit.errors import ConfigError, InputError
from toolkit.heads.openset import unfamiliar_mask
from toolkit.video.reps import analyze

TRUNCATED_FRACTION = 0.9  # fewer decoded frames than this share of the declared count: the file was cut short
MAX_FPS = 240.0  # the highest sampling rate accepted (sources above it are sampled, not scored frame by frame)


class VideoLimitError(InputError):
    """A video is longer (seconds or frames) than the caller allows."""

    http_status = 422


@dataclass
class VideoInfo:
    """What the container says about its first video stream."""

    path: str
    width: int
    height: int
    fps: Optional[float]  # average frame rate; None when the container doesn't know
    duration_s: Optional[float]
    declared_frames: int  # 0 when the container doesn't say
    codec: str


def _open(path: str | Path):
    import av

    p = Path(path)
    if not p.is_file():
        raise InputError(f"video '{path}' not found; check the path")
    if p.stat().st_size == 0:
        raise InputError(f"video '{path}' is an empty file; pass a video file (mp4, mov, mkv, webm, avi)")
    try:
        container = av.open(str(p))
    except av.error.FFmpegError as e:
        raise InputError(f"'{path}' is not a readable video ({_reason(e)}); pass a video file "
                         "(mp4, mov, mkv, webm, avi), or re-encode it if it was cut short") from None
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["no"]
        container.close()
        raise InputError(f"'{path}' has no video stream (it has {', '.join(kinds)} streams); pass a video file")
    return container


def _reason(e: Exception) -> str:
    return getattr(e, "strerror", None) or str(e).splitlines()[0][:200] or e.__class__.__name__


def _info(container, path: str | Path) -> VideoInfo:
    s = container.streams.video[0]
    duration = float(s.duration * s.time_base) if s.duration and s.time_base else \
        (container.duration / 1e6 if container.duration else None)
    rate = float(s.average_rate) if s.average_rate else None
    return VideoInfo(str(path), s.codec_context.width, s.codec_context.height, rate, duration, int(s.frames or 0),
                     s.codec_context.name)


def probe_video(path: str | Path) -> VideoInfo:
    """Open a video only to read its metadata; InputError for anything that isn't one."""
    with _open(path) as container:
        return _info(container, path)


@dataclass
class VideoLimits:
    """What one video may cost: None means no limit. The server fills these from its serve: section."""

    max_seconds: Optional[float] = None
    max_frames: Optional[int] = None  # sampled frames
    max_pixels: Optional[int] = None  # per frame (width x height), as for images
    max_work: Optional[float] = None  # decoded frames x pixels per frame, for the whole video


class VideoTooLargeError(InputError):
    """A video's frames are larger, or its decoding costlier, than the caller allows."""

    http_status = 413


def sampling_rate(info: VideoInfo, fps: Optional[float], stride: int) -> Optional[float]:
    """Sampled frames per second: `fps` capped at the source's rate (sampling can't add frames), else the
    source rate / stride; None when the container doesn't say its rate."""
    source = info.fps or 0.0
    if fps:
        return min(fps, source) if source else fps
    return source / stride if source else None


def check_sampling(fps: Optional[float], stride: int) -> None:
    """ConfigError unless fps is finite and in (0, MAX_FPS] and stride a positive integer."""
    if fps is not None and not (math.isfinite(fps) and 0 < fps <= MAX_FPS):
        raise ConfigError(f"fps {fps!r} is out of range; give a number above 0 and at most {MAX_FPS:g} "
                          "(frames scored per second of video), or use stride")
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ConfigError(f"stride {stride!r} is not a positive whole number; give e.g. stride 1 (every frame)")


def check_limits(info: VideoInfo, limits: VideoLimits, fps: Optional[float], stride: int) -> None:
    """Refuse from the container's header, before decoding: VideoTooLargeError for frames over max_pixels
    or a decoding cost over max_work, VideoLimitError for a video too long (decoding enforces them again)."""
    name = Path(info.path).name
    pixels = info.width * info.height
    if limits.max_pixels is not None and pixels > limits.max_pixels:
        raise VideoTooLargeError(f"video '{name}' has {info.width}x{info.height} frames ({pixels} pixels), over "
                                 f"the limit of {limits.max_pixels} pixels per frame; scale it down")
    if limits.max_seconds is not None and info.duration_s is not None and info.duration_s > limits.max_seconds:
        raise VideoLimitError(f"video '{name}' lasts {info.duration_s:.1f} s, over the limit of "
                              f"{limits.max_seconds:g} s; cut it shorter")
    decoded = info.declared_frames or (int(info.duration_s * info.fps) if info.duration_s and info.fps else 0)
    if limits.max_work is not None and decoded * pixels > limits.max_work:
        raise VideoTooLargeError(f"video '{name}' would decode ~{decoded} frames of {pixels} pixels, over the "
                                 f"limit of {limits.max_work:.3g} decoded pixels; send a shorter or smaller video")
    rate = sampling_rate(info, fps, stride)
    if limits.max_frames is None or info.duration_s is None or rate is None:
        return
    expected = int(info.duration_s * rate)
    if expected > limits.max_frames:
        raise VideoLimitError(f"video '{name}' would give ~{expected} sampled frames, over the limit "
                              f"of {limits.max_frames}; sample fewer with a lower fps or a larger stride")


def iter_frames(path: str | Path, fps: Optional[float] = None, stride: int = 1, *,
                limits: Optional[VideoLimits] = None, stats: Optional[dict] = None,
                cancel: Optional[threading.Event] = None) -> Iterator[tuple[int, float, Image.Image]]:
    """Yield (frame index in the stream, time in seconds from the first frame, RGB PIL image) for the sampled
    frames: the first frame at or after each multiple of 1/fps seconds when `fps` is given, else every
    `stride`-th frame. Each decoded frame is looked at once, so no fps can make the loop spin.

    Raises ConfigError for bad sampling, InputError for a file that isn't a video, has no video stream, has
    no decodable frame or is truncated, VideoLimitError / VideoTooLargeError past `limits`, and stops
    (VideoCancelled) when `cancel` is set. `stats`, if given, receives {decoded, sampled, info} at the end.
    """
    check_sampling(fps, stride)
    limits = limits or VideoLimits()
    import av

    with _open(path) as container:
        info = _info(container, path)
        check_limits(info, limits, fps, stride)
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        next_slot, start, decoded, sampled, work = 0, None, 0, 0, 0.0
        try:
            for frame in container.decode(stream):
                if cancel is not None and cancel.is_set():
                    raise VideoCancelled(f"scoring of video '{Path(path).name}' was cancelled")
                t = frame.time if frame.time is not None else decoded / (info.fps or 1.0)
                start = t if start is None else start
                t -= start
                index = decoded
                decoded += 1
                work += frame.width * frame.height
                _check_running(path, t, frame, work, limits)
                if fps is not None:
                    slot = math.floor(t * fps + 1e-6)  # which 1/fps interval the frame falls in
                    if slot < next_slot:
                        continue
                    next_slot = slot + 1
                elif index % stride:
                    continue
                sampled += 1
                if limits.max_frames is not None and sampled > limits.max_frames:
                    raise VideoLimitError(f"video '{Path(path).name}' gives more than {limits.max_frames} sampled "
                                          "frames; sample fewer with a lower fps or a larger stride")
                yield index, round(float(t), 6), frame.to_image()
        except av.error.FFmpegError as e:
            if decoded == 0:
                raise InputError(f"video '{path}' has no decodable frames ({_reason(e)}); check that it plays, "
                                 "or re-encode it") from None
            raise InputError(f"video '{path}' is truncated or corrupt: decoding failed after {decoded} frames "
                             f"({_reason(e)}); re-encode or re-download it") from None
    if decoded == 0:
        raise InputError(f"video '{path}' has no decodable frames; check that it plays, or re-encode it")
    if info.declared_frames and decoded < TRUNCATED_FRACTION * info.declared_frames:
        raise InputError(f"video '{path}' is truncated: decoded {decoded} of {info.declared_frames} frames; "
                         "re-encode or re-download it")
    if stats is not None:
        stats.update(decoded=decoded, sampled=sampled, info=info)


def _check_running(path, t: float, frame, work: float, limits: VideoLimits) -> None:
    """The limits again while decoding: a container's header can understate duration, size or length."""
    name = Path(path).name
    if limits.max_seconds is not None and t > limits.max_seconds:
        raise VideoLimitError(f"video '{name}' runs past the limit of {limits.max_seconds:g} s; cut it shorter")
    if limits.max_pixels is not None and frame.width * frame.height > limits.max_pixels:
        raise VideoTooLargeError(f"video '{name}' has a {frame.width}x{frame.height} frame, over the limit of "
                                 f"{limits.max_pixels} pixels per frame; scale it down")
    if limits.max_work is not None and work > limits.max_work:
        raise VideoTooLargeError(f"video '{name}' decodes more than {limits.max_work:.3g} pixels in all, over "
                                 "the limit; send a shorter or smaller video")


class VideoCancelled(InputError):
    """The caller gave up on the video (a deadline passed, the client went away)."""

    http_status = 504


def frame_batches(frames: Iterator[tuple[int, float, Image.Image]], prepare: Callable, batch_size: int
                  ) -> Iterator[list[tuple[int, float, Any]]]:
    """Batches of up to `batch_size` (index, time_s, prepare(image)): one full-size frame in memory at a time."""
    batch: list[tuple[int, float, Any]] = []
    for index, t, img in frames:
        batch.append((index, t, prepare(img)))
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def score_video(predictor, path: str | Path, vcfg: VideoConfig, labels: Optional[Sequence[str]] = None, *,
                encode: Optional[Callable[[list], np.ndarray]] = None, batch_size: Optional[int] = None,
                limits: Optional[VideoLimits] = None, cancel: Optional[threading.Event] = None,
                progress: bool = False) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """The one video scoring loop, for the CLI and the server: frames -> batches of preprocessed frames ->
    `encode` -> `predictor.proba`. `encode` maps a list of preprocessed frames to (n, D) features (default:
    the extractor in this thread; the server passes its micro-batcher).

    Returns (classes, frame indices (n,), times (n,), probabilities (n, C) in `classes` order, stats).
    """
    from tqdm import tqdm

    extractor = predictor.extractor
    encode = encode or extractor.encode_prepared
    stats: dict[str, Any] = {}
    frames = iter_frames(path, vcfg.fps, vcfg.stride, limits=limits, stats=stats, cancel=cancel)
    head = predictor.head_for(labels)
    classes = list(head.classes_)
    idx, times, probs, far = [], [], [], []
    with tqdm(unit="frame", desc="scoring frames", disable=not progress, leave=False) as bar:
        for batch in frame_batches(frames, extractor.prepare, batch_size or extractor.cfg.batch_size):
            feats = encode([x for _, _, x in batch])
            classes, p = predictor.proba(feats, labels)
            probs.append(p)
            far.append(unfamiliar_mask(head, feats))  # the head's out-of-set detector (all False without one)
            idx += [i for i, _, _ in batch]
            times += [t for _, t, _ in batch]
            bar.update(len(batch))
    scores = np.concatenate(probs) if probs else np.zeros((0, len(classes)))
    stats["unfamiliar"] = np.concatenate(far) if far else np.zeros(0, bool)
    return classes, np.asarray(idx, np.int64), np.asarray(times, np.float64), scores.astype(np.float64), stats


def rest_map(vcfg: VideoConfig, classes: Sequence[str]) -> dict[str, str]:
    """{repetitive label: its rest label} for the labels present in `classes`."""
    out = {}
    for label in vcfg.repetitive:
        rest = vcfg.rest_for.get(label, vcfg.rest_label)
        if label in classes and rest in classes and rest != label:
            out[label] = rest
    return out


def check_video_config(vcfg: VideoConfig) -> None:
    """ConfigError for settings that are valid one by one but not together."""
    if vcfg.rep_low >= vcfg.rep_high:
        raise ConfigError(f"rep_low ({vcfg.rep_low:g}) must be below rep_high ({vcfg.rep_high:g}); "
                          "e.g. --rep-low 0.4 --rep-high 0.6")


def predict_video(predictor, path: str | Path, vcfg: VideoConfig, labels: Optional[Sequence[str]] = None, *,
                  encode: Optional[Callable[[list], np.ndarray]] = None, batch_size: Optional[int] = None,
                  limits: Optional[VideoLimits] = None, cancel: Optional[threading.Event] = None,
                  progress: bool = False) -> dict[str, Any]:
    """Classify a video frame by frame: the JSON document of `clipkit predict-video` and
    `POST /v1/predict/video` (see `build_document`)."""
    check_video_config(vcfg)
    threshold = video_threshold(predictor, vcfg, labels)  # a bad label set fails before decoding
    if vcfg.unknown_label in predictor.head_for(labels).classes_:
        raise ConfigError(f"unknown_label '{vcfg.unknown_label}' is one of the labels; rejected frames need a "
                          "name of their own, e.g. 'none of these'")
    classes, idx, times, probs, stats = score_video(predictor, path, vcfg, labels, encode=encode,
                                                    batch_size=batch_size, limits=limits, cancel=cancel,
                                                    progress=progress)
    return summarize(predictor, vcfg, classes, idx, times, probs, stats, threshold)


def video_threshold(predictor, vcfg: VideoConfig, labels: Optional[Sequence[str]] = None) -> Optional[float]:
    """The "none of these" threshold for a video: vcfg.reject_below when set (0: none), else the head's own
    calibrated `reject_below` (a custom zero-shot label set has none); None: nothing is rejected."""
    return predictor.threshold(vcfg.reject_below, labels)


def summarize(predictor, vcfg: VideoConfig, classes: list[str], idx: np.ndarray, times: np.ndarray,
              probs: np.ndarray, stats: dict[str, Any], threshold: Optional[float] = None) -> dict[str, Any]:
    """Scored frames (indices (n,), times (n,), probabilities (n, C)) -> the JSON document; frames whose
    confidence is below `threshold` are rejected."""
    info: VideoInfo = stats["info"]
    end_s = info.duration_s if info.duration_s and times.size and info.duration_s >= times[-1] else None
    result = analyze(probs, times, classes, window=vcfg.window, reject_below=threshold,
                     min_segment_s=vcfg.min_segment_s, repetitive=vcfg.repetitive,
                     rest_of=rest_map(vcfg, classes), rest_gap_s=vcfg.rest_gap_s, rep_window=vcfg.rep_window,
                     rep_high=vcfg.rep_high, rep_low=vcfg.rep_low, end_s=end_s, unfamiliar=stats.get("unfamiliar"))
    multi = getattr(predictor.head, "multi_label", False)
    if multi:  # reps per repetitive label from its own series (video/multilabel.py), not from the argmax labels
        from toolkit.video.multilabel import label_reps

        events = label_reps(probs, classes, predictor.head.thresholds_, vcfg.repetitive, vcfg.rep_window,
                            vcfg.rep_high, vcfg.rep_low)
        result.update(rep_events=events, reps={k: len(v) for k, v in events.items()})
        for seg in result["segments"]:
            seg.pop("reps", None)  # argmax segments mean little here: label_segments carry the reps
    doc = build_document(predictor, info, stats, vcfg, classes, idx, times, probs, result, threshold)
    if multi:  # each label its own smoothed on/off segments
        from toolkit.video.multilabel import label_segments

        doc["label_segments"] = label_segments(result["smoothed"], times, classes, predictor.head.thresholds_,
                                               vcfg.min_segment_s, end_s, result["rep_events"])
    return doc


def build_document(predictor, info: VideoInfo, stats: dict, vcfg: VideoConfig, classes: list[str],
                   idx: np.ndarray, times: np.ndarray, probs: np.ndarray, result: dict,
                   threshold: Optional[float] = None) -> dict[str, Any]:
    """{video, model, pretrained, mode, labels, reject_below, settings, frames: [...], segments: [...], reps,
    rep_events}. `reject_below` is the threshold applied (None: no rejection). A frame has {index, time_s,
    label (None when rejected), rejected, score (its label's smoothed probability; a rejected frame's best),
    confidence (what was compared with reject_below), raw_label, scores, smoothed, rep?}."""
    ident = predictor.identity
    sm = result["smoothed"]
    far = result.get("unfamiliar", np.zeros(len(idx), bool))
    pos_of = {}
    for label, positions in result["rep_events"].items():
        for k, p in enumerate(positions, 1):
            pos_of[int(p)] = (label, k)
    frames = []
    for k in range(len(idx)):
        label = result["labels"][k]
        score = float(sm[k, classes.index(label)]) if label is not None else float(sm[k].max())
        row = {"index": int(idx[k]), "time_s": float(times[k]), "label": label, "rejected": label is None,
               "reason": None if label is not None else "unfamiliar" if far[k] else "low_confidence",
               "score": round(score, 6), "confidence": round(float(result["confidence"][k]), 6),
               "raw_label": result["raw_labels"][k],
               "scores": {c: round(float(probs[k, j]), 6) for j, c in enumerate(classes)},
               "smoothed": {c: round(float(sm[k, j]), 6) for j, c in enumerate(classes)}}
        if k in pos_of:
            row["rep"] = {"label": pos_of[k][0], "count": pos_of[k][1]}
        frames.append(row)
    segments = []
    for seg in result["segments"]:
        seg = dict(seg)
        if seg["rejected"]:  # why: most of its frames unfamiliar, else between known classes
            seg["reason"] = "unfamiliar" if far[seg["first"]:seg["last"] + 1].mean() > 0.5 else "low_confidence"
        seg["first_index"], seg["last_index"] = int(idx[seg.pop("first")]), int(idx[seg.pop("last")])
        seg["mean_score"] = round(seg["mean_score"], 6)
        segments.append(seg)
    video = asdict(info)
    video.update(path=str(info.path), decoded_frames=stats["decoded"], sampled_frames=stats["sampled"])
    return {"video": video, "model": ident.model, "pretrained": ident.pretrained, "mode": predictor.mode,
            "labels": classes, "reject_below": threshold, "settings": vcfg.model_dump(mode="json"),
            "frames": frames, "segments": segments,
            "reps": result["reps"],
            "rep_events": {lb: [{"index": int(idx[p]), "time_s": float(times[p])} for p in ps]
                           for lb, ps in result["rep_events"].items()}}
