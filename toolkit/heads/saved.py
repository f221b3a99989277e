"""Reading a head folder's head.safetensors: only the tensors its head type needs, each checked against the
shape head.json implies before a byte of it is read.

safetensors' `safe_open` reads the file's header (names, dtypes, shapes, offsets) and maps the file; a tensor's
data is read only when asked for. So a head.safetensors with a huge extra tensor (3 GB, sparse on disk) costs
nothing, and a `coef` whose declared shape doesn't match the classes in head.json is refused before it is read.

    tensors = read_head_tensors(folder / "head.safetensors", doc)   # {name: float32 array}
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

# head.json "type" -> the tensors that type reads; a legacy linear head ("clipkit-linear-probe") is "linear"
NEEDED: dict[str, tuple[str, ...]] = {"linear": ("coef", "intercept"), "zeroshot": ("coef",),
                                      "cache": ("coef", "keys", "values")}
_FLOATS = {"F16", "BF16", "F32", "F64"}


def expected_shapes(doc: dict[str, Any], type_name: str) -> dict[str, tuple[Optional[int], ...]]:
    """{tensor: shape} for a head.json document; None where head.json doesn't fix a size (the embedding
    width of a legacy head, the number of cache keys when n_keys is absent): those must agree across tensors."""
    classes = doc.get("classes")
    c = len(classes) if isinstance(classes, list) else None  # not a list: the head's own check says so
    d = _count(doc, "embed_dim")
    n = _count(doc, "n_keys")
    shapes = {"coef": (c, d), "intercept": (c,), "keys": (n, d), "values": (n, c)}
    return {name: shapes[name] for name in NEEDED[type_name]}


def _count(doc: dict[str, Any], key: str) -> Optional[int]:
    v = doc.get(key)
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"head.json '{key}' should be a positive integer, got {v!r}")
    return v


def read_head_tensors(path: str | Path, doc: dict[str, Any], type_name: str) -> dict[str, np.ndarray]:
    """The tensors head type `type_name` needs from `path`, as float32 arrays, after checking each one's
    dtype and declared shape against head.json (ValueError naming the tensor otherwise). Other tensors in
    the file are never read."""
    from safetensors import safe_open

    want = expected_shapes(doc, type_name)
    sizes: dict[str, int] = {}  # the free dimensions (embed_dim, n_keys) as the first tensor declares them
    with safe_open(str(path), framework="numpy") as f:
        present = set(f.keys())
        missing = [name for name in want if name not in present]
        if missing:
            raise ValueError(f"head.safetensors lacks tensor(s) {missing} that a {type_name} head needs")
        for name, shape in want.items():
            sl = f.get_slice(name)
            got, dtype = tuple(sl.get_shape()), sl.get_dtype()
            if dtype not in _FLOATS:
                raise ValueError(f"tensor '{name}' is {dtype}, not a float type")
            _check_shape(name, got, shape, sizes)
        return {name: np.asarray(f.get_tensor(name), np.float32) for name in want}


def _check_shape(name: str, got: tuple[int, ...], want: tuple[Optional[int], ...], sizes: dict[str, int]) -> None:
    """ValueError unless `got` matches `want`; a None in `want` is a free size (embed_dim, n_keys, or the
    classes of a head.json whose 'classes' is not a list), which must agree across tensors (`sizes`)."""
    axes = {"coef": ("classes", "embed_dim"), "intercept": ("classes",), "keys": ("n_keys", "embed_dim"),
            "values": ("n_keys", "classes")}[name]
    if len(got) != len(want):
        raise ValueError(f"tensor '{name}' has shape {list(got)}, head.json implies {len(want)} dimension(s)")
    for g, w, axis in zip(got, want, axes):
        w = sizes.setdefault(axis, g) if w is None else w
        if g != w:
            what = f"don't fit {w} classes" if axis == "classes" else f"don't fit {axis} {w}"
            raise ValueError(f"tensor '{name}' has shape {list(got)}, but head.json implies "
                             f"{[x if x is not None else '?' for x in want]}: its sizes {what}")
