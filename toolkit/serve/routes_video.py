"""POST /v1/predict/video: the same JSON as `clipkit predict-video --format json`, with limits.

The upload is streamed to a temporary file (413 past serve.max_video_bytes), then scored by the CLI's own
pipeline (video.predict_video) in a worker thread; the model sees each batch through the micro-batcher, so a
long video shares the model with image requests instead of holding it, and memory stays at one batch of
frames. Duration and sampled-frame limits (serve.max_video_seconds / max_video_frames) answer 422; frames
over serve.max_pixels or decoding over serve.max_video_work answer 413; all checked from the container's
header first and again while decoding.
"""
from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
from fastapi import APIRouter, File, Form, Query, Request, UploadFile

from toolkit.config import ServeConfig, VideoConfig
from toolkit.errors import ConfigError, InputError
from toolkit.video.pipeline import MAX_FPS, VideoLimits
from toolkit.serve.deps import SettingsDep, StateDep, parse_labels, public, with_deadline
from toolkit.serve.errors import ApiError
from toolkit.serve.images import display_name
from toolkit.serve.schemas import ERROR_RESPONSES

router = APIRouter(prefix="/v1", tags=["video"])

CHUNK = 1 << 20


def temp_path(folder: str, filename: Optional[str]) -> Path:
    """A path in `folder` that keeps the upload's suffix (a hint for the demuxer) and nothing else of its name."""
    suffix = Path(filename or "").suffix.lower()
    return Path(folder) / ("upload" + (suffix if suffix[1:].isalnum() and suffix.isascii() and len(suffix) <= 6
                                       else ""))


def save_upload(upload: UploadFile, max_bytes: int, path: Path) -> None:
    """Worker thread: copy the upload to `path`, 413 once it passes `max_bytes`, 400 when empty."""
    name = display_name(upload.filename, 0)
    if upload.size is not None and upload.size > max_bytes:
        raise _too_big(name, upload.size, max_bytes)
    written = 0
    upload.file.seek(0)
    with open(path, "wb") as out:
        while chunk := upload.file.read(CHUNK):
            written += len(chunk)
            if written > max_bytes:
                raise _too_big(name, written, max_bytes)
            out.write(chunk)
    if written == 0:
        raise ApiError(400, "invalid_video", f"{name!r} is empty; send a video file (mp4, mov, mkv, webm, avi)")


def _too_big(name: str, n: int, limit: int) -> ApiError:
    return ApiError(413, "file_too_large", f"{name!r} is over the {limit}-byte video limit "
                    f"(serve.max_video_bytes; got at least {n} bytes); send a shorter or smaller video")


def video_config(request: Request, **given: Any) -> VideoConfig:
    """The server's video defaults (app.state.video, else VideoConfig()) with the query's overrides; 422 if bad."""
    base: VideoConfig = getattr(request.app.state, "video", None) or VideoConfig()
    data = base.model_dump()
    data.update({k: v for k, v in given.items() if v is not None})
    if given.get("fps") is not None and given.get("stride") is not None:
        raise ApiError(422, "invalid_request", "give fps or stride, not both")
    if given.get("stride") is not None:
        data["fps"] = None  # stride replaces the default fps sampling
    try:
        vcfg = VideoConfig.model_validate(data)
        from toolkit.video.pipeline import check_video_config

        check_video_config(vcfg)
    except ConfigError as e:
        raise ApiError(422, "invalid_request", e.message) from None
    except ValueError as e:  # pydantic ValidationError
        raise ApiError(422, "invalid_request", str(e).splitlines()[0]) from None
    return vcfg


def limits_of(settings: ServeConfig) -> VideoLimits:
    """The server's per-video limits: duration, sampled frames, pixels per frame, decoded pixels in all."""
    return VideoLimits(max_seconds=settings.max_video_seconds, max_frames=settings.max_video_frames,
                       max_pixels=settings.max_pixels, max_work=settings.max_video_work)


