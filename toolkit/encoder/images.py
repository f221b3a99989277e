"""Image files -> RGB PIL images, with one-line errors naming the file. PIL and numpy only (no torch).

Formats: what Pillow opens (JPEG, PNG/APNG, WebP, GIF, BMP, TIFF, and AVIF where Pillow has its AVIF plugin),
plus HEIC/HEIF (every iPhone photo) through pillow-heif, registered as a Pillow opener at the first image
opened (`register_plugins`). Every image ends as 8-bit RGB the way a viewer shows it (`to_rgb`):

    16-bit greyscale (I;16*)   scaled by its type's range: value / 257 (65535 -> 255), never clipped to white
    32-bit int / float (I, F)  scaled by the values' range: floats within [0, 1] x 255; values within [0, 255]
                               as they are; within [0, 65535] / 257; anything else stretched min..max to 0..255
    CMYK                       through its embedded ICC profile when it has one, else Pillow's conversion
    alpha / transparency       composited on white (LA, RGBA, PA, P or L or RGB with a transparent colour)
    EXIF orientation           applied; animated GIF / WebP / APNG: the first frame
"""
from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, ImageOps

from toolkit.errors import InputError

HEIF_SUFFIXES = (".heic", ".heif", ".hif")
# ISO-BMFF `ftyp` brands (major or compatible) of HEIC/HEIF and AVIF still images and sequences
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs"}
_AVIF_BRANDS = {b"avif", b"avis"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_WHITE = (255, 255, 255)
# longer side / shorter side: 100:1 resized to a 224-pixel model input is 22400x224 (15 MB) before the crop
MAX_ASPECT_RATIO = 100.0


@functools.lru_cache(maxsize=None)
def register_plugins() -> frozenset[str]:
    """Register the optional decoders once per process; returns the optional formats now readable, among
    "HEIF" (pillow-heif) and "AVIF" (Pillow's own plugin, else an older pillow-heif's)."""
    from PIL import features

    try:
        import pillow_heif
    except ImportError:
        pillow_heif = None
    found = set()
    if pillow_heif is not None:
        # no thumbnails, depth or auxiliary images: only the primary image is ever used
        pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)
        found.add("HEIF")
    if "avif" in features.modules and features.check_module("avif"):
        found.add("AVIF")
    elif pillow_heif is not None and hasattr(pillow_heif, "register_avif_opener"):  # pillow-heif < 1.0
        try:
            pillow_heif.register_avif_opener()
            found.add("AVIF")
        except Exception:  # built without an AVIF decoder
            pass
    return frozenset(found)


def container_format(head: bytes) -> Optional[str]:
    """"HEIF" or "AVIF" from a file's first bytes (at least 32): the ISO-BMFF `ftyp` box's brands; else None."""
    if len(head) < 12 or head[4:8] != b"ftyp":
        return None
    size = int.from_bytes(head[:4], "big")
    major = head[8:12]
    compatible = [head[i:i + 4] for i in range(16, min(size, len(head)) - 3, 4)]
    for brands in ([major], compatible):  # the major brand decides; a generic one (mif1) defers to the rest
        if any(b in _AVIF_BRANDS for b in brands):
            return "AVIF"
        if any(b in _HEIF_BRANDS for b in brands):
            return "HEIF"
    return None


def load_image(path: str | Path, min_side: Optional[int] = None) -> Image.Image:
    """Open an image file as RGB (see the module docstring); InputError, one line naming the file, on failure.

    min_side: a JPEG may be decoded at 1/2, 1/4 or 1/8 scale as long as its shorter side stays >= min_side
    (PIL's `draft`); the model's preprocessing then yields a tensor of the same size, 2-4x sooner.
    """
    register_plugins()
    try:
        with Image.open(path) as im:
            return decode_opened(im, min_side)
    except Image.UnidentifiedImageError:
        raise InputError(_unidentified(path)) from None
    except ImageShapeError as e:
        raise InputError(f"'{path}' {e}") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise InputError(_unreadable(path, e)) from None


class ImageShapeError(ValueError):
    """An image too thin (or too long) to be resized for a model without inflating it."""


def check_shape(width: int, height: int, max_aspect_ratio: float = MAX_ASPECT_RATIO,
                model_side: Optional[int] = None, max_resized_pixels: Optional[int] = None) -> None:
    """Refuse (ImageShapeError) an image whose longer side is over `max_aspect_ratio` times its shorter one, or,
    given the model's input side, whose size after resizing its shorter side to it is over `max_resized_pixels`.

    The pixel count alone misses thin images: 100000x1 is 1e5 pixels, but resized to a 224-pixel shorter side
    it is 22400000x224 (5e9 pixels, 15 GB) before the centre crop."""
    short, long = min(width, height), max(width, height)
    if short < 1:
        return  # no pixels: the callers say so in their own words
    if long > max_aspect_ratio * short:
        raise ImageShapeError(f"is {width}x{height}, an aspect ratio of {long / short:.0f}:1, over the limit of "
                              f"{max_aspect_ratio:g}:1; crop it closer to square")
    if model_side and max_resized_pixels:
        resized = model_side * model_side * long / short
        if resized > max_resized_pixels:
            raise ImageShapeError(f"is {width}x{height}, {resized:.0f} pixels once resized to the model's "
                                  f"{model_side}-pixel input, over the limit of {max_resized_pixels}; crop it "
                                  "closer to square")


