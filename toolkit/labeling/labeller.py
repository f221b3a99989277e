"""What the labelling page shows, without the web part: the queue of images in "what to label next" order,
each with the current suggestion, answers into the LabelSession, and a head refitted in a background thread.

    lab = Labeller(store_features, store_paths, session, zeroshot_proba)   # (n, D), n paths, (n, C) or None
    lab.state()             {"item": {...} | None, "counts", "standing", ...}
    lab.answer(row, "squat" | NONE | SKIP); lab.undo()

After each answer the refit thread (one at a time; answers that come in meanwhile are folded into the next fit)
fits the head on the labels so far (blended with zero-shot while few exist, labeling.model.current_proba),
measures its k-fold accuracy beside zero-shot's, and orders the unlabelled rows again (labeling.suggest.pick).
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Optional

import numpy as np

from toolkit.labeling.model import Standing, current_proba, standing
from toolkit.labeling.session import NONE, SKIP, LabelSession
from toolkit.labeling.suggest import pick

QUEUE = 32  # rows ordered per refit; the page asks again before it runs out


class Labeller:
    """The page's state over one feature store's rows and one LabelSession (already open)."""

    def __init__(self, features: np.ndarray, paths: list[str], session: LabelSession,
                 zeroshot: Optional[np.ndarray] = None, strategy: str = "auto", seed: int = 0):
        self.X = np.asarray(features, np.float32)
        self.paths, self.session, self.zeroshot = list(paths), session, zeroshot
        self.classes = session.classes
        self.row_of = {p: i for i, p in enumerate(self.paths)}
        self.strategy, self.seed = strategy, seed
        self.proba = zeroshot if zeroshot is not None else np.full((len(self.X), len(self.classes)),
                                                                     1.0 / len(self.classes))
        self.standing: Standing = Standing(0, None, None, None)
        self.queue: list[int] = []
        self.front: list[int] = []  # rows put back by undo: shown before the queue
        self.version = 0  # bumped per answer; a refit records the version it saw
        self.fitted_version = -1
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stop = False
        self._thread: Optional[threading.Thread] = None
        self.refit()  # the first order (cold start: typical picks) before the page opens

    # -- background refit
    def start(self) -> "Labeller":
        self._thread = threading.Thread(target=self._loop, name="label-refit", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop:
            self._wake.wait()
            self._wake.clear()
            if not self._stop:
                self.refit()

    def labelled(self) -> dict[int, int]:
        """{row: class index} of the labels so far."""
        pos = {c: i for i, c in enumerate(self.classes)}
        return {self.row_of[p]: pos[lb] for p, lb in self.session.labels.items() if p in self.row_of}

    def refit(self) -> None:
        """Fit the head on the labels so far, score it, and order the rows to label next."""
        with self._lock:
            version, lab = self.version, self.labelled()
            answered = {self.row_of[p] for p in self.session.none if p in self.row_of}
            skipped = [self.row_of[p] for p in self.session.skipped if p in self.row_of]
        rows = np.fromiter(lab.keys(), int, len(lab))
        y = np.fromiter(lab.values(), int, len(lab))
        proba = current_proba(self.X[rows], y, self.X, len(self.classes), self.zeroshot)
        zs = None if self.zeroshot is None else self.zeroshot[rows]
        stand = standing(self.X[rows], y, len(self.classes), zs, self.seed)
        order = pick(self.X, lab, QUEUE, self.strategy, proba, len(self.classes), self.seed,
                     exclude=[*answered, *skipped])
        order += [r for r in skipped if r not in lab]  # skipped images come back last
        with self._lock:
            late = {self.row_of[p] for p in self.session.skipped if p in self.row_of}  # skipped during the fit
            order = [r for r in order if r not in late] + [r for r in order if r in late]
            self.proba, self.standing, self.queue, self.fitted_version = proba, stand, order, version

    # -- answers
    def current(self) -> Optional[int]:
        """The row to show: one put back by undo, else the first unanswered row of the queue (ordered again
        synchronously when the queue has run dry; skipped rows come round again last); None when done."""
        with self._lock:
            for src in (self.front, self.queue):
                src[:] = [r for r in src if not self.session.answered(self.paths[r])]
            if self.front:
                return self.front[0]
            if not self.queue:
                self.refit()
            return self.queue[0] if self.queue else None

    def answer(self, row: int, value: str) -> None:
        """Record the answer for `row` (a class, NONE or SKIP): written to labels.csv before this returns."""
        with self._lock:
            self.session.answer(self.paths[row], value)
            self.front[:] = [r for r in self.front if r != row]
            if value == SKIP:  # to the back of the line
                self.queue[:] = [r for r in self.queue if r != row] + [row]
            self.version += 1
        self._wake.set()

    def undo(self) -> Optional[int]:
        """Take back the last answer; its row is shown next. Returns the row, or None when there was nothing."""
        with self._lock:
            step = self.session.undo()
            if step is None:
                return None
            row = self.row_of[step["path"]]
            self.front.insert(0, row)
            self.version += 1
        self._wake.set()
        return row

    # -- what the page shows
    def item(self, row: int) -> dict[str, Any]:
        p = self.proba[row]
        order = np.argsort(-p, kind="stable")
        best = int(order[0])
        return {"row": row, "path": self.paths[row], "name": Path(self.paths[row]).name,
                "suggestion": self.classes[best], "score": float(p[best]),
                "scores": [{"label": self.classes[i], "score": float(p[i])} for i in order],
                "current": self.session.labels.get(self.paths[row])}

    def state(self) -> dict[str, Any]:
        with self._lock:
            row = self.current()
            counts = self.session.counts()
            n_none, n_skipped = len(self.session.none), len(self.session.skipped)
            return {"item": None if row is None else self.item(row), "classes": self.classes, "counts": counts,
                    "n_images": len(self.paths), "n_labelled": sum(counts.values()), "n_none": n_none,
                    "n_skipped": n_skipped, "standing": self.standing.to_dict(), "strategy": self.strategy,
                    "fresh": self.fitted_version == self.version, "csv": str(self.session.path),
                    "can_undo": bool(self.session.history), "notes": list(self.session.notes[-3:]),
                    "train_command": f"clipkit train-probe {self.session.path} --out "
                                     f"{self.session.path.with_suffix('')}-head"}


__all__ = ["Labeller", "NONE", "SKIP"]
