"""Upload validation: untrusted bytes -> an RGB image, or an ApiError naming the file and the fix.

Order matters for safety: size (before anything), format sniffed from the magic bytes (so only the
decoders we mean to accept ever see the data: no TIFF, PDF, SVG, ...), pixel count from the header (before
any pixel is decoded, so a decompression bomb costs nothing), then the decode of the first frame only, by
the same conversion as `clipkit predict` (`images.decode_opened`: 16-bit, CMYK, alpha on white, EXIF).
"""
from __future__ import annotations

import io
from typing import Optional

from PIL import Image

from toolkit.encoder.images import container_format, decode_opened, register_plugins
from toolkit.serve.errors import ApiError

_ACCEPTED_TEXT = "JPEG, PNG, WebP, BMP, GIF, HEIC/HEIF or AVIF"
_DECODER_HINT = {"HEIF": "pillow-heif is not installed on the server",
                 "AVIF": "the server's Pillow has no AVIF decoder"}


def display_name(name: Optional[str], index: int) -> str:
    """A client's filename for messages only (never used as a path): printable, at most 80 characters."""
    clean = "".join(c if c.isprintable() else "?" for c in (name or ""))[:80]
    return clean or f"file #{index + 1}"


def sniff_format(data: bytes) -> Optional[str]:
    """The PIL format name of an accepted image from its first bytes, or None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data.startswith(b"BM"):
        return "BMP"
    return container_format(data[:64])  # "HEIF" (HEIC) or "AVIF", or None


def check_size(n_bytes: int, name: str, max_bytes: int) -> None:
    if n_bytes > max_bytes:
        raise ApiError(413, "file_too_large", f"{name!r} is {n_bytes} bytes, over the {max_bytes}-byte limit "
                       "(serve.max_upload_bytes); send a smaller image")


def decode_image(data: bytes, name: str, max_pixels: int, min_side: Optional[int] = None) -> Image.Image:
    """Bytes of one upload -> RGB image (first frame of a GIF/WebP/PNG, EXIF orientation applied).

    min_side: the extractor's reduced-size JPEG decode (`images.draft_for`, as its own file loading does), so
    that the server sees the same pixels as `clipkit predict`.
    Raises ApiError: 400 empty or corrupt, 413 too many pixels, 415 not an accepted format.
    """
    if not data:
        raise ApiError(400, "empty_file", f"{name!r} is empty; upload a {_ACCEPTED_TEXT} image")
    fmt = sniff_format(data)
    if fmt is None:
        raise ApiError(415, "unsupported_media_type", f"{name!r} is not a {_ACCEPTED_TEXT} image "
                       f"(it starts with {data[:8]!r}); convert it to one of those formats")
    if fmt not in register_plugins() and fmt in _DECODER_HINT:
        raise ApiError(415, "unsupported_media_type", f"{name!r} is {fmt} but {_DECODER_HINT[fmt]}; "
                       "convert it to JPEG or PNG")
    try:
        im = Image.open(io.BytesIO(data), formats=[fmt])  # reads the header only
    except Image.DecompressionBombError:
        raise ApiError(413, "too_many_pixels", f"{name!r} declares more pixels than allowed; "
                       f"send at most {max_pixels} pixels (serve.max_pixels)") from None
    except Exception as e:  # broken header: UnidentifiedImageError, SyntaxError, struct.error, ...
        raise _corrupt(name, fmt, e) from None
    width, height = im.size
    if width * height > max_pixels:
        raise ApiError(413, "too_many_pixels", f"{name!r} is {width}x{height} = {width * height} pixels, over "
                       f"the {max_pixels}-pixel limit (serve.max_pixels); downscale it before uploading")
    if width < 1 or height < 1:
        raise ApiError(400, "corrupt_image", f"{name!r} has no pixels ({width}x{height}); upload a real image")
    try:
        return decode_opened(im, min_side)  # the current (first) frame only
    except Exception as e:  # truncated data, bad compressed stream, ...
        raise _corrupt(name, fmt, e) from None


def _corrupt(name: str, fmt: str, e: Exception) -> ApiError:
    detail = str(e).splitlines()[0][:120] if str(e) else e.__class__.__name__
    return ApiError(400, "corrupt_image", f"{name!r} looks like {fmt} but can't be decoded ({detail}); "
                    "re-export the image and upload it again")
