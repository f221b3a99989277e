"""The annotated copy of a video (`clipkit predict-video --annotate`): each frame's label, score and rep count
drawn in a band at the top, the text fitted to the frame's width.

Fitting (`overlay_layout`): the largest font from height // 14 down to FONT_FLOOR px with which the text fits,
on one line ("label  0.87  reps 3") or, failing that at the same size, on two (the label, then score and
reps). At the floor, the label loses its leading words first ("…repeating a squat", "…a squat": labels share
their start, "a person ..."), then characters, behind an ellipsis; the score and the rep count are always
drawn whole.
"""
from __future__ import annotations

import bisect
import functools
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Optional

from PIL import Image

from toolkit import fsio
from toolkit.errors import InputError

FONT_FLOOR = 8  # px: the smallest font the text shrinks to (Pillow's built-in Aileron, still legible)
MARGIN = 3  # px around the text
BAR = 3  # px: the score bar along the bottom of the band
GAP = "  "  # between label, score and reps on one line
MAX_BAND = 0.2  # the band covers at most this share of the frame's height (a fifth: 32 px of a 160 px frame),
# so the figure under it stays visible; below that the text shrinks, and only at FONT_FLOOR may the band exceed it
ELLIPSIS = "\u2026"


@functools.lru_cache(maxsize=64)
def font(size: int):
    """Pillow's built-in font at `size` px (a fixed bitmap font where Pillow has no FreeType)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def text_width(text: str, fnt) -> int:
    """Pixels from the pen position to the right edge of the drawn text."""
    return int(max(fnt.getlength(text), fnt.getbbox(text)[2])) + 1 if text else 0


@dataclass(frozen=True)
class Piece:
    role: str  # "label" | "score" | "reps"
    text: str
    xy: tuple[int, int]  # where the text is drawn (left, top of the line)


@dataclass(frozen=True)
class OverlayLayout:
    font_size: int
    band: int  # height of the dark band in px, score bar included
    pieces: tuple[Piece, ...]


def _line_height(fnt) -> int:
    ascent, descent = fnt.getmetrics()
    return ascent + descent


def _place(lines: list[list[tuple[str, str]]], size: int) -> OverlayLayout:
    """(role, text) pieces laid out left to right, line by line, in the font of `size` px."""
    fnt = font(size)
    step, pieces = _line_height(fnt), []
    for k, line in enumerate(lines):
        x = MARGIN
        for role, text in line:
            pieces.append(Piece(role, text, (x, MARGIN + k * step)))
            x += text_width(text + GAP, fnt)
    return OverlayLayout(size, 2 * MARGIN + len(lines) * step + BAR, tuple(pieces))


def _fits(lines: list[list[tuple[str, str]]], fnt, width: int, height: int) -> bool:
    room = width - 2 * MARGIN
    widths = [text_width(GAP.join(text for _, text in line), fnt) for line in lines]
    return max(widths) <= room and 2 * MARGIN + len(lines) * _line_height(fnt) + BAR <= max(int(height * MAX_BAND), 1)


def shorten(label: str, fnt, room: int) -> str:
    """`label` if it fits in `room` px, else its last words behind an ellipsis, else its first characters."""
    if text_width(label, fnt) <= room:
        return label
    words = label.split()
    for k in range(1, len(words)):
        tail = ELLIPSIS + " ".join(words[k:])
        if text_width(tail, fnt) <= room:
            return tail
    text = words[-1] if words else label
    while text and text_width(text + ELLIPSIS, fnt) > room:
        text = text[:-1]
    return text + ELLIPSIS


@functools.lru_cache(maxsize=4096)
def overlay_layout(width: int, height: int, label: str, score_text: str, reps_text: Optional[str]
                   ) -> OverlayLayout:
    """Where to draw `label`, `score_text` and `reps_text` (None: no rep count) on a width x height frame: the
    largest font size that fits on one line, else on two lines; at FONT_FLOOR the label is shortened."""
    numbers = [("score", score_text)] + ([("reps", reps_text)] if reps_text else [])
    for size in range(max(FONT_FLOOR, height // 14), FONT_FLOOR - 1, -1):
        fnt = font(size)
        for lines in ([[("label", label), *numbers]], [[("label", label)], numbers]):
            if _fits(lines, fnt, width, height):
                return _place(lines, size)
    fnt = font(FONT_FLOOR)
    if reps_text and text_width(GAP.join([score_text, reps_text]), fnt) > width - 2 * MARGIN:
        numbers = [("score", score_text), ("reps", "r" + reps_text.split()[-1])]  # "reps 12" -> "r12"
    lines = [[("label", shorten(label, fnt, width - 2 * MARGIN))], numbers]
    return _place(lines, FONT_FLOOR)


def draw_overlay(img: Image.Image, label: str, score: float, reps: Optional[int], rejected: bool = False
                 ) -> Image.Image:
    """A dark band at the top with the label, the score and 'reps N' (see `overlay_layout`), and a score bar
    (grey for a rejected frame, whose label is the unknown label)."""
    from PIL import ImageDraw

    img = img.convert("RGB")
    w, h = img.size
    layout = overlay_layout(w, h, label, f"{score:.2f}", None if reps is None else f"reps {reps}")
    fnt = font(layout.font_size)
    draw = ImageDraw.Draw(img, "RGBA")
    draw.rectangle([0, 0, w, layout.band], fill=(0, 0, 0, 160))
    for piece in layout.pieces:
        color = (200, 200, 200, 255) if piece.role == "label" and rejected else (255, 255, 255, 255)
        draw.text(piece.xy, piece.text, fill=color, font=fnt)
    bar = (150, 150, 150, 230) if rejected else (80, 200, 120, 230)
    draw.rectangle([0, layout.band - BAR, int(w * max(0.0, min(score, 1.0))), layout.band], fill=bar)
    return img


def running_reps(doc: dict[str, Any]) -> list[Optional[int]]:
    """Per frame of a predict-video document: reps of the frame's label counted so far (0 before its first),
    or None when the label isn't counted in repetitions (rejected frames included)."""
    out, running = [], {}
    for f in doc["frames"]:
        if "rep" in f:
            running[f["rep"]["label"]] = f["rep"]["count"]
        out.append(running.get(f["label"], 0) if f["label"] in doc["reps"] else None)
    return out


