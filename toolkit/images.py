"""Image files -> RGB PIL images, with one-line errors naming the file. PIL only (no torch)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

from PIL import Image, ImageOps

from .errors import InputError


def load_image(path: str | Path, min_side: Optional[int] = None) -> Image.Image:
    """Open an image file as RGB, honouring EXIF orientation; InputError names the file on failure.

    min_side: a JPEG may be decoded at 1/2, 1/4 or 1/8 scale as long as its shorter side stays >= min_side
    (PIL's `draft`); the model's preprocessing then yields a tensor of the same size, 2-4x sooner.
    """
    try:
        with Image.open(path) as im:
            draft_for(im, min_side)
            im.load()
            ImageOps.exif_transpose(im, in_place=True)  # no full-size copy when there is nothing to rotate
            return to_rgb(im)
    except FileNotFoundError:
        raise InputError(f"image '{path}' not found; check the path") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise InputError(f"'{path}' is not a readable image ({e.__class__.__name__}: {e})") from None


def to_rgb(im: Image.Image) -> Image.Image:
    """The image in RGB; itself when it already is (convert() would copy it)."""
    return im if im.mode == "RGB" else im.convert("RGB")


def draft_for(im: Image.Image, min_side: Optional[int]) -> None:
    """Ask the JPEG decoder for its smallest DCT scale (1/2, 1/4, 1/8) whose shorter side stays >= min_side.

    Decoding a 640x480 JPEG for a 224 px model then decodes 320x240: a quarter of the pixels, and the bicubic
    resize that follows starts from a smaller image. The preprocessed tensor keeps its size; its values differ
    slightly (DCT-domain downscaling before the bicubic one), see BENCHMARKS.md for the effect on embeddings.
    """
    if not min_side or getattr(im, "format", None) != "JPEG":
        return
    w, h = im.size
    scale = min_side / min(w, h)
    if scale <= 0.5:  # the mildest JPEG reduction is 1/2
        im.draft(im.mode, (math.ceil(w * scale), math.ceil(h * scale)))
