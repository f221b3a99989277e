"""Benchmark 1: image-encoding throughput, clipkit vs a naive per-image loop vs transformers' CLIPModel.

    .venv/bin/python scripts/bench_encode.py --batch-sizes 1,8,32,64 --images 64 --rounds 3 \
        --out out/bench/encode.json

All sides run ViT-B-32 with random weights (speed doesn't depend on the values) in this one process,
interleaved round by round. Sides:
  naive            one image at a time, fp32: preprocess a PIL image, encode it, normalize (the old demo API)
  clipkit-<prec>   FeatureExtractor.encode_images(PIL images, batch_size=B): preprocessing included
  hf-<prec>        transformers CLIPModel.get_image_features on already preprocessed tensors (no preprocessing)
  hf+proc-<prec>   the same, preprocessing the PIL images with transformers' own CLIP image processor first
  clipkit-model-<prec>  FeatureExtractor.encode_batch on the already preprocessed tensors (model only)
"x hf" compares like with like: clipkit and ONNX (PIL in) against hf+proc, clipkit-model against hf.
  clipkit-bf16-compiled   (with --compile B) the same with ModelConfig.compile=True at batch B, after its warm-up
  onnxruntime-fp32 (with --onnx) the fp32 image tower exported by `clipkit export-onnx`, run by ONNX Runtime
                   on the same PIL images (preprocessing included, as for clipkit)
GFLOP/s = images/s x GFLOP per image (FlopCounterMode, autograd on); "% peak" divides by this machine's
measured matmul peak in the same precision.
"""
from __future__ import annotations

import time

import click
import numpy as np
import torch
from PIL import Image

import _bench
from toolkit.config import ModelConfig
from toolkit.encoder.features import FeatureExtractor

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def hf_clip(dtype: torch.dtype):
    """transformers CLIPModel with ViT-B/32's architecture (random weights, SDPA attention)."""
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(
        text_config=dict(hidden_size=512, intermediate_size=2048, num_attention_heads=8, num_hidden_layers=12,
                         max_position_embeddings=77, vocab_size=49408),
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                           image_size=224, patch_size=32),
        projection_dim=512)
    try:
        model = CLIPModel._from_config(cfg, attn_implementation="sdpa")
    except (TypeError, ValueError):
        model = CLIPModel(cfg)
    return model.eval().requires_grad_(False).to(dtype)


def images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray((rng.random((256, 256, 3)) * 255).astype("uint8")) for _ in range(n)]


def naive_side(ex: FeatureExtractor, pil: list[Image.Image]):
    def run() -> int:
        with torch.inference_mode():
            for im in pil:
                f = ex.model.encode_image(ex.preprocess(im.convert("RGB")).unsqueeze(0))
                torch.nn.functional.normalize(f, dim=-1).numpy()
        return len(pil)
    return run


def clipkit_side(ex: FeatureExtractor, pil: list[Image.Image], bs: int):
    return lambda: len(ex.encode_images(pil, batch_size=bs))


def onnx_side(ex: FeatureExtractor, enc, pil: list[Image.Image], bs: int):
    def run() -> int:
        for i in range(0, len(pil), bs):
            enc.encode_batch(torch.stack([ex.preprocess(im.convert("RGB")) for im in pil[i:i + bs]]))
        return len(pil)
    return run


def hf_side(model, x: torch.Tensor, bs: int):
    def run() -> int:
        with torch.inference_mode():
            for i in range(0, len(x), bs):
                f = model.get_image_features(pixel_values=x[i:i + bs])
                f = getattr(f, "pooler_output", f)  # transformers 5 may return an output object
                torch.nn.functional.normalize(f.float(), dim=-1).numpy()
        return len(x)
    return run


def hf_proc_side(model, processor, pil: list[Image.Image], bs: int, dtype: torch.dtype):
    def run() -> int:
        with torch.inference_mode():
            for i in range(0, len(pil), bs):
                x = processor(images=pil[i:i + bs], return_tensors="pt")["pixel_values"].to(dtype)
                f = model.get_image_features(pixel_values=x)
                f = getattr(f, "pooler_output", f)
                torch.nn.functional.normalize(f.float(), dim=-1).numpy()
        return len(pil)
    return run