def _encoder(container, rate: Fraction, width: int, height: int):
    import av

    for codec in ("libx264", "h264", "mpeg4"):
        try:
            av.codec.Codec(codec, "w")
        except Exception:  # this ffmpeg build lacks the encoder
            continue
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        return stream
    raise InputError("this PyAV build has no h264 or mpeg4 encoder; reinstall PyAV (pip install av)")


def _own_label(frame: dict[str, Any]) -> tuple[Optional[str], float]:
    """The frame's own decision: its best smoothed label and that label's smoothed probability (a frame inside
    a segment of another label, kept there by --min-segment-s, shows what it saw itself, never "squat 0.00")."""
    smoothed = frame.get("smoothed") or {}
    if frame["label"] is None or not smoothed:
        return frame["label"], float(frame["score"])
    best = max(smoothed, key=smoothed.get)
    return best, float(smoothed[best])


def annotate_video(path: str | Path, out_path: str | Path, doc: dict[str, Any]) -> Path:
    """Write a copy of the video with each frame's current label, score and rep count drawn on it; a rejected
    frame shows the document's unknown label (settings.unknown_label).

    Every source frame shows the decision of the latest sampled frame at or before it. Atomic write.
    """
    import av

    from toolkit.video.pipeline import _open, _reason

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    keys = [f["index"] for f in doc["frames"]]
    reps_so_far = [n or None for n in running_reps(doc)]  # nothing drawn before a label's first rep
    unknown = doc["settings"].get("unknown_label") or "none of these"

    def encode(tmp: Path) -> None:
        with _open(path) as src, av.open(str(tmp), "w", format="mp4") as dst:
            s = src.streams.video[0]
            s.thread_type = "AUTO"
            w, h = s.codec_context.width // 2 * 2, s.codec_context.height // 2 * 2
            rate = Fraction(s.average_rate or 25).limit_denominator(1001)
            enc = _encoder(dst, rate, w, h)
            for i, frame in enumerate(src.decode(s)):
                k = bisect.bisect_right(keys, i) - 1
                img = frame.to_image().crop((0, 0, w, h))
                if k >= 0:
                    f = doc["frames"][k]
                    rejected = f["label"] is None
                    own, score = _own_label(f)
                    reps = reps_so_far[k] if own == f["label"] else None  # a rep count belongs to its label
                    img = draw_overlay(img, unknown if rejected else own, score, reps, rejected)
                dst.mux(enc.encode(av.VideoFrame.from_image(img)))
            dst.mux(enc.encode())

    try:
        fsio.save(out, encode)
    except av.error.FFmpegError as e:
        raise InputError(f"could not write annotated video '{out}' ({_reason(e)}); check the path") from None
    return out
