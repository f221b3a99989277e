"""Expanding the user's PATH arguments (files, folders, globs) into an ordered list of image files.

In a folder, every file with an image suffix is listed (a file that turns out unreadable gets its own error
entry when it is loaded), and so is every dangling symbolic link (its error names the missing target) and
every subfolder that can't be listed; other files are returned as `skipped`, for the caller to mention.
Symbolic links to folders are followed, each real folder once (so a link loop ends). Hidden entries (names
starting with '.', like .git or macOS's ._IMG_1.jpg) are ignored, as a file browser does.
"""
from __future__ import annotations

import glob
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

from toolkit.errors import InputError
from toolkit.fsio import printable

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".webp", ".bmp", ".dib", ".gif", ".tif",
                  ".tiff", ".heic", ".heif", ".hif", ".avif"}
IMAGE_KINDS = "JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC/HEIF or AVIF"  # the same list in words, for messages
VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v"}


@dataclass
class Found:
    """`files`: what to load, each giving a result or an error entry; `skipped`: other files seen in folders."""

    files: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)


def scan_folder(folder: Path) -> Found:
    """Image files, dangling links and unlistable subfolders anywhere below `folder` (sorted), and the
    other files (sorted). Symlinked subfolders are followed; a real folder already visited is not re-entered."""
    found = Found()
    seen: set[str] = set()
    stack = [Path(folder)]
    while stack:
        d = stack.pop()
        real = os.path.realpath(d)
        if real in seen:
            continue
        seen.add(real)
        try:
            with os.scandir(d) as it:
                entries = [e for e in it if not e.name.startswith(".")]
        except OSError:  # e.g. permission denied: an entry of its own, whose error says so
            found.files.append(d)
            continue
        for e in entries:
            _classify(e, found, stack)
    found.files.sort()
    found.skipped.sort()
    return found


def _classify(e: os.DirEntry, found: Found, stack: list[Path]) -> None:
    p = Path(e.path)
    try:
        is_dir, is_file = e.is_dir(), e.is_file()  # both follow symbolic links
    except OSError:
        is_dir = is_file = False
    image_like = p.suffix.lower() in IMAGE_SUFFIXES
    if is_dir:
        stack.append(p)
    elif is_file:
        (found.files if image_like else found.skipped).append(p)
    elif e.is_symlink() and (image_like or not p.suffix) and not os.path.exists(p):
        found.files.append(p)  # dangling (or a loop of links): may have been an image or a folder of them
    else:  # a dangling link to some other kind of file; a FIFO, socket or device, or a link to one (opening a
        found.skipped.append(p)  # FIFO would wait forever for a writer)


def expand_inputs(args: Iterable[str]) -> Found:
    """Files are kept as given (a non-image file later gets its own error entry), folders are scanned
    (`scan_folder`), globs are expanded (`**` recurses). A path or glob that matches nothing raises InputError
    before any work starts. Duplicates are dropped, order is kept."""
    out = Found()
    for arg in args:
        p = Path(arg)
        if p.is_dir():
            found = scan_folder(p)
            if not found.files:
                others = f"; it holds {_describe(found.skipped)}" if found.skipped else ""
                raise InputError(f"folder '{arg}' contains no images ({IMAGE_KINDS}){others}")
            found.files.sort(key=str)  # ordered as strings, as `predict` always listed them
        elif p.is_file():
            found = Found(files=[p])
        elif os.path.islink(arg):
            raise InputError(f"'{arg}' is a broken symbolic link to '{os.readlink(arg)}'; fix or remove the link")
        elif os.path.exists(arg):
            raise InputError(f"'{printable(arg)}' is {special_kind(arg)}, not an image file; pass image files, "
                             "folders or globs")
        elif glob.has_magic(arg):
            found = _expand_glob(arg)
        else:
            raise InputError(f"path '{arg}' does not exist; check the spelling or pass a folder or a glob")
        out.files += found.files
        out.skipped += found.skipped
    return Found(list(dict.fromkeys(out.files)), list(dict.fromkeys(out.skipped)))


def special_kind(path: str | Path) -> str:
    """What a path that exists but is neither a regular file nor a folder is, in words ("a FIFO (named
    pipe)", "a character device", ...), following symbolic links."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        return f"unreadable ({e.strerror})"
    kinds = [(stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")]
    what = next((name for test, name in kinds if test(mode)), "not a regular file")
    return f"a symbolic link to {what}" if os.path.islink(path) else what


def _expand_glob(pattern: str) -> Found:
    matches = sorted(glob.glob(pattern, recursive=True))
    # matched files are kept as given, like files named one by one; so are dangling links (their error says so)
    out = Found(files=[Path(m) for m in matches if os.path.isfile(m) or not os.path.exists(m)])
    for m in matches:
        if os.path.isdir(m):
            found = scan_folder(Path(m))
            out.files += found.files
            out.skipped += found.skipped
    if not out.files:
        raise InputError(f"pattern '{pattern}' matches no files; check the pattern (quote it to let clipkit "
                         "expand **)")
    return out


def skipped_note(skipped: Sequence[Path]) -> Optional[str]:
    """One line for stderr, e.g. "skipped 3 files that are not images (.txt, .json)"; None when there are none."""
    return f"skipped {_describe(skipped)}" if skipped else None


def _describe(files: Sequence[Path]) -> str:
    kinds = Counter(Path(p).suffix.lower() or "no suffix" for p in files)
    common = sorted(kinds, key=lambda k: (-kinds[k], k))  # most frequent first, then by name
    shown = ", ".join(common[:5]) + (", ..." if len(common) > 5 else "")
    if len(files) == 1:
        return f"1 file that is not an image ({shown})"
    return f"{len(files)} files that are not images ({shown})"