def hf_processor():
    """transformers' CLIP image processor (torch-based in transformers 5)."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})


def model_side(ex: FeatureExtractor, x: torch.Tensor, bs: int):
    def run() -> int:
        for i in range(0, len(x), bs):
            ex.encode_batch(x[i:i + bs])
        return len(x)
    return run


def extractor(precision: str, compile_: bool = False, batch_size: int = 32) -> FeatureExtractor:
    return FeatureExtractor.from_config(ModelConfig(name="ViT-B-32", pretrained="none", device="cpu",
                                                    precision=precision, compile=compile_, batch_size=batch_size))


def cosine_check(ex32: FeatureExtractor, ex16: FeatureExtractor, pil: list[Image.Image]) -> float:
    """Min cosine between bf16 and fp32 embeddings of the same images (same random weights: seed 0 for both)."""
    a, b = ex32.encode_images(pil[:16]), ex16.encode_images(pil[:16])
    return float((a * b).sum(1).min())


@click.command()
@click.option("--batch-sizes", default="1,8,32,64", help="Comma-separated batch sizes.")
@click.option("--images", "n_images", default=64, help="Images per side per round.")
@click.option("--rounds", default=3, help="Alternating rounds; the median is reported.")
@click.option("--precisions", default="fp32,bf16")
@click.option("--compile", "compile_bs", default=None, type=int, help="Also time ModelConfig.compile=True at this batch size.")
@click.option("--onnx", is_flag=True, help="Also time ONNX Runtime on the exported fp32 image tower.")
@click.option("--threads", default=None, type=int, help="torch (and ONNX Runtime) threads; default: torch's.")
@click.option("--out", default=None, help="Write all figures as JSON here.")
def main(batch_sizes: str, n_images: int, rounds: int, precisions: str, compile_bs, onnx: bool, threads, out) -> None:
    if threads:  # on a shared machine, 2 OpenMP threads on ~1 free core stall at every barrier
        torch.set_num_threads(threads)
    sizes = [int(b) for b in batch_sizes.split(",")]
    precs = precisions.split(",")
    note = _bench.machine_note()
    peaks = {p: _bench.matmul_peak_gflops(DTYPES[p]) for p in precs}
    pil = images(n_images)
    exs = {}
    for p in ["fp32"] + [p for p in precs if p != "fp32"]:
        torch.manual_seed(0)  # the same random weights in every precision, so embeddings can be compared
        exs[p] = extractor(p)
    x = torch.stack([exs["fp32"].preprocess(im) for im in pil])
    hfs = {p: hf_clip(DTYPES[p]) for p in precs}
    gflop = _bench.count_gflop(exs["fp32"].model.visual, x[:1])
    cos = cosine_check(exs["fp32"], exs["bf16"], pil) if "bf16" in exs else None
    proc = hf_processor()
    sides = {"naive": naive_side(exs["fp32"], pil)}
    for bs in sizes:
        for p in precs:
            sides[f"clipkit-{p} b{bs}"] = clipkit_side(exs[p], pil, bs)
            sides[f"hf+proc-{p} b{bs}"] = hf_proc_side(hfs[p], proc, pil, bs, DTYPES[p])
            sides[f"clipkit-model-{p} b{bs}"] = model_side(exs[p], x, bs)
            sides[f"hf-{p} b{bs}"] = hf_side(hfs[p], x.to(DTYPES[p]), bs)
    if onnx:
        import tempfile

        from toolkit.encoder.onnx import OnnxImageEncoder, export_image_encoder, parity

        tmp = tempfile.mkdtemp()
        enc = OnnxImageEncoder(export_image_encoder(exs["fp32"], f"{tmp}/vit-b-32.onnx"), threads=threads)
        print(f"onnxruntime vs eager fp32: max |diff| {parity(exs['fp32'], enc):.1e}")
        for bs in sizes:
            sides[f"onnxruntime-fp32 b{bs}"] = onnx_side(exs["fp32"], enc, pil, bs)
    warm = None
    if compile_bs:
        torch.manual_seed(0)
        exc = extractor("bf16", compile_=True, batch_size=compile_bs)
        t = time.perf_counter()
        exc.encode_images(pil[:compile_bs], batch_size=compile_bs)
        warm = time.perf_counter() - t
        sides[f"clipkit-bf16-compiled b{compile_bs}"] = clipkit_side(exc, pil, compile_bs)
    with torch.inference_mode():  # warm-up: oneDNN picks its kernels per shape on first use
        for bs in sizes:
            for p in precs:
                exs[p].encode_images(pil[:bs], batch_size=bs)
                hf_side(hfs[p], x[:bs].to(DTYPES[p]), bs)()
    res = _bench.alternate(sides, rounds, warmup=False)
    report(res, sizes, precs, peaks, gflop, cos, warm, compile_bs, note, out)


def report(res, sizes, precs, peaks, gflop, cos, warm, compile_bs, note, out) -> None:
    naive = res["naive"]["rate"]
    rows = [["naive (b1, fp32)", "fp32", naive, 1.0, "", naive * gflop, 100 * naive * gflop / peaks["fp32"]]]
    for name, r in res.items():
        if name == "naive":
            continue
        side, bs = name.rsplit(" b", 1)
        prec = "bf16" if "bf16" in side else "fp32"
        peer = f"hf-{prec} b{bs}" if side.startswith("clipkit-model") else f"hf+proc-{prec} b{bs}"
        hf = res.get(peer, {}).get("rate")
        vs_hf = f"{r['rate'] / hf:.2f}" if hf and not side.startswith("hf") else ""
        rows.append([f"{side} (b{bs})", prec, r["rate"], r["rate"] / naive, vs_hf, r["rate"] * gflop,
                     100 * r["rate"] * gflop / peaks[prec]])
    print(f"\nMachine: {note}")
    print("Matmul peak: " + ", ".join(f"{p} {v:.0f} GFLOP/s" for p, v in peaks.items())
          + f"; ViT-B-32 image tower: {gflop:.2f} GFLOP/image (FlopCounterMode)")
    if cos is not None:
        print(f"bf16 vs fp32 embeddings: min cosine {cos:.6f} over 16 images")
    if warm is not None:
        print(f"compile warm-up at batch {compile_bs}: {warm:.1f} s")
    print(_bench.table(["side", "precision", "images/s", "x naive", "x hf (same prec, batch, input)", "GFLOP/s",
                        "% matmul peak"], rows))
    _bench.write_json(out, {"machine": note, "peaks_gflops": peaks, "gflop_per_image": gflop, "min_cosine": cos,
                            "compile_warmup_s": warm, "results": res})


if __name__ == "__main__":
    main()
