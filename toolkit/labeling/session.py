"""The state of a labelling session: `labels.csv` (path,label: what `clipkit train-probe` reads), its lock, undo.

    labels.csv               path,label, one row per labelled image; paths relative to the CSV's folder; rewritten
                             atomically (toolkit.fsio) after every answer, before the answer is acknowledged
    labels.csv.session.json  what is not a label: images answered "none of these", images skipped, and the undo
                             history; written after the CSV (a crash between the two loses no label)
    labels.csv.lock          held with flock while a session is open: a second session on the same CSV is refused,
                             and a killed one (kill -9 included) leaves no stale lock behind

The CSV may be edited while a session runs: before each answer the file is read again if it changed on disk,
and an edit that breaks a rule (a missing file, an unknown label, one image with two labels) refuses the answer
with one line instead of overwriting the edit. Rows for images outside the session are kept as they are.
"""
from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import socket
from pathlib import Path
from typing import Any, Optional, Sequence

from toolkit import fsio
from toolkit.fsio import csv_safe
from toolkit.data.datasets import read_csv_rows
from toolkit.errors import DataError

NONE, SKIP = "__none__", "__skip__"  # the two answers that are not labels
HISTORY = 1000  # undo steps kept
_FORMULA = ("=", "+", "-", "@", "\t", "\r")  # what fsio.csv_safe prefixes with a '


def _unsafe(value: str) -> str:
    """The value `csv_safe` was given (its ' prefix dropped again)."""
    return value[1:] if value.startswith("'") and value[1:].startswith(_FORMULA) else value


class SessionLocked(DataError):
    """The CSV is open in another labelling session."""


class LabelSession:
    """Labels of `images` (absolute paths) with `classes`, kept in `csv_path`. Use as a context manager (or
    `open()` / `close()`): it holds the lock while open.

    `labels` maps an image path (as given in `images`) to its label; `none` and `skipped` hold the other answers.
    """

    def __init__(self, csv_path: str | Path, images: Sequence[str], classes: Sequence[str]):
        self.path = Path(csv_path).absolute()
        self.sidecar = self.path.with_name(self.path.name + ".session.json")
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.bind(images, classes)
        self.labels: dict[str, str] = {}
        self.none: set[str] = set()
        self.skipped: list[str] = []
        self.history: list[dict[str, Any]] = []
        self.foreign: list[dict[str, str]] = []  # rows naming images outside this session: written back unchanged
        self.fields = ["path", "label"]
        self.notes: list[str] = []  # what loading fixed or kept (merged duplicates, foreign rows)
        self._lock_fd: Optional[int] = None
        self._stamp: Optional[tuple[int, int]] = None

    def bind(self, images: Sequence[str], classes: Sequence[str]) -> "LabelSession":
        """Set the images and label set (before `open`; a command that locks first binds once it knows them)."""
        self.images = [str(p) for p in images]
        self.classes = list(classes)
        self._real = {os.path.realpath(p): p for p in self.images}
        self._known = set(self.images)
        return self

    # -- lock
    def open(self, owner: str = "") -> "LabelSession":
        """Take the lock (SessionLocked when another session holds it), then read the CSV and the sidecar."""
        if self._lock_fd is None:
            self.lock(owner)
        try:
            self.reload()
            self._read_sidecar()
        except BaseException:
            self.close()
            raise
        return self

    def lock(self, owner: str = "") -> "LabelSession":
        """Take the lock only (SessionLocked when another session holds it): a command takes it before its slow
        start (model load, embedding), so that a second page is refused at once."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 300, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise SessionLocked(f"'{self.path}' is already open in another labelling page ({holder}); close that "
                                "page's process first, or label into another CSV") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}{' ' + owner if owner else ''}\n".encode(), 0)
        self._lock_fd = fd
        return self

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock; the (empty-able) lock file may stay
            self._lock_fd = None

    def __enter__(self) -> "LabelSession":
        return self.open() if self._lock_fd is None else self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- reading
    def _file_stamp(self) -> Optional[tuple[int, int]]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_size

    def reload(self) -> None:
        """Read labels.csv (DataError naming the line and the fix when a row breaks a rule)."""
        labels, foreign, notes, fields = read_labels_csv(self.path, self._real, self.classes)
        self.labels, self.foreign, self.notes, self.fields = labels, foreign, notes, fields
        self._stamp = self._file_stamp()

    def changed_on_disk(self) -> bool:
        return self._file_stamp() != self._stamp

    def _read_sidecar(self) -> None:
        try:
            doc = json.loads(self.sidecar.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError):
            self.notes.append(f"'{self.sidecar.name}' was unreadable: skips, none-of-these answers and undo "
                              "history start afresh (labels.csv is intact)")
            return
        known = set(self.images)
        self.none = {p for p in doc.get("none", []) if p in known and p not in self.labels}
        self.skipped = [p for p in doc.get("skipped", []) if p in known and p not in self.labels]
        self.history = [h for h in doc.get("history", []) if isinstance(h, dict) and h.get("path") in known]

    # -- answering
    def answer(self, path: str, value: str) -> None:
        """Record one answer for image `path`: a class, NONE or SKIP. Written before this returns."""
        if path not in self._known:
            raise DataError(f"'{path}' is not one of the images of this labelling session")
        if value not in (NONE, SKIP) and value not in self.classes:
            raise DataError(f"label '{value}' is not one of the labels ({', '.join(self.classes)})")
        self._sync()
        self.history.append({"path": path, "before": self._state(path), "after": value})
        del self.history[:-HISTORY]
        self._set(path, value)
        self._write()

    def undo(self) -> Optional[dict[str, Any]]:
        """Take back the last answer (its image gets its earlier state back); None when there is nothing to undo."""
        self._sync()
        if not self.history:
            return None
        step = self.history.pop()
        self._set(step["path"], step["before"])
        self._write()
        return step

    def _state(self, path: str) -> Optional[str]:
        if path in self.labels:
            return self.labels[path]
        if path in self.none:
            return NONE
        return SKIP if path in self.skipped else None

    def _set(self, path: str, value: Optional[str]) -> None:
        self.labels.pop(path, None)
        self.none.discard(path)
        if path in self.skipped:
            self.skipped.remove(path)
        if value == NONE:
            self.none.add(path)
        elif value == SKIP:
            self.skipped.append(path)
        elif value is not None:
            self.labels[path] = value

    def _sync(self) -> None:
        """Read the CSV again if someone changed it since it was last read or written."""
        if self.changed_on_disk():
            self.reload()
            self.notes.append(f"'{self.path.name}' changed on disk: read again ({len(self.labels)} labels)")

    def _write(self) -> None:
        fsio.write_text(self.path, render_labels_csv(self.path.parent, self.labels, self.foreign, self.fields))
        self._stamp = self._file_stamp()
        doc = {"none": sorted(self.none), "skipped": self.skipped, "history": self.history}
        fsio.write_text(self.sidecar, json.dumps(doc, indent=1))

    # -- where things stand
    def answered(self, path: str) -> bool:
        return path in self.labels or path in self.none

    def counts(self) -> dict[str, int]:
        """{class: n labelled} in class order, every class listed."""
        out = {c: 0 for c in self.classes}
        for lb in self.labels.values():
            out[lb] += 1
        return out


def _cell_path(base: Path, path: str) -> str:
    return os.path.relpath(path, base)


def render_labels_csv(base: Path, labels: dict[str, str], foreign: list[dict[str, str]], fields: list[str]) -> str:
    """labels.csv text: the header, the foreign rows as they were, then one row per label (paths relative to
    `base`, every cell made spreadsheet-safe)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for row in foreign:
        w.writerow({k: csv_safe(v) for k, v in row.items() if k in fields})
    for path, label in labels.items():
        w.writerow({"path": csv_safe(_cell_path(base, path)), "label": csv_safe(label)})
    return buf.getvalue()


