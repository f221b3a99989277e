"""A persistent cache of prompt embeddings: a label set seen before never touches the text tower again.

One file per model (the fast path keeps it in the model's folder, encoder/fast.py, so a model whose identity
or weights change starts a new one): `texts.safetensors` holds an (n, D) float32 array of L2-normalized
embeddings and, in its metadata, the n prompts they belong to (a prompt is a template with its label in place,
so the key is model + label + template). Rewritten atomically with what it held plus the new prompts;
two processes adding at once may drop each other's additions (they are encoded again later), never corrupt
the file. Past `max_entries` the oldest prompts are dropped.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

MAX_ENTRIES = 50_000  # ~100 MB at 512 dims


class TextEmbeddingCache:
    def __init__(self, path: str | Path, max_entries: int = MAX_ENTRIES):
        self.path, self.max_entries = Path(path), max_entries
        self._loaded: dict[str, np.ndarray] | None = None

    def _read(self) -> dict[str, np.ndarray]:
        """The file's prompts -> embeddings, in the order they were added; {} when missing or unreadable."""
        from safetensors import safe_open

        try:
            with safe_open(str(self.path), framework="np") as f:
                prompts = json.loads((f.metadata() or {}).get("prompts", "[]"))
                emb = f.get_tensor("emb")
        except FileNotFoundError:
            return {}
        except Exception:  # damaged or from another version: a cache, so start over
            return {}
        if emb.ndim != 2 or len(prompts) != len(emb) or not np.isfinite(emb).all():
            return {}
        return dict(zip(prompts, emb))

    def lookup(self, prompts: Sequence[str]) -> dict[str, np.ndarray]:
        """The cached embeddings among `prompts` ((D,) float32 each)."""
        if self._loaded is None:
            self._loaded = self._read()
        return {p: self._loaded[p] for p in prompts if p in self._loaded}

    def add(self, fresh: dict[str, np.ndarray]) -> None:
        """Add prompts -> (D,) embeddings and rewrite the file atomically (merged with what it holds now)."""
        if not fresh:
            return
        from safetensors.numpy import save

        from toolkit.fsio import write_bytes

        merged = self._read()
        dims = {len(v) for v in merged.values()} | {len(v) for v in fresh.values()}
        if len(dims) > 1:  # another model's file: replace it
            merged = {}
        merged.update(fresh)
        keep = list(merged)[-self.max_entries:]
        emb = np.stack([np.asarray(merged[p], np.float32) for p in keep])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(self.path, save({"emb": np.ascontiguousarray(emb)}, metadata={"prompts": json.dumps(keep)}))
        self._loaded = {p: merged[p] for p in keep}
