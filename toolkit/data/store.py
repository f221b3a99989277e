"""Feature stores: CLIP image features of a labelled dataset, on disk, memory-mappable.

A complete store is a folder:

    meta.json       written LAST and atomically: its presence is what makes the store complete; holds the
                    sha256 of features.npy (checked when `extract` would reuse the store)
    .lock           while a process writes the store: "PID HOST"; a second writer is refused (see `writing`)
    features.npy    (n_rows, D) float32, rows L2-normalized; open with np.load(mmap_mode="r")
    index.csv       row,path,label,split: one line per row of features.npy

While an extraction runs (or after it was interrupted) the folder holds instead:

    extract.json          the plan: n_rows (= dataset size), dim, batch_size, fingerprint, identity
    features.partial.npy  (n_rows, D) float32 at a fixed size; row i is dataset row i
    progress/<writer>.jsonl  one JSON line per finished batch: {"batch": b, "errors": {"row": "message"}}

Batch b covers dataset rows [b * batch_size, (b + 1) * batch_size). Each writer opens the partial file r+,
writes its own batches, flushes, then appends a progress line; so an interrupted run resumes without
redoing finished batches, and several processes can fill disjoint batches of one store (see StoreWriter).
`finalize` drops the rows whose image failed to decode (listed in meta.json under "skipped").
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from toolkit import fsio
from toolkit.data.datasets import LabelledDataset
from toolkit.errors import DataError

FORMAT = "clipkit-feature-store"
FORMAT_VERSION = 1
META, FEATURES, INDEX = "meta.json", "features.npy", "index.csv"
PLAN, PARTIAL, PROGRESS = "extract.json", "features.partial.npy", "progress"
LOCK = ".lock"
_COPY_ROWS = 65536  # rows per chunk when compacting: 128 MiB at D=512
_NORM_TOL = 2e-3  # |squared norm - 1| of a stored row; float32 rows normalized by the extractor are within 1e-5
# meta.json keys: (type, required). bool is excluded from int below (json true is not a count)
_META_SCHEMA: dict[str, tuple[type | tuple[type, ...], bool]] = {
    "format": (str, True), "count": (int, True), "dim": (int, True), "identity": (dict, True),
    "format_version": (int, False), "classes": (list, False), "split_counts": (dict, False),
    "class_counts": (dict, False), "skipped": (list, False), "fingerprint": ((str, type(None)), False),
    "features_sha256": (str, False), "dataset_root": (str, False), "dtype": (str, False),
}


def _write_atomic(path: Path, text: str) -> None:
    """Text files of the store; file names that are not UTF-8 are kept byte for byte (surrogateescape)."""
    fsio.write_bytes(path, text.encode("utf-8", "surrogateescape"))


def features_sha256(path: str | Path, chunk: int = 4 << 20) -> str:
    """sha256 of a file's bytes, read in 4 MiB chunks (memory stays flat)."""
    h = hashlib.sha256()
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def check_meta(meta: Any, path: str | Path) -> None:
    """DataError naming the first bad key unless `meta` is a meta.json object of the store format."""
    fix = "delete the store and extract again"
    if not isinstance(meta, dict):
        raise DataError(f"feature store '{path}' has a damaged {META}: it holds a {type(meta).__name__}, not an "
                        f"object; {fix}")
    for key, (kind, required) in _META_SCHEMA.items():
        if key not in meta:
            if required:
                raise DataError(f"feature store '{path}' has a damaged {META}: key '{key}' is missing; {fix}")
            continue
        value = meta[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise DataError(f"feature store '{path}' has a damaged {META}: '{key}' should be {want}, got "
                            f"{type(value).__name__} {json.dumps(value)[:40]}; {fix}")
    if meta["format"] != FORMAT:
        raise DataError(f"'{path}' is not a clipkit feature store ({META} format '{meta['format'][:40]}'); {fix}")
    if any(not isinstance(c, str) for c in meta.get("classes", [])):
        raise DataError(f"feature store '{path}' has a damaged {META}: 'classes' should list strings; {fix}")


class FeatureStore:
    """A complete store, opened read-only: `features` (n, D) memmap, and parallel `paths`/`labels`/`splits`."""

    def __init__(self, path: Path, features: np.ndarray, index: list[dict[str, str]], meta: dict[str, Any]):
        self.path, self.features, self.index, self.meta = Path(path), features, index, meta
        self.paths = np.asarray([r["path"] for r in index], dtype=object)
        self.labels = np.asarray([r["label"] for r in index], dtype=object)
        self.splits = np.asarray([r["split"] for r in index], dtype=object)
        self.reused = False  # set by extract_store when it returned an existing store
        self.note: Optional[str] = None  # why extract_store extracted again instead of reusing, if it did

    def __len__(self) -> int:
        return len(self.index)

    @property
    def classes(self) -> list[str]:
        if "classes" in self.meta:  # [] for a store of unlabelled images (`clipkit embed`)
            return list(self.meta["classes"])
        return sorted(set(self.labels))

    @property
    def identity(self):
        from toolkit.identity import ExtractorIdentity

        return ExtractorIdentity.from_dict(self.meta["identity"])

    def split_indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.splits == split)

    @staticmethod
    def is_store(path: str | Path) -> bool:
        """Whether `path` looks like a feature store folder (complete or not)."""
        p = Path(path)
        return p.is_dir() and ((p / META).is_file() or (p / PLAN).is_file())

    @classmethod
    def open(cls, path: str | Path) -> "FeatureStore":
        p = Path(path)
        if not (p / META).is_file():
            if (p / PLAN).is_file():
                raise DataError(f"feature store '{path}' is incomplete (its extraction was interrupted); run "
                                f"`clipkit extract DATA --out {path}` again to resume it")
            raise DataError(f"'{path}' is not a feature store (no {META}); create one with `clipkit extract DATA --out {path}`")
        try:
            meta = json.loads((p / META).read_text())
            check_meta(meta, path)
            feats = np.load(p / FEATURES, mmap_mode="r", allow_pickle=False)
            with open(p / INDEX, newline="", encoding="utf-8", errors="surrogateescape") as f:
                index = list(csv.DictReader(f))
        except (OSError, ValueError, EOFError, csv.Error) as e:  # EOFError: an empty features.npy
            why = f"{FEATURES} is empty" if isinstance(e, EOFError) else f"{e.__class__.__name__}: {e}"
            raise DataError(f"feature store '{fsio.printable(str(path))}' is corrupt ({why}); delete it and "
                            "extract again") from None
        if not isinstance(feats, np.ndarray) or feats.dtype != np.float32:
            kind = feats.dtype if isinstance(feats, np.ndarray) else type(feats).__name__
            raise DataError(f"feature store '{fsio.printable(str(path))}' has {FEATURES} of dtype {kind}, but a "
                            f"store holds float32 features; delete it and extract again")
        if feats.ndim != 2 or feats.shape != (meta["count"], meta["dim"]) or len(index) != feats.shape[0] \
                or (len(index) and not {"path", "label", "split"} <= set(index[0])):
            raise DataError(f"feature store '{path}' is corrupt (features {feats.shape}, {len(index)} index rows, "
                            f"meta count {meta['count']}); delete it and extract again")
        return cls(p, feats, index, meta)

    def check_rows(self, chunk: int = _COPY_ROWS) -> None:
        """DataError unless every row is finite and of unit length, as the extractor writes them: call it
        before training or predicting on a store (one vectorised pass over the file, `chunk` rows at a time)."""
        bad, first = 0, None
        for start in range(0, len(self), chunk):
            x = np.asarray(self.features[start:start + chunk], np.float32)
            with np.errstate(all="ignore"):
                sq = np.einsum("ij,ij->i", x, x)
            wrong = np.flatnonzero(~(np.abs(sq - 1) <= _NORM_TOL))  # NaN and inf fail the comparison
            bad += len(wrong)
            if first is None and len(wrong):
                first = start + int(wrong[0])
        if bad:
            raise DataError(f"feature store '{self.path}' has {bad} of {len(self)} row(s) that are not finite unit "
                            f"vectors (first: row {first}, {self.paths[first]}): its features are damaged; "
                            f"extract again (delete '{self.path}' and run `clipkit extract` or `clipkit embed`)")

    def checksum_mismatch(self) -> Optional[str]:
        """Why features.npy doesn't match the sha256 recorded in meta.json (None when it does, or when the
        store is older than the checksum)."""
        want = self.meta.get("features_sha256")
        if want is None:
            return None
        got = features_sha256(self.path / FEATURES)
        return None if got == want else f"{FEATURES} sha256 {got[:12]}... differs from {META}'s {want[:12]}..."


