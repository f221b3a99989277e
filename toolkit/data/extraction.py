"""Extraction into feature stores (store.py is the format): one writer at a time (OUT/.lock), reuse of a complete
store of the same files by the same model (`fingerprint`), resume of an interrupted one, `extract_store` in one
process, and `extract_distributed` for `clipkit extract|embed --devices N --num-nodes M`.

`extract_store` takes any extractor with `identity`, `embed_dim`, `cfg.batch_size` and `iter_path_batches`: the
fast path's OnnxExtractor (encoder/fast.py; `clipkit extract|embed` in one CPU process) or the torch
FeatureExtractor. This module imports neither torch nor scikit-learn, so the fast path never pays for them.

The store's batches are sharded over processes (distributed.run_sharded: Lightning DDP, gloo on CPU, NCCL on
GPUs; a rank's job is sharded.StoreExtraction, the torch side); each rank writes its own rows of the one feature
store (StoreWriter with a per-rank progress file) and rank 0 finalizes it. Batch b goes to rank b % world_size, so
every rank encodes exactly the batches a single process would: the store comes out the same. Lightning is imported
only by data/distributed.py and fitting/trainer.py.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

from toolkit import fsio
from toolkit.data.datasets import LabelledDataset
from toolkit.errors import DataError
from toolkit.data.store import LOCK, META, FeatureStore, StoreWriter, relabel


# ---------------------------------------------------------------- one writer at a time

def writing(out: str | Path):
    """Hold OUT/.lock while the block writes the store at `out` (fsio.held_lock): a lock of a live process
    raises DataError; a stale one (its process is gone, e.g. killed with -9) is taken over."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return fsio.held_lock(out / LOCK, f"store '{fsio.printable(str(out))}'")


