"""An HTML gallery of a head's mistakes: one card per image (thumbnail, true and predicted label, scores).

The page is self-contained: thumbnails are small PNGs in `thumbs/` beside `errors.html`, so the folder can be
moved, zipped or opened offline. Images are read by the caller's `load_image` (path -> PIL RGB image), so the
formats the rest of clipkit reads (HEIC, AVIF, 16-bit...) work here too; one that can't be read gets a card
that says so instead of a thumbnail.
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from toolkit import fsio

THUMB_PX = 160  # the longer side of a thumbnail
MAX_CARDS = 500  # a gallery of more mistakes than this shows the most confident ones and says how many more

_STYLE = """
body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; } .meta { color: #555; margin-bottom: 1em; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; }
.card { width: 180px; border: 1px solid #ddd; border-radius: 6px; padding: 8px; background: #fafafa; }
.card img { width: 160px; height: 160px; object-fit: contain; background: #fff; display: block; margin: auto; }
.card .true { color: #1a7f37; } .card .pred { color: #b42318; } .card .rej { color: #6b6b6b; }
.card .path { color: #777; font-size: 11px; word-break: break-all; }
.noimg { width: 160px; height: 160px; display: flex; align-items: center; justify-content: center;
         color: #999; background: #eee; text-align: center; }
"""


def _thumbnail(load_image: Callable[[str], Any], path: str, out: Path) -> bool:
    try:
        im = load_image(path)
        im.thumbnail((THUMB_PX, THUMB_PX))
        fsio.save(out, lambda tmp: im.save(tmp, format="PNG"))
        return True
    except Exception:  # unreadable now (moved, deleted, corrupt): the card says so
        return False


def _card(row: dict[str, Any], thumb: Optional[str]) -> str:
    e = html.escape
    picture = (f'<img src="{e(thumb)}" alt="{e(Path(row["path"]).name)}">' if thumb
               else '<div class="noimg">image not readable</div>')
    said = (f'<div class="rej">rejected: best {e(row["predicted"])} {row["score"]:.3f}</div>' if row["rejected"]
            else f'<div class="pred">predicted: {e(row["predicted"])} {row["score"]:.3f}</div>')
    return (f'<div class="card">{picture}<div class="true">true: {e(row["true"])} {row["true_score"]:.3f}</div>'
            f'{said}<div class="path">{e(row["path"])}</div></div>')


def write_gallery(out: str | Path, rows: Sequence[dict[str, Any]], title: str,
                  load_image: Callable[[str], Any], meta: str = "") -> Path:
    """Write OUT/errors.html and OUT/thumbs/*.png for `rows` (evaluate.mistakes: path, true, predicted,
    score, true_score, rejected); returns the HTML file's path. At most MAX_CARDS cards."""
    out = Path(out)
    (out / "thumbs").mkdir(parents=True, exist_ok=True)
    cards = []
    for i, row in enumerate(rows[:MAX_CARDS]):
        name = f"thumbs/{i:04d}.png"
        cards.append(_card(row, name if _thumbnail(load_image, row["path"], out / name) else None))
    more = f" (showing the first {MAX_CARDS})" if len(rows) > MAX_CARDS else ""
    body = "".join(cards) or "<p>No mistakes: every image was classified right.</p>"
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<div class='meta'>{len(rows)} mistakes{more}, most confident first. {html.escape(meta)}</div>"
            f"<div class='grid'>{body}</div></body></html>\n")
    return fsio.write_text(out / "errors.html", page)