def write_store(out: str | Path, features: np.ndarray, labels: Sequence[str], splits: Sequence[str],
                identity: dict[str, Any], paths: Optional[Sequence[str]] = None) -> "FeatureStore":
    """Write a complete store from arrays (features computed elsewhere, or synthetic ones for tests and
    benchmarks). `identity` is an ExtractorIdentity dict; rows are taken as given (no normalization)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / META).unlink(missing_ok=True)
    feats = np.asarray(features, np.float32)
    paths = list(paths) if paths is not None else [f"row{i}" for i in range(len(feats))]
    ds = LabelledDataset(out, paths, list(labels), list(splits), sorted(set(labels)))
    fsio.save(out / FEATURES, lambda tmp: np.save(tmp, feats))
    _write_atomic(out / INDEX, _index_csv(ds, np.arange(len(feats))))
    plan = {"identity": identity, "dim": feats.shape[1], "fingerprint": None, "batch_size": None}
    meta = _meta(ds, np.arange(len(feats)), plan, [], {"features_sha256": features_sha256(out / FEATURES)})
    _write_atomic(out / META, json.dumps(meta, indent=2))
    return FeatureStore.open(out)


class StoreWriter:
    """Fills the rows of an unfinished store, batch by batch. Several processes may each hold a StoreWriter
    on the same folder (after one of them called `create_or_resume`) and write disjoint batches."""

    def __init__(self, out: str | Path, writer: str = "main"):
        self.out, self.writer = Path(out), writer
        try:
            self.plan = json.loads((self.out / PLAN).read_text())
        except (OSError, ValueError) as e:
            raise DataError(f"'{out}' has no readable extraction plan ({e}); start the extraction again") from None
        self.batch_size, self.n_rows = int(self.plan["batch_size"]), int(self.plan["n_rows"])
        self._features: Optional[np.memmap] = None
        self.note: Optional[str] = None  # set by reuse_or_plan when a damaged complete store is extracted again

    @classmethod
    def create_or_resume(cls, out: str | Path, dataset: LabelledDataset, identity, fp: str,
                         batch_size: int) -> "StoreWriter":
        """Resume an unfinished extraction of the same files by the same extractor, else start afresh."""
        out = Path(out)
        plan_path = out / PLAN
        if plan_path.is_file() and (out / PARTIAL).is_file():
            try:
                plan = json.loads(plan_path.read_text())
            except ValueError:
                plan = {}
            if plan.get("fingerprint") == fp and plan.get("n_rows") == len(dataset):
                return cls(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / META).unlink(missing_ok=True)  # first: from here on the folder is not a complete store
        for name in (FEATURES, INDEX, PARTIAL):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / PROGRESS, ignore_errors=True)
        (out / PROGRESS).mkdir()
        dim = int(identity.embed_dim)
        what = f"the feature store ({len(dataset)} x {dim} float32)"
        try:  # real blocks now: a memory-mapped write into a full disk would end the process with SIGBUS
            with fsio.space_errors(out, what, 4 * dim * len(dataset)):
                np.lib.format.open_memmap(out / PARTIAL, mode="w+", dtype=np.float32,
                                          shape=(len(dataset), dim)).flush()
            fsio.reserve(out / PARTIAL, (out / PARTIAL).stat().st_size, what)
        except BaseException:
            (out / PARTIAL).unlink(missing_ok=True)
            raise
        _write_atomic(plan_path, json.dumps({"fingerprint": fp, "n_rows": len(dataset), "dim": dim,
                                             "batch_size": int(batch_size), "identity": identity.to_dict(),
                                             "started": time.time()}, indent=2))
        return cls(out)

    @property
    def n_batches(self) -> int:
        return -(-self.n_rows // self.batch_size)

    def batch_rows(self, batch: int) -> np.ndarray:
        return np.arange(batch * self.batch_size, min((batch + 1) * self.batch_size, self.n_rows))

    def finished(self) -> dict[int, dict[int, str]]:
        """{batch: {row: error}} over every writer's progress file (a torn last line is ignored)."""
        done: dict[int, dict[int, str]] = {}
        for f in sorted((self.out / PROGRESS).glob("*.jsonl")):
            for line in f.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                    done[int(rec["batch"])] = {int(k): v for k, v in rec["errors"].items()}
                except (ValueError, KeyError, TypeError):
                    continue
        return done

    def pending_batches(self, shard: int = 0, n_shards: int = 1) -> list[int]:
        """Unfinished batches; with n_shards > 1, only those with batch % n_shards == shard."""
        done = self.finished()
        return [b for b in range(self.n_batches) if b not in done and b % n_shards == shard]

    def write(self, batch: int, rows: np.ndarray, feats: np.ndarray, errors: dict[int, str]) -> None:
        """Store (len(rows), D) features at dataset rows `rows`; then record the batch (and its failed rows) done."""
        if self._features is None:
            self._features = np.lib.format.open_memmap(self.out / PARTIAL, mode="r+")
        if len(rows):
            self._features[np.asarray(rows)] = feats
            self._features.flush()
        line = json.dumps({"batch": int(batch), "errors": {str(k): v for k, v in errors.items()}})
        with open(self.out / PROGRESS / f"{self.writer}.jsonl", "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def finalize(self, dataset: LabelledDataset, extra_meta: Optional[dict[str, Any]] = None) -> FeatureStore:
        """Compact the finished rows into features.npy, write index.csv, then meta.json (last, atomically)."""
        done = self.finished()
        missing = [b for b in range(self.n_batches) if b not in done]
        if missing:
            raise DataError(f"store '{self.out}' still has {len(missing)} unfinished batch(es) (first: {missing[0]}); "
                            "run the extraction again to finish it")
        errors = {r: e for errs in done.values() for r, e in errs.items()}
        ok = np.asarray([i for i in range(self.n_rows) if i not in errors], dtype=np.int64)
        if len(ok) == 0:
            first = next(iter(errors.values()), "no rows")
            raise DataError(f"none of the {self.n_rows} images in '{dataset.root}' could be read (first: {first}); "
                            "check the files")
        self._features = None
        self._compact(ok, len(errors) > 0)
        _write_atomic(self.out / INDEX, _index_csv(dataset, ok))
        skipped = [{"row": int(r), "path": dataset.paths[r], "error": errors[r]} for r in sorted(errors)]
        meta = _meta(dataset, ok, self.plan, skipped,
                     {**(extra_meta or {}), "features_sha256": features_sha256(self.out / FEATURES)})
        _write_atomic(self.out / META, json.dumps(meta, indent=2))
        (self.out / PLAN).unlink(missing_ok=True)
        shutil.rmtree(self.out / PROGRESS, ignore_errors=True)
        return FeatureStore.open(self.out)

    def _compact(self, ok: np.ndarray, any_failed: bool) -> None:
        if not any_failed:  # every row is good: the partial file is the final file
            os.replace(self.out / PARTIAL, self.out / FEATURES)
            return
        def copy_ok_rows(tmp: Path) -> None:
            src = np.load(self.out / PARTIAL, mmap_mode="r")
            dst = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(ok), src.shape[1]))
            fsio.reserve(tmp, tmp.stat().st_size, f"the compacted {FEATURES} ({len(ok)} rows)")
            for start in range(0, len(ok), _COPY_ROWS):
                dst[start:start + _COPY_ROWS] = src[ok[start:start + _COPY_ROWS]]
            dst.flush()

        fsio.save(self.out / FEATURES, copy_ok_rows)
        (self.out / PARTIAL).unlink()


