"""The table loop shared by scripts/eval_openset.py and scripts/_detectors.py: every (setting, runs, method) of
a result document ({"runs": {shots: [one result per seed: {method: {...}}]}}) and mean ± std over its seeds."""
from __future__ import annotations

import numpy as np


def setting_name(shots: str) -> str:
    return "all train" if shots == "all" else f"K={shots}"


def cells(res: dict, key: str = "") -> list[tuple[str, list[dict], str]]:
    """(shots, runs, method) for every table row, in the document's order; with `key`, only the methods whose
    first seed has it (e.g. "detectors")."""
    return [(shots, runs, m) for shots, runs in res["runs"].items() for m in runs[0]
            if not key or runs[0][m].get(key)]


def stat(runs: list[dict], method: str, *path: str) -> tuple[float, float]:
    """Mean and std over seeds of runs[i][method][path...]; a value that is None or missing (e.g. no image
    accepted, a detector a head doesn't have) is left out; (nan, nan) when none is left."""
    vals = []
    for r in runs:
        v = r.get(method)
        for p in path:
            v = v.get(p) if isinstance(v, dict) else None
        if v is not None:
            vals.append(float(v))
    return (float(np.mean(vals)), float(np.std(vals))) if vals else (float("nan"), float("nan"))


def cell(runs: list[dict], method: str, *path: str, scale: float = 100.0, digits: int = 1) -> str:
    """'mean ± std' of `stat`, times `scale` (percent by default), or 'n/a'."""
    m, s = stat(runs, method, *path)
    return "n/a" if np.isnan(m) else f"{scale * m:.{digits}f} ± {scale * s:.{digits}f}"