def read_labels_csv(path: Path, images: dict[str, str], classes: Sequence[str]
                    ) -> tuple[dict[str, str], list[dict[str, str]], list[str], list[str]]:
    """(labels {image: label}, foreign rows, notes, header fields) of a labels.csv; empty when it doesn't exist.

    `images` maps real paths to the session's image paths. DataError naming the line and the fix for: a header
    without path and label, a path that doesn't exist, a label not in `classes`, an image given two labels.
    Identical duplicate rows are merged (a note says so); rows for files outside `images` are kept."""
    if not path.is_file():
        return {}, [], [], ["path", "label"]
    rows, fields = read_csv_rows(path, f"'{path}'", "fix it (UTF-8 'path,label') or move it away")
    if not fields:
        return {}, [], [], ["path", "label"]
    if "path" not in fields or "label" not in fields:
        raise DataError(f"'{path}' needs a header with 'path' and 'label' columns (got {fields}); write 'path,label' "
                        "as its first line")
    labels: dict[str, str] = {}
    first_line: dict[str, int] = {}
    foreign: list[dict[str, str]] = []
    merged, allowed = 0, set(classes)
    for line, raw in enumerate(rows, start=2):
        row = {(k or "").strip().lower(): _unsafe((v or "").strip()) for k, v in raw.items() if k is not None}
        if not row.get("path") and not row.get("label"):
            continue  # a blank line
        real = os.path.realpath(path.parent / row["path"])
        if not os.path.isfile(real):
            raise DataError(f"'{path.name}' line {line}: '{row['path']}' does not exist (paths are relative to the "
                            "CSV's folder); restore the file or delete the line")
        if real not in images:
            foreign.append(row)
            continue
        image, label = images[real], row.get("label", "")
        if label not in allowed:
            raise DataError(f"'{path.name}' line {line}: label '{label}' is not one of the labels "
                            f"({', '.join(classes)}); fix the line or add '{label}' to the labels")
        if image in labels:
            if labels[image] != label:
                raise DataError(f"'{path.name}' lines {first_line[image]} and {line} give '{row['path']}' two labels "
                                f"('{labels[image]}', '{label}'); delete one of the lines")
            merged += 1
            continue
        labels[image], first_line[image] = label, line
    notes = []
    if merged:
        notes.append(f"'{path.name}': {merged} duplicate row(s) merged")
    if foreign:
        notes.append(f"'{path.name}': {len(foreign)} row(s) name images outside the ones being labelled (first: "
                     f"{foreign[0]['path']}); they are kept as they are")
    return labels, foreign, notes, fields
