"""Distributed extraction into a feature store: `clipkit extract --devices N --num-nodes M`.

The store's batches are sharded over processes (trainer.run_sharded: Lightning DDP, gloo on CPU, NCCL on
GPUs); each rank writes its own rows of the one feature store (StoreWriter with a per-rank progress file) and
rank 0 finalizes it. Batch b goes to rank b % world_size, so every rank encodes exactly the batches a single
process would: the store comes out the same. Lightning itself is imported only by trainer.py.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .features import collate_images
from .store import FeatureStore, StoreWriter, reuse_or_plan, writing


class _StoreBatches(Dataset):
    """Item k: store batch `batches[k]` decoded and preprocessed: (batch, [rows ok], tensor or None, {row: error})."""

    def __init__(self, extractor: Any, paths: list[str], writer: StoreWriter, batches: list[int]):
        self.images, self.writer, self.batches = extractor.path_dataset(paths), writer, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int):
        b = self.batches[k]
        rows, tensor, errors = collate_images([self.images[int(r)] for r in self.writer.batch_rows(b)])
        return b, rows, tensor, errors


class StoreExtraction:
    """A job for trainer.run_sharded: each rank encodes its share of the store's pending batches."""

    def __init__(self, extractor: Any, paths: list[str], store_dir: str, num_workers: int = -1):
        self.extractor, self.model = extractor, extractor.model
        self.paths, self.store_dir, self.num_workers = paths, store_dir, num_workers
        self.writer: Optional[StoreWriter] = None

    def loader(self, rank: int, world: int, local: int, device: torch.device) -> DataLoader:
        self.writer = StoreWriter(self.store_dir, writer=f"rank{rank}")
        cores = os.cpu_count() or 1
        if device.type == "cpu":  # processes share the cores: one rank must not take them all
            torch.set_num_threads(max(1, cores // local))
        workers = self.num_workers if self.num_workers >= 0 else min(4, max(0, cores // local - 1))
        ds = _StoreBatches(self.extractor, self.paths, self.writer, self.writer.pending_batches(rank, world))
        return DataLoader(ds, batch_size=None, num_workers=workers)

    def start(self, device: torch.device) -> None:
        self.extractor.device = device

    def step(self, batch) -> None:
        b, rows, tensor, errors = batch
        feats = self.extractor.encode_batch(tensor) if tensor is not None else \
            np.zeros((0, self.extractor.embed_dim), np.float32)
        self.writer.write(b, np.asarray(rows, dtype=np.int64), feats, errors)


def extract_distributed(extractor: Any, dataset: Any, out: str, devices: int = 1, num_nodes: int = 1,
                        strategy: str = "ddp", progress: bool = False, num_workers: Optional[int] = None):
    """Extract `dataset` into the store `out` over devices x num_nodes processes.

    Returns the complete FeatureStore on global rank 0 and None on the other ranks. With the "ddp" strategy
    each extra local process re-runs the calling command and arrives here too: the store's plan (created or
    resumed by the first process) is what they share, so nodes need one shared filesystem path for `out`.
    A complete store of the same files by the same extractor is reused as is.
    """
    from .trainer import run_sharded

    # the launching process (no LOCAL_RANK / NODE_RANK yet) holds the store's lock for the whole job; the ranks
    # it starts share its plan and write disjoint batches
    launcher = os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"
    with writing(out) if launcher else contextlib.nullcontext():
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
