"""One rank's share of a distributed extraction (extraction.extract_distributed): the store's pending batches
decoded by DataLoader workers and encoded by the torch extractor Lightning placed on the rank's device, each
written as its own rows of the one store. Kept apart from extraction.py so that extracting in one process
(the ONNX Runtime fast path) never imports torch.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from toolkit.data.store import StoreWriter
from toolkit.encoder.features import as_is, collate_images, quiet_worker


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
    """A job for distributed.run_sharded: each rank encodes its share of the store's pending batches."""

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
        return DataLoader(ds, batch_size=None, num_workers=workers, worker_init_fn=quiet_worker, collate_fn=as_is)

    def start(self, device: torch.device) -> None:
        """Nothing to do: Lightning has moved the model to `device`, and the extractor reads its device from it."""

    def step(self, batch) -> None:
        b, rows, tensor, errors = batch
        feats = self.extractor.encode_batch(tensor) if tensor is not None else \
            np.zeros((0, self.extractor.embed_dim), np.float32)
        self.writer.write(b, np.asarray(rows, dtype=np.int64), feats, errors)
