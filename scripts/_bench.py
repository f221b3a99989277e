"""Shared helpers for scripts/bench_*.py: machine peak, alternating timing, load note, markdown tables, and the
BENCHMARKS.md section writer.

Sides of a comparison run in one process, interleaved round by round, and are reported as ratios: the
machines are shared and absolute times drift, while a ratio measured in alternation holds up.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is built from configs: nothing to download



def machine_note() -> str:
    """CPU model, torch threads and the 1/5/15-minute load average, to print next to the figures."""
    import torch

    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads, "
            f"load average {load}")


def matmul_peak_gflops(dtype, n: int = 2048, reps: int = 6, tries: int = 3) -> float:
    """Best-of-`tries` GFLOP/s of an (n x n) @ (n x n) matmul in `dtype` (2 n^3 flops each)."""
    import torch

    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b  # warm-up: oneDNN picks and caches its kernel
    best = 0.0
    for _ in range(tries):
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = max(best, 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e9)
    return best


def count_gflop(module, x) -> float:
    """GFLOP of module(x), counted by FlopCounterMode with autograd on and an input that requires grad.

    Under inference_mode (or with nothing requiring grad) nn.MultiheadAttention takes its fused fast path,
    whose q/k/v and output projections FlopCounterMode doesn't see: ViT-B-32 would count 5.9 instead of 8.8.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.enable_grad(), FlopCounterMode(display=False) as counter:
        module(x.detach().clone().requires_grad_(True))
    return counter.get_total_flops() / 1e9


def alternate(sides: dict[str, Callable[[], int]], rounds: int, warmup: bool = True) -> dict[str, dict]:
    """Run each side once per round, in turn; a side returns how many items it processed.

    Returns {side: {"rate": median items/s over rounds, "rates": [...]}}.
    """
    if warmup:
        for fn in sides.values():
            fn()
    rates: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(rounds):
        for name, fn in sides.items():
            t = time.perf_counter()
            n = fn()
            rates[name].append(n / (time.perf_counter() - t))
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:.1f}/s" for k, v in rates.items()),
              file=sys.stderr)
    return {k: {"rate": statistics.median(v), "rates": v} for k, v in rates.items()}


def table(header: list[str], rows: list[list]) -> str:
    """A markdown table; floats with 2 significant decimals."""
    def fmt(x):
        return f"{x:.2f}" if isinstance(x, float) else str(x)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: str | None, data: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=2))


def write_section(path: Path, heading: str, text: str) -> None:
    """Replace the part of BENCHMARKS.md from `heading` to the next heading of any level with `text` (or append
    it); subsections written by other scripts and other sections stay as they are. Atomic write."""
    doc = path.read_text() if path.is_file() else "# Benchmarks\n"
    start = doc.find(heading)
    if start >= 0:
        nxt = doc.find("\n#", start + len(heading))
        doc = doc[:start] + text.rstrip("\n") + "\n" + ("\n" + doc[nxt + 1:] if nxt >= 0 else "")
    else:
        doc = doc.rstrip("\n") + "\n\n" + text
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(doc)
    tmp.replace(path)


def suite_features(config: str, suite: str, classes, n_per_class: int, seed: int, size: int = 224):
    """A demo suite generated in memory and encoded once with the config's model.

    Returns ({split: ((n, D) float32 features, [class key per row])}, extractor, config, {generate_s, extract_s});
    rows are class by class within a split, as `make_suite` yields them."""
    from toolkit.config import load_config
    from toolkit.demo import LABELS
    from toolkit.demo.dataset import make_suite
    from toolkit.encoder.features import FeatureExtractor

    cfg = load_config(config, {"model.device": "cpu"})
    t0 = time.perf_counter()
    splits = make_suite(suite, n_per_class, seed, classes=list(classes), size=size)
    t1 = time.perf_counter()
    extractor = FeatureExtractor.from_config(cfg.model)
    key_of = {text: key for key, text in LABELS.items()}
    out = {s: (extractor.encode_images(images), [key_of[t] for t in texts]) for s, (images, texts) in splits.items()}
    return out, extractor, cfg, {"generate_s": t1 - t0, "extract_s": time.perf_counter() - t1}