def decode_opened(im: Image.Image, min_side: Optional[int] = None,
                  max_aspect_ratio: float = MAX_ASPECT_RATIO) -> Image.Image:
    """An opened image (only its header read) -> decoded RGB: the current (first) frame, at a reduced JPEG
    scale where `min_side` allows (`draft_for`), EXIF orientation applied, then `to_rgb`. Its shape is checked
    before any pixel is decoded (`check_shape`: ImageShapeError).
    The one decoding path of both file loading and the server's uploads."""
    check_shape(*im.size, max_aspect_ratio)
    draft_for(im, min_side)
    im.load()
    ImageOps.exif_transpose(im, in_place=True)  # no full-size copy when there is nothing to rotate
    return to_rgb(im)


def to_rgb(im: Image.Image) -> Image.Image:
    """The image as 8-bit RGB as a viewer shows it (see the module docstring); itself when it already is."""
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im  # convert() would copy it
    if mode.startswith("I") or mode == "F":
        return _deep_grey(im)
    if mode in _ALPHA_MODES or "transparency" in im.info:
        return _on_white(im)
    if mode == "CMYK":
        return _cmyk(im)
    return im.convert("RGB")


def _deep_grey(im: Image.Image) -> Image.Image:
    """16/32-bit integer or float greyscale -> 8-bit RGB, scaled by its range (never clipped)."""
    a = np.asarray(im)
    if im.mode.startswith("I;16"):  # the type's range: round(v * 255 / 65535) = round(v / 257), exactly
        grey = ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    a = a.astype(np.float64 if a.dtype.itemsize > 4 or im.mode == "I" else np.float32)
    finite = np.isfinite(a)
    a = np.where(finite, a, 0)  # NaN and inf as black
    lo, hi = (float(a[finite].min()), float(a[finite].max())) if finite.any() else (0.0, 0.0)
    if lo >= 0 and hi <= 1 and im.mode == "F":
        a = a * 255
    elif lo >= 0 and hi <= 255:
        pass
    elif lo >= 0 and hi <= 65535:
        a = a / 257
    else:
        a = (a - lo) * (255 / (hi - lo))
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8)).convert("RGB")


def _on_white(im: Image.Image) -> Image.Image:
    """Composite on white: what a transparent area looks like on a page (black would be a guess too, but a
    darker one; CLIP's web images were mostly shown on white)."""
    rgba = im.convert("RGBA")  # applies a P/L/RGB transparent colour, un-premultiplies RGBa
    out = Image.new("RGB", im.size, _WHITE)
    out.paste(rgba, mask=rgba.getchannel("A"))
    return out


def _cmyk(im: Image.Image) -> Image.Image:
    icc = im.info.get("icc_profile")
    if icc:
        try:
            import io

            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except Exception:  # a damaged profile or Pillow without littlecms: the plain conversion below
            pass
    return im.convert("RGB")


def _unidentified(path: str | Path) -> str:
    """Why Pillow recognised no format: a known container whose decoder is missing, or not an image at all."""
    try:
        with open(path, "rb") as f:
            fmt = container_format(f.read(64))
    except OSError:
        fmt = None
    if fmt is None and str(path).lower().endswith(HEIF_SUFFIXES):
        fmt = "HEIF"
    if fmt == "HEIF" and "HEIF" not in register_plugins():
        return f"'{path}' is a HEIC/HEIF image and pillow-heif is not installed; `pip install pillow-heif` reads it"
    if fmt == "AVIF" and "AVIF" not in register_plugins():
        return (f"'{path}' is an AVIF image and this Pillow has no AVIF decoder; "
                "`pip install -U pillow` (11.3+) reads it")
    return f"'{path}' is not a readable image (no image format recognised); check that it is an image file"


def _unreadable(path: str | Path, e: BaseException) -> str:
    if os.path.islink(path) and not os.path.exists(path):
        return f"'{path}' is a broken symbolic link to '{os.readlink(path)}'; fix or remove the link"
    if isinstance(e, FileNotFoundError):
        return f"image '{path}' not found; check the path"
    if isinstance(e, IsADirectoryError) or os.path.isdir(path):
        if not os.access(path, os.R_OK | os.X_OK):
            return f"folder '{path}' can't be searched for images (permission denied); fix its permissions"
        return f"'{path}' is a folder, not an image file; pass the folder itself to search it"
    detail = (str(e).splitlines() or [""])[0][:200]
    return f"'{path}' is not a readable image ({e.__class__.__name__}: {detail})"


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
