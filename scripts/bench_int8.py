"""Is int8 worth it? ONNX Runtime dynamic quantization (weights int8, activations quantized at run time) of the
image tower against the fp32 graph the fast path runs, on this CPU.

    .venv/bin/python scripts/bench_int8.py --images 64 --rounds 3 --n-per-class 300 --out out/bench/int8.json

For each model (ViT-B-32 with random weights, and the trained demo model): the image tower is exported as
`clipkit export-onnx` does; fp32 is ONNX Runtime's optimized graph (as the fast path saves it), int8 is
what precision int8 runs (onnx.export_int8: `quantize_dynamic` of the plain export, MatMul/Gemm weights per
output channel, then optimized as the fp32 graph is); for the demo model's ResNet also every op quantized,
convolutions included, which is why int8 leaves them out. Reported: images/s of each on the same
preprocessed batches (alternating, median of rounds), the cosine of int8 vs fp32 features, and for the demo
model (trained, so its fidelity means something) zero-shot and probe test accuracy on a generated demo dataset
with int8 features vs fp32. ViT-B-32's random weights make its cosine no evidence for real weights.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import click
import numpy as np

import _bench
from toolkit.config import ModelConfig
from toolkit.encoder.features import FeatureExtractor
from toolkit.encoder.onnx import OnnxImageEncoder, export_image_encoder, export_int8, save_optimized

DEMO = _bench.ROOT / "data" / "models"


def graphs(ex: FeatureExtractor, folder: Path, all_ops: bool) -> dict[str, OnnxImageEncoder]:
    """{"fp32": the fast path's optimized fp32 graph, "int8": precision int8's graph (onnx.export_int8: MatMul/Gemm
    weights per channel), and with `all_ops` "int8-all-ops" (convolutions quantized too)} for ex's image tower."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    raw = export_image_encoder(ex, folder / "raw.onnx")
    save_optimized(raw, folder / "fp32.onnx")
    sessions = {"fp32": OnnxImageEncoder(folder / "fp32.onnx", optimized=True)}
    (folder / "int8").mkdir()
    export_int8(ex, folder / "int8" / "image.onnx")
    sessions["int8"] = OnnxImageEncoder(folder / "int8" / "image.onnx", optimized=True)
    if all_ops:
        quantize_dynamic(str(raw), str(folder / "all.onnx"), weight_type=QuantType.QInt8, per_channel=True)
        sessions["int8-all-ops"] = OnnxImageEncoder(folder / "all.onnx")
    return sessions


def encode(session: OnnxImageEncoder, x: np.ndarray, bs: int) -> np.ndarray:
    return np.concatenate([session.encode_batch(x[i:i + bs]) for i in range(0, len(x), bs)])


def speed(sessions: dict, x: np.ndarray, bs: int, rounds: int) -> dict[str, float]:
    res = _bench.alternate({k: (lambda s=s: len(encode(s, x, bs))) for k, s in sessions.items()}, rounds)
    return {k: v["rate"] for k, v in res.items()}


def demo_accuracy(ex: FeatureExtractor, sessions: dict, n_per_class: int, suite: str) -> dict[str, dict[str, float]]:
    """{graph: {"zeroshot": test accuracy, "probe": test accuracy}} on a generated 6-class demo dataset: suite
    "main" (the demo's plain style) or "novel" (its shifted style: other backgrounds, occluders; harder)."""
    from sklearn.linear_model import LogisticRegression

    from toolkit.demo import EXERCISES
    from toolkit.demo.dataset import make_suite
    from toolkit.heads.prompts import load_templates
    from toolkit.heads.zeroshot import ZeroShotHead

    splits = make_suite(suite, n_per_class, seed=0, classes=list(EXERCISES), size=224)
    x = {s: np.stack([ex.preprocess(im).numpy() for im in ims]) for s, (ims, _) in splits.items()}
    y = {s: np.asarray(lbs) for s, (_, lbs) in splits.items()}
    labels = list(EXERCISES.values())
    head = ZeroShotHead.from_extractor(ex, labels, load_templates("people"))
    out = {}
    for name, session in sessions.items():
        f = {s: encode(session, v, 64) for s, v in x.items()}
        zs = float((np.asarray(labels)[head.predict_proba(f["test"]).argmax(1)] == y["test"]).mean())
        best = max((LogisticRegression(C=c, max_iter=2000).fit(f["train"], y["train"]) for c in (0.1, 1, 10, 100)),
                   key=lambda m: m.score(f["val"], y["val"]))
        out[name] = {"zeroshot": zs, "probe": float(best.score(f["test"], y["test"]))}
    return out


