"""Decode work of one request, bounded before and during decoding.

A progressive JPEG may hold thousands of scans, each of which makes the decoder walk every block of the
image again: 600 KB with 8000 scans takes ~30 s. So, per request:

- before decoding, `jpeg_scans` counts a JPEG's scans (SOS markers, walking the segments and skipping
  entropy-coded data, so a marker-like byte pair inside EXIF or ICC data is never counted) and the image is
  refused over serve.max_jpeg_scans;
- its work, pixels x scans (1 scan for the other formats), counts against serve.max_decode_work for the whole
  request, the way a video's decoded frames x pixels count against serve.max_video_work;
- while decoding, the decoder reads its input through a `StoppableReader` in chunks (small ones for
  multi-scan JPEGs): at each read it
  stops (`DecodeStopped`) once the request's decode seconds (serve.decode_timeout_s) are spent or the request
  is cancelled (deadline, client gone), so a decode never runs on after the request has ended.
"""
from __future__ import annotations

import io
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

# A marker after entropy-coded data: 0xFF (fill bytes allowed), then neither a stuffed zero nor RST0-7.
_MARKER_AFTER_DATA = re.compile(rb"\xff+[^\x00\xff\xd0-\xd7]")
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM, RST0-7: no length field
# The decoder's reads: how much compressed data it gets between two checks. A multi-scan JPEG's scan can be a
# few bytes that walk the whole image (an end-of-band run), so those get small chunks: at most ~40 scans each.
CHUNK_BYTES = 16 * 1024
SCAN_CHUNK_BYTES = 1024


def jpeg_scans(data: bytes, stop_after: int) -> int:
    """The number of scans (SOS segments) in JPEG bytes, counting stops past `stop_after`; O(len(data)).
    A malformed stream ends the count where it breaks (the decoder then says what is wrong)."""
    n, pos, end = 0, 2, len(data)  # after SOI
    while pos + 4 <= end and n <= stop_after:
        if data[pos] != 0xFF:  # garbage between segments: resync on the next marker
            m = _MARKER_AFTER_DATA.search(data, pos)
            if m is None:
                break
            pos = m.end() - 2
            continue
        if data[pos + 1] == 0xFF:  # fill byte
            pos += 1
            continue
        marker = data[pos + 1]
        if marker == 0xD9:  # EOI
            break
        if marker in _STANDALONE:
            pos += 2
            continue
        seg_end = pos + 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker != 0xDA:
            pos = seg_end
            continue
        n += 1
        m = _MARKER_AFTER_DATA.search(data, seg_end)  # skip the scan's entropy-coded data
        if m is None:
            break
        pos = m.end() - 2
    return n


class DecodeStopped(Exception):
    """The decode was stopped at a chunk read: time is up (`timed_out`) or the request was cancelled."""

    def __init__(self, timed_out: bool):
        super().__init__("decode time is up" if timed_out else "the request was cancelled")
        self.timed_out = timed_out


@dataclass(eq=False)
class DecodeBudget:
    """One request's decode allowance: work units (pixels x scans) and seconds, plus its cancel flag.
    Used by one worker thread at a time (the request's decode loop)."""

    max_scans: int
    work_left: float
    seconds: float
    cancel: threading.Event = field(default_factory=threading.Event)
    spent_s: float = 0.0

    def remaining_s(self) -> float:
        return self.seconds - self.spent_s


class StoppableReader(io.BytesIO):
    """Bytes whose every read checks the budget's clock (the seconds this reader has been open, added to what
    the request spent before) and its cancel flag. Pillow's decoders read `im.decodermaxblock` bytes at a time:
    set it to CHUNK_BYTES so that the checks come often."""

    def __init__(self, data: bytes, budget: DecodeBudget):
        super().__init__(data)
        self.budget, self.t0 = budget, time.monotonic()

    def read(self, size: Optional[int] = -1) -> bytes:
        self.check()
        return super().read(size)

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def check(self) -> None:
        if self.budget.cancel.is_set():
            raise DecodeStopped(timed_out=False)
        if self.elapsed() > self.budget.remaining_s():
            raise DecodeStopped(timed_out=True)
