"""What a command's DATA argument becomes: a feature store opened as is, or a dataset (image folder or CSV)
extracted into one (reused when unchanged), with the extractor that matches it. The CLI and scripts call
`open_data` / `store_and_extractor`; the one "store made by another model" error lives here.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional

from toolkit.errors import DataError


def default_store_dir(data: str | Path, identity, root: str | Path) -> Path:
    """Where a dataset's features are cached under `root` (e.g. runtime.cache_root() / "stores"): one folder
    per (dataset path, extractor)."""
    from toolkit.data.datasets import dataset_name

    key = json.dumps([str(Path(data).resolve()), identity.features_key()], sort_keys=True)
    return Path(root) / f"{dataset_name(data)}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def check_store_model(store, identity) -> None:
    """DataError (field `model`) when the store's features come from another extractor than `identity`'s."""
    reason = identity.mismatch(store.identity)
    if reason:
        raise DataError(f"store '{store.path}' holds features of {store.identity.label}, but the loaded model is "
                        f"{identity.label} ({reason}); leave {{field}} unset to use the store's own model",
                        field="model")


def open_data(data: str | Path, probe_cfg) -> tuple[Any, Any, list[str], str]:
    """(dataset or None, store or None, classes, dataset name): DATA is an image folder, a CSV or a store (whose
    rows are checked now: one line for NaN or garbage rows, before any model load)."""
    from toolkit.data.datasets import dataset_name
    from toolkit.data.store import FeatureStore

    if FeatureStore.is_store(data):
        store = FeatureStore.open(data)
        store.check_rows()
        store.reused = True  # given as DATA: used as is
        return None, store, store.classes, dataset_name(store.meta.get("dataset_root") or data)
    from toolkit.data.multilabel import load_any

    p = probe_cfg  # a multi-label CSV/JSON Lines file (or probe.multi_label) gives a MultiLabelDataset
    ds = load_any(data, p.seed, p.val_fraction, p.test_fraction, getattr(p, "multi_label", None))
    return ds, None, ds.classes, dataset_name(data)


def store_and_extractor(data: str | Path, cfg, stores_root: str | Path, store_dir: Optional[str | Path] = None,
                        progress: bool = False, opened: Optional[tuple] = None) -> tuple[Any, Any, str]:
    """(store, extractor, dataset name) for DATA. A store builds the model it records unless cfg names one
    (identity.adopt_model), and must match it; a dataset is extracted into `store_dir`, else into its
    `default_store_dir` under `stores_root`. `opened`: what `open_data` already returned for DATA."""
    from toolkit.data.extraction import extract_store
    from toolkit.encoder.features import FeatureExtractor
    from toolkit.identity import adopt_model

    dataset, store, _, name = opened or open_data(data, cfg.probe)
    if store is not None:
        extractor = FeatureExtractor.from_config(adopt_model(cfg, store.identity, f"store '{data}'").model)
        check_store_model(store, extractor.identity)
        return store, extractor, name
    extractor = FeatureExtractor.from_config(cfg.model)
    where = Path(store_dir) if store_dir else default_store_dir(data, extractor.identity, stores_root)
    store = extract_store(extractor, dataset, where, progress=progress)
    store.check_rows()
    return store, extractor, name
