"""Expanding the user's PATH arguments (files, folders, globs) into an ordered list of image files."""
from __future__ import annotations

import glob
from pathlib import Path
from typing import Iterable

from .errors import InputError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v"}


def images_under(folder: Path) -> list[Path]:
    """Image files anywhere below `folder` (by suffix), sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _folder_images(folder: Path) -> list[str]:
    return sorted(str(p) for p in images_under(folder))  # ordered as strings, as `predict` always listed them


def expand_image_paths(args: Iterable[str]) -> list[str]:
    """Files are kept as given (a non-image file later gets its own error entry), folders are searched
    recursively for image files, globs are expanded (`**` recurses). A path or glob that matches nothing
    raises InputError before any work starts. Duplicates are dropped, order is kept."""
    out: list[str] = []
    for arg in args:
        p = Path(arg)
        if p.is_dir():
            found = _folder_images(p)
            if not found:
                raise InputError(f"folder '{arg}' contains no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            out += found
        elif p.is_file():
            out.append(str(p))
        elif glob.has_magic(arg):
            matches = sorted(glob.glob(arg, recursive=True))
            files = [m for m in matches if Path(m).is_file()] + [f for m in matches if Path(m).is_dir()
                                                                  for f in _folder_images(Path(m))]
            if not files:
                raise InputError(f"pattern '{arg}' matches no files; check the pattern (quote it to let clipkit expand **)")
            out += files
        else:
            raise InputError(f"path '{arg}' does not exist; check the spelling or pass a folder or a glob")
    return list(dict.fromkeys(out))
