"""Response models (they are the OpenAPI schema at /docs)."""
from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    status: int = Field(examples=[413])
    code: str = Field(examples=["too_many_pixels"])
    message: str = Field(examples=["'bomb.png' is 50000x50000 = 2500000000 pixels, over the 40000000-pixel limit"])


class ErrorResponse(BaseModel):
    """Every error, whatever its status."""

    error: ErrorBody


class LabelScore(BaseModel):
    label: str
    score: float


class ImageResult(BaseModel):
    path: str = Field(description="The uploaded file's name, as sent (display only); `path` as in the CLI's output")
    label: Optional[str] = Field(description="The best label; null when rejected (\"none of these\")")
    score: float = Field(description="The best label's probability (calibrated: the head's temperature applied)")
    rejected: bool = Field(False, description="True when the best probability is below the threshold "
                                              "(`reject_below`): the image is none of the labels")
    reason: Optional[str] = Field(None, description="Why it was rejected: \"unfamiliar\" (the head's out-of-set "
                                  "detector: far from everything it knows) or \"low_confidence\" (best "
                                  "probability below reject_below: between known classes); null when accepted")
    scores: dict[str, float] = Field(description="Probability per label, in the head's label order; sums to 1")
    top_k: list[LabelScore] = Field(description="The top_k labels, best first")
    labels: Optional[list[str]] = Field(None, description="Multi-label heads only: every label whose probability "
                                        "reaches its own threshold (possibly none); scores are then independent")


class PredictResponse(BaseModel):
    model: str
    pretrained: Optional[str]
    mode: str = Field(description="zeroshot or probe")
    labels: list[str] = Field(description="The labels scored, in order")
    reject_below: Optional[float] = Field(None, description="The \"none of these\" threshold applied (the "
                                          "request's reject_below, else the head's); null: nothing is rejected")
    unfamiliar: Optional[dict[str, Any]] = Field(None, description="The out-of-set detector applied, in brief: "
                                                 "{detector, threshold, rule} (rule zeroshot_default: the default "
                                                 "for labels without images); null: none, nothing is rejected as "
                                                 "unfamiliar")
    results: list[ImageResult] = Field(description="One per uploaded file, in upload order")


class EmbedResult(BaseModel):
    path: str = Field(description="The uploaded file's name, as sent")
    embedding: list[float] = Field(description="L2-normalized image embedding, length `dim`")


class EmbedResponse(BaseModel):
    model: str
    pretrained: Optional[str]
    dim: int
    results: list[EmbedResult]


class InfoResponse(BaseModel):
    mode: str
    model: str
    pretrained: Optional[str]
    identity: dict[str, Any] = Field(description="What makes features comparable (model, weights hash, ...)")
    labels: list[str]
    head: dict[str, Any] = Field(description="Zero-shot: templates and logit scale. Probe: its training metadata")
    limits: dict[str, Any]
    batching: dict[str, Any]
    version: str


class Health(BaseModel):
    status: str = Field(examples=["ok", "ready"])


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text} for status, text in {
        400: "Empty or corrupt image", 401: "API key missing or wrong", 413: "Too large: bytes, pixels or files",
        415: "Not a JPEG, PNG, WebP, BMP or GIF image", 422: "Bad labels or form fields",
        503: "Overloaded (Retry-After), loading, or shutting down", 504: "Deadline exceeded",
    }.items()
}
