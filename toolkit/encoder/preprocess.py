"""open_clip's inference preprocessing in PIL + numpy, for the fast path (no torch, no torchvision).

A `PreprocessSpec` is read once from the model's torchvision transform (`spec_from_transform`, on the torch
side, when the fast path is prepared) and saved as plain data; `preprocess` then repeats the same PIL calls
torchvision makes (the resize size rule, PIL's own resampling, the centre-crop rounding) and the ToTensor +
Normalize float32 arithmetic, so the (3, H, W) arrays equal the torch transform's (tests/test_fast_path.py).
Transforms of another shape give no spec, and those models keep the torch path.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
from PIL import Image

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


@dataclass(frozen=True)
class PreprocessSpec:
    """resize "shortest" (shorter side to `resize[0]`, aspect kept) or "squash" (to `resize` = [h, w]), then
    an optional centre crop to `crop` = [h, w], then (x / 255 - mean) / std per channel."""

    resize_mode: str
    resize: list[int]
    interpolation: str
    crop: Optional[list[int]]
    mean: list[float]
    std: list[float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PreprocessSpec":
        return cls(**d)


def spec_from_transform(transform: Callable) -> Optional[PreprocessSpec]:
    """The spec of an open_clip eval transform [Resize, (CenterCrop), (MaybeConvertMode), ToTensor, Normalize];
    None for any other shape (the fast path then doesn't apply)."""
    from torchvision.transforms import CenterCrop, InterpolationMode, Normalize, Resize, ToTensor

    steps = list(getattr(transform, "transforms", None) or [])
    steps = [s for s in steps if type(s).__name__ != "MaybeConvertMode"]  # a no-op on RGB images
    if len(steps) < 3 or not isinstance(steps[0], Resize) or not isinstance(steps[-2], ToTensor) \
            or not isinstance(steps[-1], Normalize) or len(steps) > 4:
        return None
    resize, norm = steps[0], steps[-1]
    modes = {InterpolationMode.BICUBIC: "bicubic", InterpolationMode.BILINEAR: "bilinear"}
    if resize.interpolation not in modes or resize.max_size is not None or resize.antialias is False:
        return None
    size = [resize.size] if isinstance(resize.size, int) else list(resize.size)
    crop = None
    if len(steps) == 4:
        if not isinstance(steps[1], CenterCrop):
            return None
        crop = [int(s) for s in steps[1].size]
    return PreprocessSpec("shortest" if len(size) == 1 else "squash", [int(s) for s in size],
                          modes[resize.interpolation], crop, [float(m) for m in norm.mean], [float(s) for s in norm.std])


def resized_size(w: int, h: int, spec: PreprocessSpec) -> tuple[int, int]:
    """(width, height) after the resize step, with torchvision's rounding (`_compute_resized_output_size`)."""
    if spec.resize_mode == "squash":
        return spec.resize[1], spec.resize[0]
    target = spec.resize[0]
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = target, int(target * long / short)
    return (new_short, new_long) if w <= h else (new_long, new_short)


def pil_steps(img: Image.Image, spec: PreprocessSpec) -> Image.Image:
    """Resize and crop an RGB image as the torch transform does."""
    size = resized_size(img.width, img.height, spec)
    if size != img.size:
        img = img.resize(size, _RESAMPLE[spec.interpolation])
    if spec.crop is not None:
        ch, cw = spec.crop
        if ch > img.height or cw > img.width:
            raise ValueError(f"image {img.size} smaller than the crop {spec.crop} after resizing")
        top, left = int(round((img.height - ch) / 2.0)), int(round((img.width - cw) / 2.0))
        img = img.crop((left, top, left + cw, top + ch))
    return img


def to_uint8(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """RGB PIL image -> (3, H, W) uint8, resized and cropped."""
    arr = np.asarray(pil_steps(img, spec), dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB image after preprocessing, got shape {arr.shape}")
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def normalize(batch: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """(n, 3, H, W) uint8 -> float32, (x / 255 - mean) / std with float32 operations as ToTensor + Normalize."""
    mean = np.asarray(spec.mean, np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(spec.std, np.float32).reshape(1, -1, 1, 1)
    x = batch.astype(np.float32) / np.float32(255)
    return (x - mean) / std


def preprocess(images: Sequence[Image.Image], spec: PreprocessSpec) -> np.ndarray:
    """RGB PIL images -> (n, 3, H, W) float32, what the model's torch transform gives, stacked."""
    return normalize(np.stack([to_uint8(im, spec) for im in images]), spec)