def fingerprint(dataset: LabelledDataset, identity) -> str:
    """sha256 over the files' (path, size, mtime) in dataset order and the extractor's identity."""
    h = hashlib.sha256(json.dumps(identity.features_key(), sort_keys=True).encode())
    for p in dataset.paths:
        try:
            st = os.stat(p)
            h.update(os.fsencode(p) + f"\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:  # a dangling link or a file gone since listing: its row becomes an error entry
            h.update(os.fsencode(p) + b"\0missing\n")
    return h.hexdigest()


# ---------------------------------------------------------------- reuse, plan, fill

def _reusable(out: Path, fp: str, dataset: LabelledDataset) -> tuple[Optional[FeatureStore], Optional[str]]:
    """(the complete store at `out` if it holds these files by this extractor, undamaged; else why not, when
    there is one that can't be reused)."""
    if not (out / META).is_file():
        return None, None
    try:
        store = FeatureStore.open(out)
    except DataError as e:
        return None, f"the store there was damaged ({e.message.split(': ', 1)[-1][:120]})"
    if store.meta.get("fingerprint") != fp:
        return None, None
    mismatch = store.checksum_mismatch()
    if mismatch:
        return None, f"the store there was damaged ({mismatch})"
    return relabel(store, dataset), None


def reuse_or_plan(extractor, dataset: LabelledDataset, out: str | Path,
                  batch_size: Optional[int] = None) -> "FeatureStore | StoreWriter":
    """The complete store of the same files by the same extractor at `out` (marked `reused`), or else a
    StoreWriter for it: created, or resumed from an interrupted extraction with the same plan. A store whose
    features.npy no longer matches its checksum is extracted again (the writer's `note` says so)."""
    out = Path(out)
    fp = fingerprint(dataset, extractor.identity)
    store, why_not = _reusable(out, fp, dataset)
    if store is not None:
        store.reused = True
        return store
    writer = StoreWriter.create_or_resume(out, dataset, extractor.identity, fp,
                                          batch_size or extractor.cfg.batch_size)
    writer.note = f"extracted again: {why_not}" if why_not else None
    return writer


def extract_store(extractor, dataset: LabelledDataset, out: str | Path, batch_size: Optional[int] = None,
                  progress: bool = False, num_workers: Optional[int] = None) -> FeatureStore:
    """Encode every image of `dataset` into a store at `out`; reuse or resume an existing one when possible.

    Memory stays flat: each batch goes straight into a memory-mapped file. Unreadable images are skipped
    and listed in meta.json. A complete store of the same files by the same extractor is returned as is.
    """
    with writing(out), fsio.space_errors(out, "the feature store"):
        writer = reuse_or_plan(extractor, dataset, out, batch_size)
        if isinstance(writer, FeatureStore):
            return writer
        try:
            _fill(writer, extractor, dataset, progress, num_workers)
            store = writer.finalize(dataset)
        except KeyboardInterrupt as e:  # Ctrl-C / SIGTERM: the finished batches stay, meta.json is not written
            e.__notes__ = [*getattr(e, "__notes__", ()), f"store '{out}' is unfinished: run the same command "
                           "again to resume it"]
            raise
    store.note = writer.note
    return store


def _fill(writer: StoreWriter, extractor, dataset: LabelledDataset, progress: bool,
          num_workers: Optional[int]) -> None:
    """Encode the writer's pending batches of `dataset` into its store. The extractor's batches need not line
    up with the store's (the fast path encodes one image first): its results are gathered in order and each
    store batch is written as soon as all its rows are in."""
    from tqdm import tqdm

    pending = writer.pending_batches()
    rows = np.concatenate([writer.batch_rows(b) for b in pending]) if pending else np.zeros(0, np.int64)
    ends = np.cumsum([len(writer.batch_rows(b)) for b in pending])  # positions in `rows` where each batch ends
    paths = [dataset.paths[i] for i in rows]
    ok = np.zeros(0, np.int64)  # positions encoded but not written yet, and their features
    feats_due = np.zeros((0, extractor.embed_dim), np.float32)
    errors_due: dict[int, str] = {}
    seen = k = 0
    with tqdm(total=len(dataset), initial=len(dataset) - len(rows), unit="img", desc="extracting",
              disable=not progress, leave=False) as bar:
        for idx, feats, errors in extractor.iter_path_batches(paths, writer.batch_size, num_workers):
            ok = np.concatenate([ok, np.asarray(idx, np.int64)])
            feats_due = np.concatenate([feats_due, feats])
            errors_due.update(errors)
            seen += len(idx) + len(errors)
            bar.update(len(idx) + len(errors))
            while k < len(pending) and seen >= ends[k]:
                now = ok < ends[k]
                writer.write(pending[k], rows[ok[now]], feats_due[now],
                             {int(rows[i]): e for i, e in errors_due.items() if i < ends[k]})
                ok, feats_due = ok[~now], feats_due[~now]
                errors_due = {i: e for i, e in errors_due.items() if i >= ends[k]}
                k += 1
    if k != len(pending) or seen != len(rows):
        raise RuntimeError(f"the extractor returned {seen} of {len(rows)} images")


# ---------------------------------------------------------------- over several processes

def extract_distributed(extractor: Any, dataset: Any, out: str, devices: int = 1, num_nodes: int = 1,
                        strategy: str = "ddp", progress: bool = False, num_workers: Optional[int] = None):
    """Extract `dataset` into the store `out` over devices x num_nodes processes.

    Returns the complete FeatureStore on global rank 0 and None on the other ranks. With the "ddp" strategy
    each extra local process re-runs the calling command and arrives here too: the store's plan (created or
    resumed by the first process) is what they share, so nodes need one shared filesystem path for `out`.
    A complete store of the same files by the same extractor is reused as is.
    """
    from toolkit.data.distributed import run_sharded
    from toolkit.data.sharded import StoreExtraction

    # the launching process (no LOCAL_RANK / NODE_RANK yet) holds the store's lock for the whole job; the ranks
    # it starts share its plan and write disjoint batches
    launcher = os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"
    with writing(out) if launcher else contextlib.nullcontext(), fsio.space_errors(out, "the feature store"):
        writer = reuse_or_plan(extractor, dataset, out)
        if isinstance(writer, FeatureStore):
            return writer
        workers = extractor.cfg.num_workers if num_workers is None else num_workers
        job = StoreExtraction(extractor, list(dataset.paths), str(out), workers)
        accelerator = "gpu" if extractor.device.type == "cuda" else "cpu"
        rank, world = run_sharded(job, accelerator, devices, num_nodes, strategy, progress)
        if rank != 0:
            return None
        return writer.finalize(dataset, {"extraction": {"devices": devices, "num_nodes": num_nodes,
                                                        "strategy": strategy, "world_size": world}})
