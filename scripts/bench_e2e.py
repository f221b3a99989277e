"""Benchmark 3: end-to-end throughput from 640x480 JPEG files (decode, resize, crop, model), with and without
reduced-size JPEG decoding (PIL draft), against the model alone on ready tensors and decoding alone.

    .venv/bin/python scripts/bench_e2e.py --images 256 --batch-size 64 --workers 2 --precision bf16 \
        --rounds 3 --out out/bench/e2e.json

Sides, interleaved in one process:
  model-only     encode_batch on already preprocessed tensors: the ceiling
  e2e            FeatureExtractor.encode_paths(files) with DataLoader workers, full-size JPEG decoding
  e2e-draft      the same with ModelConfig.draft_decode=True
  decode-only    the same DataLoader without the model (full decoding / draft)
If e2e is close to model-only, the model, not decoding, is the bottleneck.
Also reports how much draft decoding changes the embeddings (min cosine; on the demo model when present).

Whole processes instead (BENCHMARKS.md, "Whole-process extraction vs the naive loop"): `clipkit extract` with
--engine torch, by default (the fast path) and with --precision int8, against a naive per-image fp32 loop:

    .venv/bin/python scripts/bench_e2e.py --whole-process --images 192 --rounds 2 \
        --extract-precision auto --extract-precision int8 --out /tmp/e2e_whole.json
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import click
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

import _bench
from toolkit.config import ModelConfig
from toolkit.encoder.features import FeatureExtractor, collate_images
from toolkit.encoder.images import load_image

DEMO = _bench.ROOT / "data" / "models"


def make_jpegs(folder: Path, n: int, seed: int = 0) -> list[str]:
    """n photo-like 640x480 JPEGs (smooth colour fields plus fine noise), quality 90."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        base = Image.fromarray((rng.random((12, 16, 3)) * 255).astype("uint8")).resize((640, 480), Image.BICUBIC)
        arr = np.asarray(base, np.float32) + rng.normal(0, 8, (480, 640, 3))
        paths.append(str(folder / f"img{i:04d}.jpg"))
        Image.fromarray(arr.clip(0, 255).astype("uint8")).save(paths[-1], quality=90)
    return paths


def with_draft(ex: FeatureExtractor, on: bool) -> FeatureExtractor:
    """Another extractor on the same model with draft decoding switched."""
    return FeatureExtractor(ex.model, ex.preprocess, ex.tokenizer, ex.identity,
                            ex.cfg.model_copy(update={"draft_decode": on}))


def decode_side(ex: FeatureExtractor, paths: list[str], bs: int, workers: int):
    def run() -> int:
        loader = DataLoader(ex.path_dataset(paths), batch_size=bs, num_workers=workers, collate_fn=collate_images)
        return sum(len(idx) for idx, _, _ in loader)
    return run


def draft_effect(ex: FeatureExtractor, paths: list[str]) -> dict:
    """Min cosine of embeddings and mean |difference| of preprocessed pixels, draft vs full decoding."""
    on = with_draft(ex, True)
    a, _ = ex.encode_paths(paths, num_workers=0)
    b, _ = on.encode_paths(paths, num_workers=0)
    x = torch.stack([ex.preprocess(load_image(p)) for p in paths[:16]])
    y = torch.stack([ex.preprocess(load_image(p, on.min_decode_side)) for p in paths[:16]])
    return {"model": ex.identity.label, "input": ex.identity.image_size, "min_cosine": float((a * b).sum(1).min()),
            "mean_abs_pixel_diff": float((x - y).abs().mean()), "decoded_size": list(load_image(paths[0], on.min_decode_side).size)}


def demo_extractor():
    cfg, ckpt = DEMO / "clipkit-demo.json", DEMO / "clipkit-demo.safetensors"
    if not (cfg.is_file() and ckpt.is_file()):
        return None
    return FeatureExtractor.from_config(ModelConfig(name=str(cfg), pretrained=str(ckpt), device="cpu"))


NAIVE = """
import sys, numpy as np, torch, open_clip
from PIL import Image
weights, listing, out = sys.argv[1:4]
model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32-quickgelu", pretrained=weights)
model.eval()
feats = []
with torch.no_grad():
    for path in open(listing).read().split("\\n"):
        f = model.encode_image(preprocess(Image.open(path).convert("RGB")).unsqueeze(0))
        feats.append(torch.nn.functional.normalize(f, dim=-1)[0].numpy())
np.save(out, np.stack(feats))
"""


