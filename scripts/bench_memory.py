"""Benchmark 4: memory while extracting 20,000 images into a feature store stays flat.

    .venv/bin/python scripts/bench_memory.py --images 20000 --out out/bench/memory.json --plot out/bench/memory.png

Writes 20,000 small JPEGs (96x96, 4 class folders) to a temp dir and runs `extract_store` on them while a
thread samples the proportional set size (PSS: resident memory, pages shared with the forked workers counted
once) of this process plus its DataLoader workers with psutil. To keep
the run in minutes on 2 cores it uses the shipped demo model (64 px ResNet; a tiny random one if the demo
checkpoint is missing), not ViT-B-32: the store's memory behaviour doesn't depend on the model, only on
the rows (each batch goes straight into a memory-mapped file, nothing accumulates).
Reports memory after 5%, 25%, 50%, 75%, 100% of the images and the growth between 25% and 100%.
"""
from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import click
import numpy as np
import psutil
from PIL import Image

import _bench
from toolkit.config import ModelConfig
from toolkit.data.datasets import load_dataset
from toolkit.encoder.features import FeatureExtractor
from toolkit.data.store import PARTIAL, PROGRESS
from toolkit.data.extraction import extract_store

TINY = {"embed_dim": 64, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "patch_size": None},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def make_images(root: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for c in range(4):
        (root / f"class{c}").mkdir(parents=True)
    for i in range(n):
        arr = (rng.random((12, 12, 3)) * 255).astype("uint8")
        Image.fromarray(arr).resize((96, 96), Image.BILINEAR).save(root / f"class{i % 4}" / f"{i:05d}.jpg", quality=85)


def extractor(tmp: Path) -> FeatureExtractor:
    cfg, ckpt = _bench.ROOT / "data/models/clipkit-demo.json", _bench.ROOT / "data/models/clipkit-demo.safetensors"
    if not (cfg.is_file() and ckpt.is_file()):
        import json

        cfg, ckpt = tmp / "tiny-mem.json", None
        cfg.write_text(json.dumps(TINY))
    return FeatureExtractor.from_config(ModelConfig(name=str(cfg), pretrained=str(ckpt) if ckpt else None,
                                                    device="cpu", batch_size=256))


class RssSampler(threading.Thread):
    """Every `period` s: (seconds, memory MiB of this process + children (PSS), rows done according to the store)."""

    def __init__(self, store_dir: Path, batch_size: int, n_rows: int, period: float = 0.5):
        super().__init__(daemon=True)
        self.store_dir, self.batch_size, self.n_rows, self.period = store_dir, batch_size, n_rows, period
        self.samples: list[tuple[float, float, int]] = []
        self.done = 0
        self.stop = threading.Event()

    def rows_done(self) -> int:
        """Rows written so far (monotone: finalize removes the progress files once every row is in)."""
        files = list((self.store_dir / PROGRESS).glob("*.jsonl")) if (self.store_dir / PARTIAL).exists() else []
        rows = sum(len(f.read_text().splitlines()) for f in files) * self.batch_size
        self.done = min(self.n_rows, max(self.done, rows))
        return self.done

    def run(self) -> None:
        me, t0 = psutil.Process(), time.perf_counter()
        while not self.stop.is_set():
            procs = [me] + me.children(recursive=True)
            rss = 0
            for p in procs:
                try:
                    rss += p.memory_full_info().pss  # PSS: pages shared with forked workers count once
                except psutil.Error:
                    pass
            self.samples.append((time.perf_counter() - t0, rss / 2 ** 20, self.rows_done()))
            self.stop.wait(self.period)


@click.command()
@click.option("--images", "n_images", default=20000)
@click.option("--workers", default=2)
@click.option("--out", default=None)
@click.option("--plot", default=None, help="PNG of memory (PSS) against images extracted.")
def main(n_images: int, workers: int, out, plot) -> None:
    note = _bench.machine_note()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_images(tmp / "data", n_images)
        ex = extractor(tmp)
        ds = load_dataset(tmp / "data", 0, 0.15, 0.15)
        sampler = RssSampler(tmp / "store", ex.cfg.batch_size, n_images)
        base = psutil.Process().memory_info().rss / 2 ** 20
        sampler.start()
        t = time.perf_counter()
        store = extract_store(ex, ds, tmp / "store", num_workers=workers)
        elapsed = time.perf_counter() - t
        sampler.stop.set()
        sampler.join()
        assert len(store) == n_images
    s = np.asarray(sampler.samples)
    marks = {}
    for frac in (0.05, 0.25, 0.5, 0.75, 1.0):
        seen = s[s[:, 2] <= frac * n_images]
        marks[frac] = float(seen[:, 1].max()) if len(seen) else float("nan")
    rows = [[f"{int(f * 100)}% ({int(f * n_images)} images)", v] for f, v in marks.items()]
    print(f"\nMachine: {note}")
    print(f"{ex.identity.label}: {n_images} images in {elapsed:.1f} s ({n_images / elapsed:.0f} images/s), "
          f"{workers} workers; RSS of this process before extraction {base:.0f} MiB; feature store {n_images} x {ex.embed_dim}")
    print(_bench.table(["after", "peak memory so far (PSS MiB, process + workers)"], rows))
    print(f"growth from 25% to 100% of the images: {marks[1.0] - marks[0.25]:+.1f} MiB")
    _bench.write_json(out, {"machine": note, "model": ex.identity.label, "images": n_images, "seconds": elapsed,
                            "rss_before_mib": base, "peak_rss_mib": marks, "samples": s.tolist()})
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3))
        ax.plot(s[:, 2], s[:, 1])
        ax.set(xlabel="images extracted", ylabel="PSS, MiB (process + workers)", ylim=(0, s[:, 1].max() * 1.2),
               title=f"Extracting {n_images} images into a feature store")
        fig.tight_layout()
        Path(plot).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(plot, dpi=120)


if __name__ == "__main__":
    main()
