"""Upload validation: untrusted bytes -> an RGB image, or an ApiError naming the file and the fix.

Order matters for safety: size (before anything), format sniffed from the magic bytes (so only the
decoders we mean to accept ever see the data: no TIFF, PDF, SVG, ...), pixel count from the header (before
any pixel is decoded, so a decompression bomb costs nothing), the shape (aspect ratio and size once resized
for the model, so a 100000x1 image can't inflate), the decode work (JPEG scans, pixels x scans against the
request's budget: decode.py), then the decode of the first frame only, stoppable at each chunk read, by the
same conversion as `clipkit predict` (`images.decode_opened`: 16-bit, CMYK, alpha on white, EXIF).
"""
from __future__ import annotations

import io
from typing import Optional

from PIL import Image

from toolkit.encoder.images import (MAX_ASPECT_RATIO, ImageShapeError, check_shape, container_format, decode_opened,
                                    register_plugins)
from toolkit.serve.batcher import Cancelled
from toolkit.serve.decode import (CHUNK_BYTES, SCAN_CHUNK_BYTES, DecodeBudget, DecodeStopped, StoppableReader,
                                  jpeg_scans)
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


def decode_image(data: bytes, name: str, max_pixels: int, min_side: Optional[int] = None,
                 budget: Optional[DecodeBudget] = None, max_aspect_ratio: float = MAX_ASPECT_RATIO,
                 model_side: Optional[int] = None) -> Image.Image:
    """Bytes of one upload -> RGB image (first frame of a GIF/WebP/PNG, EXIF orientation applied).

    min_side: the extractor's reduced-size JPEG decode (`images.draft_for`, as its own file loading does), so
    that the server sees the same pixels as `clipkit predict`.
    budget: the request's decode allowance (see decode.py): scans and pixels x scans are charged before the
    decode, which stops at its next read once the budget's seconds are spent or the request is cancelled.
    model_side: the model's input side; with max_aspect_ratio it bounds the image's size after resizing.
    Raises ApiError: 400 empty or corrupt, 413 too many pixels, scans, decode work or seconds, or too thin;
    415 not an accepted format. Cancelled when the request was cancelled during the decode.
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
    reader = StoppableReader(data, budget) if budget is not None else io.BytesIO(data)
    try:
        im = Image.open(reader, formats=[fmt])  # reads the header only
    except DecodeStopped as e:
        raise _stopped(e, name, budget) from None
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
        check_shape(width, height, max_aspect_ratio, model_side, max_pixels)
    except ImageShapeError as e:
        raise ApiError(413, "bad_aspect_ratio", f"{name!r} {e} (serve.max_aspect_ratio)") from None
    if budget is not None:
        scans = _charge(budget, name, fmt, data, width * height)
        # a scan can cost a walk over the whole image in a few bytes: read multi-scan JPEGs in small chunks
        im.decodermaxblock = SCAN_CHUNK_BYTES if scans > 1 else CHUNK_BYTES
    try:
        return decode_opened(im, min_side, max_aspect_ratio)  # the current (first) frame only
    except DecodeStopped as e:
        raise _stopped(e, name, budget) from None
    except Exception as e:  # truncated data, bad compressed stream, ...
        raise _corrupt(name, fmt, e) from None
    finally:
        if budget is not None:
            budget.spent_s += reader.elapsed()


def _stopped(e: DecodeStopped, name: str, budget: DecodeBudget) -> Exception:
    if not e.timed_out:
        return Cancelled()
    return ApiError(413, "decode_too_slow", f"{name!r} took over {budget.seconds:g}s to decode with the "
                    "request's other images (serve.decode_timeout_s); re-encode it (baseline JPEG or PNG) or "
                    "send fewer images per request")


def _charge(budget: DecodeBudget, name: str, fmt: str, data: bytes, pixels: int) -> int:
    """Charge an image's decode work (pixels x scans) to the request's budget, or refuse it (413); -> scans."""
    scans = 1
    if fmt == "JPEG":
        scans = max(1, jpeg_scans(data, budget.max_scans))
        if scans > budget.max_scans:
            raise ApiError(413, "too_many_scans", f"{name!r} is a JPEG of more than {budget.max_scans} scans "
                           "(serve.max_jpeg_scans; a normal progressive JPEG has about 10); re-encode it as a "
                           "baseline JPEG or PNG")
    work = float(pixels) * scans
    if work > budget.work_left:
        raise ApiError(413, "too_much_decode_work", f"{name!r} ({pixels} pixels x {scans} scans) goes over the "
                       "request's decode work limit (serve.max_decode_work, pixels x scans summed over its "
                       "images); send fewer or smaller images per request, or re-encode them as baseline JPEG")
    budget.work_left -= work
    return scans


def _corrupt(name: str, fmt: str, e: Exception) -> ApiError:
    detail = str(e).splitlines()[0][:120] if str(e) else e.__class__.__name__
    return ApiError(400, "corrupt_image", f"{name!r} looks like {fmt} but can't be decoded ({detail}); "
                    "re-export the image and upload it again")
