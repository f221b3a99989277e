"""Where clipkit runs: the device choice, the CPU thread count and the cache root, one helper each. torch is
imported inside the functions, so importing this module costs nothing."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping, Optional

from toolkit.errors import ModelError

if TYPE_CHECKING:
    import torch


def resolve_device(device: str = "auto") -> "torch.device":
    """'auto' -> cuda when available, else cpu; 'cuda' without CUDA is a ModelError (field `device`); anything
    else ('cpu', 'cuda:1') is passed to torch.device."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device '{device}' requested but CUDA is not available; use {{field}} cpu or {{field}} auto",
                         field="device")
    return torch.device(device)


@contextmanager
def torch_threads(n: int, device: Optional["torch.device"] = None) -> Iterator[None]:
    """Run torch's CPU ops on `n` threads inside the block (no-op when `device` is a GPU); restores the old count.

    Small batches (a linear layer, L-BFGS on cached features) gain nothing from more, and on a busy machine extra
    OpenMP threads spin and wait: measured 1.1 ms/step on 1 thread vs 21 ms on 2 (BENCHMARKS.md)."""
    import torch

    before = torch.get_num_threads()
    if device is None or device.type == "cpu":
        torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cache_root(environ: Optional[Mapping[str, str]] = None) -> Path:
    """clipkit's cache folder: $XDG_CACHE_HOME/clipkit, else ~/.cache/clipkit (feature stores of train-probe,
    rebuilt model configs). `environ` defaults to the process environment."""
    env = os.environ if environ is None else environ
    return Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "clipkit"
