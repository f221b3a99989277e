"""Gathering batches of image features into one array: what both extractors' `encode_paths` do (the torch
FeatureExtractor and the ONNX Runtime one of encoder/fast.py). numpy and tqdm only."""
from __future__ import annotations

from typing import Iterable

import numpy as np


def gather(batches: Iterable[tuple[list[int], np.ndarray, dict[int, str]]], n: int, dim: int,
           progress: bool = False) -> tuple[np.ndarray, dict[int, str]]:
    """(row indices, (k, D) features, {index: error}) batches over `n` images -> ((n, D) features with NaN rows
    for failures, {index: error message}); a progress bar on stderr with `progress`."""
    from tqdm import tqdm

    feats = np.full((n, dim), np.nan, np.float32)
    errors: dict[int, str] = {}
    with tqdm(total=n, unit="img", desc="encoding", disable=not progress, leave=False) as bar:
        for idx, f, errs in batches:
            feats[idx] = f
            errors.update(errs)
            bar.update(len(idx) + len(errs))
    return feats, errors