async def run_pipeline(path: Path, vcfg: VideoConfig, labels: Optional[list[str]], state,
                       settings: ServeConfig) -> dict[str, Any]:
    """video.predict_video (the CLI's pipeline) in a worker thread, encoding through the micro-batcher so a
    long video shares the model with image requests. Leaving early (deadline, client gone) sets `cancel`,
    which stops the decoding loop at its next frame."""
    from toolkit.video.pipeline import predict_video as pipeline

    loop, cancel = asyncio.get_running_loop(), threading.Event()

    def encode(tensors: list) -> np.ndarray:
        return asyncio.run_coroutine_threadsafe(state.batcher.submit(tensors, cancel), loop).result()

    try:
        return await asyncio.to_thread(pipeline, state.predictor, path, vcfg, labels, encode=encode,
                                       batch_size=settings.max_batch_size, limits=limits_of(settings),
                                       cancel=cancel)
    finally:
        cancel.set()


@router.post("/predict/video", responses=ERROR_RESPONSES,
             summary="Classify a video frame by frame: smoothed scores, segments and repetition counts")
async def predict_video(
        request: Request, state: StateDep, settings: SettingsDep,
        file: Annotated[UploadFile, File(description="A video (MP4, MOV, MKV, WebM, AVI)")],
        labels: Annotated[Optional[list[str]], Form(description="Zero-shot only: labels instead of the default "
                                                    "ones; repeat the field or put one per line")] = None,
        fps: Annotated[Optional[float], Query(gt=0, le=MAX_FPS, allow_inf_nan=False, description=(
            f"Frames scored per second of video, at most {MAX_FPS:g} (default 10)"))] = None,
        stride: Annotated[Optional[int], Query(ge=1, le=1_000_000,
                                               description="Score every K-th frame instead of fps")] = None,
        window: Annotated[Optional[int], Query(ge=1, description="Moving-average window, in frames")] = None,
        reject_below: Annotated[Optional[float], Query(ge=0, le=1, description=(
            '"None of these": frames whose confidence (top calibrated probability, averaged over the window) is '
            "below this are rejected (label null, rejected true, their own segments, no reps); 0 rejects "
            "nothing. Default: the head's own threshold, if it has one"))] = None,
        unknown_label: Annotated[Optional[str], Query(min_length=1, max_length=200, description=(
            "The name of rejected frames, echoed in settings for display (default 'none of these')"))] = None,
        min_segment_s: Annotated[Optional[float], Query(ge=0)] = None,
        rest_gap_s: Annotated[Optional[float], Query(ge=0)] = None,
        rep_window: Annotated[Optional[int], Query(ge=1, description="Moving-average window for counting reps")
                              ] = None,
        rep_high: Annotated[Optional[float], Query(gt=0, le=1)] = None,
        rep_low: Annotated[Optional[float], Query(ge=0, lt=1)] = None) -> dict[str, Any]:
    """The same document as `clipkit predict-video --format json`: every sampled frame's raw and smoothed
    scores and label, the segments, and the repetition counts; frames rejected as "none of these" (the head's
    threshold or `reject_below`) have label null and rejected true. 413 past serve.max_video_bytes, 422 past
    serve.max_video_seconds or serve.max_video_frames, 400 for a file that isn't a decodable video."""
    from toolkit.video.pipeline import VideoLimitError, VideoTooLargeError

    vcfg = video_config(request, fps=fps, stride=stride, window=window,
                        reject_below=reject_below, unknown_label=unknown_label,
                        min_segment_s=min_segment_s, rest_gap_s=rest_gap_s, rep_window=rep_window,
                        rep_high=rep_high, rep_low=rep_low)
    label_list = parse_labels(labels, settings)
    # bad labels fail before decoding; the label set's head is then cached, so the pipeline's thread never
    # encodes texts beside the model thread; a new set waits in the text lane (serve/text.py)
    await with_deadline(state.text.head_for(label_list), settings)
    folder = tempfile.mkdtemp(prefix="clipkit-video-")
    path, name = temp_path(folder, file.filename), display_name(file.filename, 0)
    try:
        await asyncio.to_thread(save_upload, file, settings.max_video_bytes, path)
        doc = await with_deadline(run_pipeline(path, vcfg, label_list, state, settings), settings,
                                  "video_timeout_s")
    except InputError as e:  # messages name our temporary file: name the upload instead
        message = e.message.replace(str(path), name).replace(path.name, name)
        if isinstance(e, VideoLimitError):
            raise ApiError(422, "video_too_long", message) from None
        if isinstance(e, VideoTooLargeError):
            raise ApiError(413, "video_too_large", message) from None
        raise ApiError(400, "invalid_video", message) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    doc["video"]["path"] = name
    doc.update(public({"model": doc["model"], "pretrained": doc["pretrained"]}))  # no server folders
    return doc
