"""POST /v1/predict, POST /v1/embed, GET /v1/info."""
from __future__ import annotations

import asyncio
import threading
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any, Callable, Optional

import numpy as np
from fastapi import APIRouter, File, Form, UploadFile

from toolkit.config import ServeConfig
from toolkit.predictor import image_document
from toolkit.serve.batcher import Cancelled
from toolkit.serve.deps import (SettingsDep, StateDep, parse_labels, public, read_uploads, request_cancel,
                                with_deadline)
from toolkit.serve.decode import DecodeBudget
from toolkit.serve.images import decode_image
from toolkit.serve.schemas import ERROR_RESPONSES, EmbedResponse, InfoResponse, PredictResponse
from toolkit.serve.state import ServiceState

router = APIRouter(prefix="/v1", tags=["classify"])

FilesField = Annotated[list[UploadFile], File(description="One or more images (JPEG, PNG, WebP, BMP, GIF)")]


def _to_tensors(uploads: list[tuple[str, bytes]], prepare: Callable, settings: ServeConfig,
                min_side: Optional[int], model_side: int, cancel: threading.Event) -> list:
    """Worker thread: validate and decode each upload, then preprocess; one full-size image in memory at a time.
    Decode work and seconds count against one budget for the request (decode.py). Stops (Cancelled) at the
    next image, or the next chunk of a decode, once the request is cancelled."""
    budget = DecodeBudget(settings.max_jpeg_scans, settings.max_decode_work, settings.decode_timeout_s, cancel)
    out = []
    for name, data in uploads:
        if cancel.is_set():
            raise Cancelled()
        image = decode_image(data, name, settings.max_pixels, min_side, budget, settings.max_aspect_ratio,
                             model_side)
        out.append(prepare(image))
    return out


async def encode_uploads(uploads: list[tuple[str, bytes]], state: ServiceState) -> np.ndarray:
    """(name, bytes) uploads -> (n, D) L2-normalized embeddings, through the micro-batcher."""
    extractor, cancel = state.predictor.extractor, request_cancel()
    tensors = await asyncio.to_thread(_to_tensors, uploads, extractor.prepare, state.settings,
                                      extractor.min_decode_side, max(extractor.identity.image_size), cancel)
    return await state.batcher.submit(tensors, cancel)


def _model_fields(state: ServiceState) -> dict[str, Any]:
    ident = state.predictor.extractor.identity
    return public({"model": ident.model, "pretrained": ident.pretrained})


def _public_info(info: dict[str, Any]) -> dict[str, Any]:
    """Predictor.info() without the server's folders: paths cut to file names; labels and templates as they are
    (they are text, whatever their first character)."""
    keep = ("labels", "templates")
    head = {k: v if k in keep else public(v) for k, v in info.get("head", {}).items()}
    return {**{k: v if k in keep else public(v) for k, v in info.items()}, "head": head}


@router.post("/predict", response_model=PredictResponse, responses=ERROR_RESPONSES,
             summary="Classify images: the best label and every label's probability")
async def predict(files: FilesField, state: StateDep, settings: SettingsDep,
                  labels: Annotated[Optional[list[str]], Form(
                      description="Zero-shot only: labels to score instead of the default ones; repeat the field "
                                  "or put one label per line")] = None,
                  top_k: Annotated[Optional[int], Form(ge=1, description="How many labels in `top_k` "
                                                       "(default: all)")] = None,
                  reject_below: Annotated[Optional[float], Form(
                      ge=0, le=1, allow_inf_nan=False, description="Reject (label null, rejected true) an image whose best probability "
                                              "is below this; 0 rejects nothing (default: the head's threshold)")
                  ] = None) -> dict[str, Any]:
    """The same numbers as `clipkit predict --format json` on the same files, labels and threshold."""
    label_list = parse_labels(labels, settings)
    predictor = state.predictor

    async def work():
        # bad labels fail before any image work; a label set already encoded never waits for text work
        head = await state.text.head_for(label_list)
        threshold = predictor.threshold(reject_below, label_list)
        uploads = await read_uploads(files, settings)
        feats = await encode_uploads(uploads, state)
        # scoring needs no model: off the model thread, with the head in hand (the cache may move on meanwhile)
        rows = await asyncio.to_thread(predictor.predict_features, feats, top_k, label_list, reject_below, head)
        return head, threshold, uploads, rows

    head, threshold, uploads, rows = await with_deadline(work(), settings)
    doc = image_document(predictor, [{"path": name, **row} for (name, _), row in zip(uploads, rows)], label_list,
                         threshold, head=head)
    return {**doc, **_model_fields(state)}


@router.post("/embed", response_model=EmbedResponse, responses=ERROR_RESPONSES,
             summary="L2-normalized image embeddings")
async def embed(files: FilesField, state: StateDep, settings: SettingsDep) -> dict[str, Any]:
    async def work():
        uploads = await read_uploads(files, settings)
        return uploads, await encode_uploads(uploads, state)

    uploads, feats = await with_deadline(work(), settings)
    return {**_model_fields(state), "dim": int(feats.shape[1]),
            "results": [{"path": name, "embedding": row.tolist()} for (name, _), row in zip(uploads, feats)]}


@router.get("/info", response_model=InfoResponse, responses=ERROR_RESPONSES,
            summary="Model identity, mode, labels, templates or head metadata, limits")
async def info(state: StateDep) -> dict[str, Any]:
    s = state.settings
    try:
        ver = version("clipkit")
    except PackageNotFoundError:
        ver = "unknown"
    return {**_public_info(state.predictor.info()), "version": ver,
            "limits": {"max_files": s.max_files, "max_upload_bytes": s.max_upload_bytes,
                       "max_request_bytes": s.max_request_bytes, "max_pixels": s.max_pixels,
                       "max_labels": s.max_labels, "max_label_chars": s.max_label_chars,
                       "request_timeout_s": s.request_timeout_s, "formats": ["JPEG", "PNG", "WebP", "BMP", "GIF"]},
            "batching": {"micro_batching": s.micro_batching, "max_batch_size": s.max_batch_size,
                         "max_wait_ms": s.max_wait_ms, "queue_size": s.queue_size}}