def _index_csv(dataset: LabelledDataset, rows: np.ndarray) -> str:
    import io

    buf = io.StringIO()
    w = fsio.csv_writer(buf, safe=False)  # names kept as they are; a CR in one is quoted too
    w.writerow(["row", "path", "label", "split"])
    for new, old in enumerate(rows):
        w.writerow([new, dataset.paths[old], dataset.labels[old], dataset.splits[old]])
    return buf.getvalue()


def _meta(dataset: LabelledDataset, rows: np.ndarray, plan: dict[str, Any], skipped: list[dict[str, Any]],
          extra: dict[str, Any]) -> dict[str, Any]:
    ident = plan["identity"]
    labels = Counter(dataset.labels[i] for i in rows)
    multi = {"multi_label": True} if getattr(dataset, "multi_label", False) else {}  # labels are 'a|b' sets
    if multi:
        labels = Counter(lb for i in rows for lb in dataset.labels[i].split("|") if lb)
    splits = Counter(dataset.splits[i] for i in rows)
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "count": int(len(rows)), "dim": int(plan["dim"]),
        "dtype": "float32", "normalized": True, "identity": ident,
        "preprocessing": {k: ident.get(k) for k in ("image_size", "mean", "std", "interpolation", "resize_mode")},
        "classes": list(dataset.classes), "dataset_root": str(dataset.root),
        "split_counts": {s: splits[s] for s in ("train", "val", "test")},
        "class_counts": {c: labels[c] for c in dataset.classes},
        "fingerprint": plan["fingerprint"], "batch_size": plan["batch_size"],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "extraction_s": round(time.time() - float(plan.get("started", time.time())), 3),
        "skipped": skipped, **multi, **extra,
    }


def relabel(store: FeatureStore, dataset: LabelledDataset) -> FeatureStore:
    """Same files and extractor, but labels or splits changed (e.g. another seed): rewrite index + meta only."""
    pos = {p: i for i, p in enumerate(dataset.paths)}
    rows = np.asarray([pos[p] for p in store.paths], dtype=np.int64)
    if [dataset.labels[i] for i in rows] == list(store.labels) and \
            [dataset.splits[i] for i in rows] == list(store.splits):
        return store
    _write_atomic(store.path / INDEX, _index_csv(dataset, rows))
    kept = {k: store.meta[k] for k in ("features_sha256", "extraction") if k in store.meta}
    meta = _meta(dataset, rows, {**store.meta, "n_rows": len(dataset)}, store.meta.get("skipped", []), kept)
    meta["created"] = store.meta.get("created", meta["created"])
    _write_atomic(store.path / META, json.dumps(meta, indent=2))
    return FeatureStore.open(store.path)
