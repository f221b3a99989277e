"""Feature stores: streaming extraction, resume after an interruption, reuse, skipped files, completeness."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from test_data import make_folder
from toolkit.data.datasets import load_dataset
from toolkit.errors import DataError
from toolkit.data.store import FeatureStore, StoreWriter
from toolkit.data.extraction import extract_store


class Interrupting:
    """The real extractor, interrupted (like Ctrl-C) after `stop_after` batches; counts the images it encodes."""

    def __init__(self, extractor, stop_after=None):
        self.inner, self.stop_after, self.encoded = extractor, stop_after, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def iter_path_batches(self, paths, batch_size=None, num_workers=None):
        for n, item in enumerate(self.inner.iter_path_batches(paths, batch_size, num_workers)):
            if self.stop_after is not None and n == self.stop_after:
                raise KeyboardInterrupt
            self.encoded += len(item[0]) + len(item[2])
            yield item


@pytest.fixture()
def dataset(tmp_path):
    return load_dataset(make_folder(tmp_path / "ds", {"a": 6, "b": 6, "c": 6}), seed=0)


def test_extract_writes_a_complete_memmappable_store(tiny_extractor, dataset, tmp_path):
    store = extract_store(tiny_extractor, dataset, tmp_path / "st", batch_size=4)
    assert sorted(os.listdir(tmp_path / "st")) == ["features.npy", "index.csv", "meta.json"]
    assert isinstance(store.features, np.memmap) and store.features.dtype == np.float32
    assert store.features.shape == (18, tiny_extractor.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(store.features, axis=1), 1, atol=1e-5)
    assert list(store.paths) == dataset.paths and list(store.splits) == dataset.splits
    direct, _ = tiny_extractor.encode_paths(dataset.paths)
    np.testing.assert_allclose(store.features, direct, atol=1e-5)
    meta = store.meta
    assert meta["count"] == 18 and meta["identity"] == tiny_extractor.identity.to_dict()
    assert meta["preprocessing"]["image_size"] == tiny_extractor.identity.image_size and meta["created"]
    assert store.identity == tiny_extractor.identity


def test_interrupted_extraction_resumes_without_redoing_batches(tiny_extractor, dataset, tmp_path):
    out = tmp_path / "st"
    with pytest.raises(KeyboardInterrupt):
        extract_store(Interrupting(tiny_extractor, stop_after=2), dataset, out, batch_size=4)
    assert not (out / "meta.json").exists()
    with pytest.raises(DataError, match="incomplete .* resume"):
        FeatureStore.open(out)
    resumed = Interrupting(tiny_extractor)
    store = extract_store(resumed, dataset, out, batch_size=4)
    assert resumed.encoded == 18 - 2 * 4  # the two finished batches were not encoded again
    fresh = extract_store(tiny_extractor, dataset, tmp_path / "fresh", batch_size=4)
    np.testing.assert_allclose(store.features, fresh.features, atol=1e-6)
    assert not (out / "progress").exists() and not (out / "extract.json").exists()


def test_unchanged_files_reuse_the_store_and_changed_files_reencode(tiny_extractor, dataset, tmp_path):
    out = tmp_path / "st"
    first = extract_store(tiny_extractor, dataset, out, batch_size=4)
    again = Interrupting(tiny_extractor)
    second = extract_store(again, dataset, out, batch_size=4)
    assert again.encoded == 0 and second.reused and second.meta["created"] == first.meta["created"]
    reseeded = load_dataset(dataset.root, seed=5)  # same files, other split: only the index changes
    third = extract_store(again, reseeded, out)
    assert again.encoded == 0 and list(third.splits) == reseeded.splits
    os.utime(dataset.paths[0], (1, 1))  # touched file: the fingerprint changes
    fourth = extract_store(again, load_dataset(dataset.root, seed=0), out)
    assert again.encoded == 18 and not fourth.reused


def test_unreadable_images_are_skipped_and_listed(tiny_extractor, dataset, tmp_path):
    with open(dataset.paths[5], "wb") as f:
        f.write(b"not an image")
    store = extract_store(tiny_extractor, dataset, tmp_path / "st", batch_size=4)
    assert len(store) == 17 and dataset.paths[5] not in set(store.paths)
    (skipped,) = store.meta["skipped"]
    assert skipped["path"] == dataset.paths[5] and "not a readable image" in skipped["error"]
    ok = [p for i, p in enumerate(dataset.paths) if i != 5]
    direct, _ = tiny_extractor.encode_paths(ok)
    np.testing.assert_allclose(store.features, direct, atol=1e-5)


def test_two_writers_fill_disjoint_shards_of_one_store(tiny_extractor, dataset, tmp_path):
    """The layout issue 8 builds on: processes write their own batches into one fixed-size file."""
    from toolkit.data.extraction import fingerprint

    out = tmp_path / "st"
    StoreWriter.create_or_resume(out, dataset, tiny_extractor.identity, fingerprint(dataset, tiny_extractor.identity), 4)
    for rank in (0, 1):
        w = StoreWriter(out, writer=f"rank{rank}")
        for b in w.pending_batches(shard=rank, n_shards=2):
            rows = w.batch_rows(b)
            feats, _ = tiny_extractor.encode_paths([dataset.paths[i] for i in rows])
            w.write(b, rows, feats, {})
    assert sorted(p.name for p in (out / "progress").iterdir()) == ["rank0.jsonl", "rank1.jsonl"]
    store = StoreWriter(out).finalize(dataset)
    direct, _ = tiny_extractor.encode_paths(dataset.paths)
    np.testing.assert_allclose(store.features, direct, atol=1e-5)


def test_corrupt_or_foreign_folders_are_not_stores(tmp_path):
    with pytest.raises(DataError, match="not a feature store"):
        FeatureStore.open(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"format": "clipkit-feature-store", "count": 3, "dim": 2}))
    with pytest.raises(DataError, match="corrupt"):
        FeatureStore.open(tmp_path)
