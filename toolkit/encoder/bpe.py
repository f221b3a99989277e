"""CLIP's byte-pair tokenizer without torch: what open_clip's `SimpleTokenizer` (clean="lower", no reduction
mask, no extra special tokens) returns, as an (n, context_length) int64 numpy array.

open_clip's tokenizer module imports torch at its top, so the fast path (encoder/fast.py) carries this port
of the same algorithm (OpenAI's CLIP `simple_tokenizer.py`, MIT licence) over the same vocabulary file,
copied beside the exported text tower. `fast.prepare` checks it against the model's own tokenizer on a set of
prompts before the fast path is used; tests/test_fast_path.py compares the two on awkward strings.
"""
from __future__ import annotations

import functools
import gzip
import html
import re
from pathlib import Path
from typing import Sequence

import numpy as np

N_MERGES = 49152 - 256 - 2  # open_clip reads merges[1 : 49152 - 256 - 2 + 1]
SPECIAL = ("<start_of_text>", "<end_of_text>")


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """Byte -> printable unicode character, as CLIP's BPE vocabulary spells bytes."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


_PLAIN = re.compile(r"[\x20-\x25\x27-\x7e]*")  # printable ASCII but '&': ftfy and html.unescape change nothing
_ASCII_PAT = re.compile("|".join(SPECIAL) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[a-zA-Z]+|[0-9]|[^\sa-zA-Z0-9]+""", re.IGNORECASE)


def clean(text: str) -> str:
    """open_clip's "lower" cleaning: ftfy, HTML entities unescaped twice, whitespace collapsed, lower case."""
    if not _PLAIN.fullmatch(text):
        import ftfy

        text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return " ".join(text.split()).strip().lower()


def read_merges(path: str | Path) -> list[str]:
    """The BPE merges ("a b" lines, in rank order) of a CLIP vocabulary file, gzip or plain text."""
    data = Path(path).read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data.decode("utf-8").split("\n")[1:N_MERGES + 1]


def write_plain(gz_path: str | Path, out: str | Path) -> None:
    """The vocabulary file decompressed (the fast path keeps this copy: reading it is one split)."""
    Path(out).write_bytes(gzip.decompress(Path(gz_path).read_bytes()))


class BpeTokenizer:
    """texts -> (n, context_length) int64 token ids: <start_of_text> BPE tokens <end_of_text>, zero padded,
    truncated to the context length with <end_of_text> kept last.

    Merges are looked up by their line in the vocabulary file ("a b"), so loading is one split of the file;
    `merges_path` may be the gzip file open_clip ships or its plain-text copy (`write_plain`, faster to read).
    Printable-ASCII prompts without '&' (nearly all) skip ftfy and the `regex` module: ftfy leaves such text
    unchanged, and on ASCII CLIP's letter/number classes are [a-zA-Z] / [0-9]."""

    def __init__(self, merges_path: str | Path, context_length: int = 77):
        merges = read_merges(merges_path)
        vocab = list(bytes_to_unicode().values())
        vocab = vocab + [v + "</w>" for v in vocab] + [m.replace(" ", "") for m in merges] + list(SPECIAL)
        self.encoder = {t: i for i, t in enumerate(vocab)}
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.sot, self.eot = self.encoder[SPECIAL[0]], self.encoder[SPECIAL[1]]
        self.context_length = int(context_length)
        self._cache: dict[str, str] = {t: t for t in SPECIAL}
        self._bytes = bytes_to_unicode()
        self._unicode_pat = None

    def _pattern(self, text: str):
        if _PLAIN.fullmatch(text):
            return _ASCII_PAT
        if self._unicode_pat is None:
            import regex

            self._unicode_pat = regex.compile("|".join(SPECIAL) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
                                              r"""[^\s\p{L}\p{N}]+""", regex.IGNORECASE)
        return self._unicode_pat

    def _bpe(self, token: str) -> str:
        if token in self._cache:
            return self._cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        ranks, inf = self.ranks, float("inf")
        while len(word) > 1:
            best = min(zip(word, word[1:]), key=lambda p: ranks.get(f"{p[0]} {p[1]}", inf))
            if f"{best[0]} {best[1]}" not in ranks:
                break
            first, second = best
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        out = " ".join(word)
        self._cache[token] = out
        return out

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        text = clean(text)
        for token in self._pattern(text).findall(text):
            token = "".join(self._bytes[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self._bpe(token).split(" "))
        return ids

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.context_length), np.int64)
        for row, text in enumerate(texts):
            ids = [self.sot, *self.encode(text), self.eot]
            if len(ids) > self.context_length:
                ids = ids[:self.context_length]
                ids[-1] = self.eot
            out[row, :len(ids)] = ids
        return out


def used_length(tokens: np.ndarray, pad_id: int = 0) -> int:
    """1 + the last position holding a non-pad token in any row (the longest prompt's length), at least 1."""
    used = np.flatnonzero((tokens != pad_id).any(axis=0))
    return int(used[-1]) + 1 if len(used) else 1