@click.command()
@click.option("--images", "n_images", default=64, help="Images per speed round (ViT-B-32; the demo model runs 8x).")
@click.option("--batch-size", default=32)
@click.option("--rounds", default=3)
@click.option("--n-per-class", default=100, help="Demo dataset size for the accuracy check (6 classes, 70/15/15).")
@click.option("--out", default=None)
def main(n_images: int, batch_size: int, rounds: int, n_per_class: int, out) -> None:
    note = _bench.machine_note()
    models = {"ViT-B-32 (random weights)": ModelConfig(name="ViT-B-32", pretrained="none", device="cpu",
                                                       precision="fp32"),
              "demo": ModelConfig(name=str(DEMO / "clipkit-demo.json"),
                                  pretrained=str(DEMO / "clipkit-demo.safetensors"), device="cpu", precision="fp32")}
    rows, acc_rows, results = [], [], {}
    for label, cfg in models.items():
        ex = FeatureExtractor.from_config(cfg)
        with tempfile.TemporaryDirectory() as tmp:
            sessions = graphs(ex, Path(tmp), all_ops=label == "demo")
            n = n_images * (8 if label == "demo" else 1)
            jpegs = _bench_jpegs(Path(tmp), min(n, 64))
            x = np.stack([ex.preprocess(_open(p)).numpy() for p in jpegs])
            x = np.concatenate([x] * (n // len(x)))
            rates = speed(sessions, x, batch_size, rounds)
            ref = encode(sessions["fp32"], x[:64], batch_size)
            cos = {k: (ref * encode(s, x[:64], batch_size)).sum(1) for k, s in sessions.items() if k != "fp32"}
            acc = {s: demo_accuracy(ex, sessions, n_per_class, s) for s in ("main", "novel")} if label == "demo" else {}
        results[label] = {"rates": rates, "cosine_min": {k: float(v.min()) for k, v in cos.items()},
                          "cosine_mean": {k: float(v.mean()) for k, v in cos.items()}, "accuracy": acc}
        for k, r in rates.items():
            c = cos.get(k)
            rows.append([label, k, r, r / rates["fp32"], "1" if c is None else f"{c.min():.4f} / {c.mean():.4f}"])
        for suite, by_graph in acc.items():
            for k, a in by_graph.items():
                acc_rows.append([f"{label}, {suite} suite", k, f"{100 * a['zeroshot']:.1f}%",
                                 f"{100 * a['probe']:.1f}%"])
    print(f"\nMachine: {note}")
    print(_bench.table(["model", "image graph", "images/s", "x fp32", "cosine vs fp32 (min / mean)"], rows))
    print(f"demo dataset: 6 exercises x {n_per_class} images, 70/15/15, generation seed 0; probe: scikit-learn "
          "LogisticRegression, C in 0.1/1/10/100 chosen on val")
    print(_bench.table(["model, dataset", "image graph", "zero-shot test acc.", "probe test acc."], acc_rows))
    _bench.write_json(out, {"machine": note, "results": results})


def _bench_jpegs(folder: Path, n: int) -> list[str]:
    from bench_e2e import make_jpegs

    (folder / "jpegs").mkdir()
    return make_jpegs(folder / "jpegs", n)


def _open(path: str):
    from toolkit.encoder.images import load_image

    return load_image(path)


if __name__ == "__main__":
    main()