def run_whole_process(n_images: int, rounds: int, out, precisions: tuple[str, ...] = ("auto",),
                      torch_side: bool = True) -> None:
    """`clipkit extract` on n JPEGs as a user runs it (a fresh process, ViT-B-32 from a real-layout HF cache,
    default settings, or --precision P for each of `precisions` but auto) against a fresh process running the
    naive loop (open_clip, one image at a time, fp32): wall time of each whole process, alternating, `rounds`
    each. `torch_side` adds `clipkit extract --engine torch` (what extract ran before the fast path). Before
    timing, one untimed run per precision prepares clipkit's cache as a user's first run does (the fast path's
    ONNX export, and the int8 tower), timed and reported apart."""
    import os
    import subprocess
    import sys
    import time

    from bench_startup import make_vit_cache

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for label in ("a", "b"):
            (tmp / "data" / label).mkdir(parents=True)
        paths = make_jpegs(tmp / "data" / "a", n_images // 2) + make_jpegs(tmp / "data" / "b", n_images - n_images // 2, 1)
        config = make_vit_cache(tmp)
        weights = next((tmp / "hf-cache").rglob("open_clip_model.safetensors"))
        (tmp / "paths.txt").write_text("\n".join(paths))
        env = {**os.environ, "XDG_CACHE_HOME": str(tmp / "xdg"), "HF_HUB_OFFLINE": "1"}
        clipkit = str(Path(sys.executable).parent / "clipkit")
        def extract(name: str, *flags: str):
            return lambda i: [clipkit, "extract", str(tmp / "data"), "--config", str(config), "--out",
                              str(tmp / f"{name}{i}"), "--no-progress", *flags]

        sides = {"naive": lambda i: [sys.executable, "-c", NAIVE, str(weights), str(tmp / "paths.txt"),
                                     str(tmp / f"n{i}.npy")]}
        if torch_side:
            sides["clipkit extract --engine torch"] = extract("torch", "--engine", "torch")
        for p in precisions:
            sides["clipkit extract" + ("" if p == "auto" else f" --precision {p}")] = \
                extract(p, *(() if p == "auto" else ("--precision", p)))
        first: dict[str, float] = {}
        for name, cmd in sides.items():  # a user's first run: prepares the cache (untimed in the table)
            if name.startswith("clipkit extract") and "torch" not in name:
                t = time.perf_counter()
                subprocess.run(cmd("first"), check=True, env=env, cwd=_bench.ROOT, capture_output=True)
                first[name] = time.perf_counter() - t
                print(f"{name} (first run, prepares the cache): {first[name]:.1f} s", flush=True)
        times: dict[str, list[float]] = {k: [] for k in sides}
        for i in range(rounds):
            for name, cmd in sides.items():
                t = time.perf_counter()
                subprocess.run(cmd(i), check=True, env=env, cwd=_bench.ROOT, capture_output=True)
                times[name].append(time.perf_counter() - t)
                print(f"{name}: {times[name][-1]:.1f} s", flush=True)
    med = {k: float(np.median(v)) for k, v in times.items()}
    rows = [[k, f"{min(v):.1f}", f"{med[k]:.1f}", f"{n_images / med[k]:.2f}", f"{med['naive'] / med[k]:.2f}"]
            for k, v in times.items()]
    print(_bench.table(["whole process", "min s", "median s", "images/s", "x naive"], rows))
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average after: {load}")
    _bench.write_json(out, {"times": times, "first_runs": first, "images": n_images, "load_average_after": load})


@click.command()
@click.option("--whole-process", is_flag=True, help="Instead: `clipkit extract` vs the naive loop, each a whole "
              "process (imports, model load, every image), ViT-B-32 random weights from an HF cache.")
@click.option("--images", "n_images", default=256)
@click.option("--batch-size", default=64)
@click.option("--workers", default=2, help="DataLoader worker processes.")
@click.option("--precision", default="bf16", type=click.Choice(["fp32", "bf16", "auto"]))
@click.option("--extract-precision", "extract_precisions", multiple=True, default=("auto",), show_default=True,
              type=click.Choice(["auto", "fp32", "int8", "bf16"]),
              help="--whole-process: clipkit extract's --precision, one side each (repeat: auto and int8).")
@click.option("--torch-side/--no-torch-side", default=True, help="--whole-process: also clipkit extract --engine torch.")
@click.option("--rounds", default=3)
@click.option("--threads", default=None, type=int, help="torch threads in the main process; default: torch's.")
@click.option("--out", default=None)
def main(whole_process: bool, n_images: int, batch_size: int, workers: int, precision: str,
         extract_precisions: tuple[str, ...], torch_side: bool, rounds: int, threads, out) -> None:
    if whole_process:
        return run_whole_process(n_images, rounds, out, extract_precisions, torch_side)
    if threads:
        torch.set_num_threads(threads)
    note = _bench.machine_note()
    ex = FeatureExtractor.from_config(ModelConfig(name="ViT-B-32", pretrained="none", device="cpu",
                                                  precision=precision, batch_size=batch_size))
    draft = with_draft(ex, True)
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_jpegs(Path(tmp), n_images)
        x = torch.stack([ex.preprocess(load_image(p)) for p in paths])
        effects = [draft_effect(ex, paths[:32])]
        demo = demo_extractor()
        if demo is not None:
            effects.append(draft_effect(demo, paths[:32]))
        res = _bench.alternate({
            "model-only": lambda: sum(len(ex.encode_batch(x[i:i + batch_size])) for i in range(0, len(x), batch_size)),
            "e2e": lambda: len(ex.encode_paths(paths, batch_size, workers)[0]),
            "e2e-draft": lambda: len(draft.encode_paths(paths, batch_size, workers)[0]),
            "decode-only": decode_side(ex, paths, batch_size, workers),
            "decode-only-draft": decode_side(draft, paths, batch_size, workers),
        }, rounds)
    model = res["model-only"]["rate"]
    rows = [[k, v["rate"], v["rate"] / model] for k, v in res.items()]
    print(f"\nMachine: {note}")
    print(f"ViT-B-32 {precision}, {n_images} JPEGs 640x480, batch {batch_size}, {workers} DataLoader workers")
    print(_bench.table(["side", "images/s", "x model-only"], rows))
    print(_bench.table(["model", "input", "draft decodes 640x480 to", "min cosine draft vs full", "mean |pixel diff|"],
                       [[e["model"], "x".join(map(str, e["input"])), "x".join(map(str, e["decoded_size"])),
                         f"{e['min_cosine']:.5f}", f"{e['mean_abs_pixel_diff']:.4f}"] for e in effects]))
    _bench.write_json(out, {"machine": note, "results": res, "draft_effect": effects})


if __name__ == "__main__":
    main()
