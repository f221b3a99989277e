"""Export the image and text towers to ONNX and run them with ONNX Runtime.

The image graph maps (n, 3, H, W) float32 preprocessed images to (n, D) L2-normalized float32 embeddings,
exactly what `FeatureExtractor.encode_batch` returns, with a dynamic batch axis. The text graph maps (n, L)
int64 token ids to (n, D) L2-normalized float32 embeddings, with dynamic batch and length axes: a causal text
tower is exported as `accel.CausalTextTower` runs it, so callers cut the padding after the longest prompt
(`bpe.used_length`) and get what `FeatureExtractor.encode_texts` returns. The extractor's identity is stored
in each model's metadata ("clipkit_identity"), so a consumer can check it matches a head.

torch is imported only to export; running a graph (`OnnxImageEncoder`, `OnnxTextEncoder`) needs numpy and
onnxruntime only, which is what the fast path of `clipkit predict` (encoder/fast.py) relies on.
"""
from __future__ import annotations

import json
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from toolkit.errors import InputError, ModelError
from toolkit import fsio

INPUT, OUTPUT = "pixel_values", "image_embeds"
TEXT_INPUT, TEXT_OUTPUT = "input_ids", "text_embeds"


def _image_module(model: Any) -> Any:
    import torch

    class NormalizedImageTower(torch.nn.Module):
        def __init__(self, model: torch.nn.Module):
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.normalize(self.model.encode_image(x).float(), dim=-1)

    return NormalizedImageTower(model).eval()


def _text_module(extractor: Any) -> Any:
    """The text tower as a module of (n, L) tokens; a causal tower runs on L <= context_length positions."""
    import torch

    from toolkit.encoder.accel import CausalTextTower

    model = extractor.model
    causal = CausalTextTower.find(model)

    class NormalizedTextTower(torch.nn.Module):
        def __init__(self, model: torch.nn.Module):
            super().__init__()
            self.model = model

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            feats = self._causal(tokens) if causal is not None else self.model.encode_text(tokens)
            return torch.nn.functional.normalize(feats.float(), dim=-1)

        @staticmethod
        def _causal(tokens: torch.Tensor) -> torch.Tensor:
            """CausalTextTower.encode on tokens the caller already cut: the length stays a graph input."""
            t, n = causal.tower, tokens.shape[1]
            cast = t.transformer.get_cast_dtype()
            x = t.token_embedding(tokens).to(cast) + t.positional_embedding[:n].to(cast)
            x = t.ln_final(t.transformer(x, attn_mask=t.attn_mask[:n, :n]))
            x = causal._pool(x, tokens)
            proj = t.text_projection
            if proj is None:
                return x
            return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj

    return NormalizedTextTower(model).eval()


@contextmanager
def _sdpa_attention(model: Any) -> Iterator[None]:
    """While exporting, `model`'s self-attention runs as accel.sdpa_self_attention (same parameters and math):
    traced, nn.MultiheadAttention bakes the example's sequence length into its reshapes. Switched in place and
    back afterwards (a copy of the model cost ViT-B-32's export ~600 MB)."""
    from toolkit.encoder.accel import use_sdpa_self_attention

    already = {id(m) for m in model.modules() if "attention" in vars(m)}
    use_sdpa_self_attention(model)
    try:
        yield
    finally:
        for m in model.modules():
            if id(m) not in already and "attention" in vars(m):
                del m.attention


def export_image_encoder(extractor: Any, out: str | Path, opset: int = 17) -> Path:
    """Write the extractor's image tower (fp32) to `out` as ONNX, atomically; return the path."""
    import torch

    h, w = extractor.identity.image_size
    return _export(extractor, _image_module(extractor.model), torch.zeros(2, 3, h, w), out, opset,
                   INPUT, OUTPUT, {0: "batch"})


def export_text_encoder(extractor: Any, out: str | Path, opset: int = 17) -> Path:
    """Write the extractor's text tower (fp32) to `out` as ONNX, atomically; return the path. A causal tower
    takes (n, L) tokens for any L up to the context length; another takes (n, context_length)."""
    example = extractor.tokenizer(["a photo of a dog", "a cat"])
    axes = {0: "batch", 1: "length"} if extractor._text_tower is not None else {0: "batch"}
    with _sdpa_attention(extractor.model):
        return _export(extractor, _text_module(extractor), example, out, opset, TEXT_INPUT, TEXT_OUTPUT, axes)


def _export(extractor: Any, module: Any, example: Any, out: str | Path, opset: int, input_name: str,
            output_name: str, input_axes: dict[int, str]) -> Path:
    import torch

    if extractor.dtype != torch.float32:
        raise ModelError(f"export needs an fp32 extractor, got {extractor.dtype}; load it with precision fp32")
    out = Path(out)
    if out.suffix != ".onnx":
        raise InputError(f"output '{out}' should end in .onnx; pass --out FILE.onnx")
    out.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        # Tracing with grad enabled keeps nn.MultiheadAttention off its fused fast path, which ONNX can't express.
        # The tracer warns about shape checks inside torch's own attention code; they hold for every batch size
        # (the export is checked against eager afterwards), so they are not the user's concern.
        ex = example.requires_grad_(True) if example.is_floating_point() else example
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", message="Exporting aten::index")  # pooling at argmax >= 0
            torch.onnx.export(module, (ex,), str(tmp), input_names=[input_name], output_names=[output_name],
                              opset_version=opset, dynamo=False,
                              dynamic_axes={input_name: input_axes, output_name: {0: "batch"}})
        _add_metadata(str(tmp), {"clipkit_identity": json.dumps(extractor.identity.to_dict())})

    try:  # fsio.save: a temporary file beside --out, removed on any error (Ctrl-C / SIGTERM too), then renamed
        fsio.save(out, write)
    except Exception as e:
        if isinstance(e, (ModelError, InputError)):
            raise
        raise ModelError(f"ONNX export of '{extractor.identity.label}' failed: {str(e).splitlines()[0][:200]}") from None
    return out


def _add_metadata(path: str, props: dict[str, str]) -> None:
    """Append metadata entries to the ONNX file at `path` without parsing it: a protobuf message followed by
    another is their merge, so the bytes of a ModelProto holding only `metadata_props` are appended. (Loading and
    re-saving ViT-B-32's 351 MB graph for this took ~8 s and ~700 MB of memory.)"""
    import onnx

    extra = onnx.ModelProto()
    for key, value in props.items():
        entry = extra.metadata_props.add()
        entry.key, entry.value = key, value
    with open(path, "ab") as f:
        f.write(extra.SerializeToString())


def save_optimized(src: str | Path, out: str | Path) -> Path:
    """Write ONNX Runtime's optimized form of the graph at `src` to `out`, its weights beside it in
    `<out stem>.data`. Loaded with `optimized=True` it skips the graph optimizations every load otherwise repeats
    (ViT-B-32's image tower: session ready in ~0.3 s instead of ~2-4 s, scripts/bench_startup.py). Optimized at
    level EXTENDED, not ALL: ALL adds layout changes tied to this CPU, and the cache may be shared."""
    import onnxruntime as ort

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)  # else ONNX Runtime fails with a bare "SystemError : 2"
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(out)
    opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", f"{out.stem}.data")
    opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    opts.add_session_config_entry("session.disable_prepacking", "1")
    try:
        ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ModelError(f"ONNX Runtime could not optimize '{src}' ({str(e).splitlines()[0][:200]})") from None
    return out


def export_optimized(extractor: Any, tower: str, out: Path, texts: list[str]) -> tuple[float, float, float]:
    """Export the extractor's `tower` ("image" or "text") to `out` as ONNX Runtime optimized it (save_optimized;
    the plain export is removed) and check that against torch (random images, or `texts`). Returns (max |diff|,
    seconds exporting, seconds optimizing and checking)."""
    import time

    t0 = time.perf_counter()
    raw = out.with_name(f"{out.stem}.raw.onnx")
    (export_image_encoder if tower == "image" else export_text_encoder)(extractor, raw)
    t1 = time.perf_counter()
    save_optimized(raw, out)
    raw.unlink()
    if tower == "image":
        err = parity(extractor, OnnxImageEncoder(out, optimized=True))
    else:
        err = text_parity(extractor, OnnxTextEncoder(out, optimized=True), texts)
    return err, t1 - t0, time.perf_counter() - t1


def export_int8(extractor: Any, out: Path) -> tuple[float, float]:
    """Write the extractor's image tower to `out` with int8 matrix-product weights, as ONNX Runtime optimized it
    (weights in `<out stem>.data`): dynamic quantization (`quantize_dynamic`: weights per output channel,
    activations quantized per batch at run time) of MatMul/Gemm only. Convolutions stay fp32: quantized too, they
    made the demo model's ResNet tower ~3x slower (scripts/bench_int8.py). Returns (min cosine to the torch fp32
    features over random images, seconds)."""
    import logging
    import time

    from onnxruntime.quantization import QuantType, quantize_dynamic

    t0 = time.perf_counter()
    raw, quantized = out.with_name(f"{out.stem}.raw.onnx"), out.with_name(f"{out.stem}.q.onnx")
    try:
        export_image_encoder(extractor, raw)
        quiet = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)  # its advice to run "pre-processing" first, on the root logger
        try:
            quantize_dynamic(str(raw), str(quantized), weight_type=QuantType.QInt8, per_channel=True,
                             op_types_to_quantize=["MatMul", "Gemm"])
        finally:
            logging.getLogger().setLevel(quiet)
        save_optimized(quantized, out)
    finally:
        raw.unlink(missing_ok=True)
        quantized.unlink(missing_ok=True)
    return cosine_to_torch(extractor, OnnxImageEncoder(out, optimized=True)), time.perf_counter() - t0


class _Session:
    """An ONNX Runtime CPU session over an exported graph, and the identity stored in it."""

    def __init__(self, path: str | Path, threads: Optional[int] = None, optimized: bool = False):
        """`optimized`: the graph is save_optimized's output, so ONNX Runtime runs it as it is."""
        import onnxruntime as ort

        if not Path(path).is_file():
            raise InputError(f"ONNX model '{path}' not found; create it with `clipkit export-onnx --out {path}`")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        level = ort.GraphOptimizationLevel
        opts.graph_optimization_level = level.ORT_DISABLE_ALL if optimized else level.ORT_ENABLE_ALL
        # No pre-packed copies of the matmul weights: ViT-B-32's image tower then peaks at 434 MB instead of
        # 632 MB (scripts/bench_startup.py), at no measurable cost in speed on the 2-core CPU.
        opts.add_session_config_entry("session.disable_prepacking", "1")
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ModelError(f"'{path}' is not a loadable ONNX model ({str(e).splitlines()[0][:200]}); "
                             "re-export it with `clipkit export-onnx`") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        self.identity = json.loads(meta["clipkit_identity"]) if "clipkit_identity" in meta else None


class OnnxImageEncoder(_Session):
    """(n, 3, H, W) float32 preprocessed images -> (n, D) float32 normalized embeddings."""

    def encode_batch(self, batch: Any) -> np.ndarray:
        x = batch.numpy() if hasattr(batch, "numpy") else batch  # a torch tensor or an array
        return self.session.run([OUTPUT], {INPUT: np.ascontiguousarray(x, dtype=np.float32)})[0]


class OnnxTextEncoder(_Session):
    """(n, L) int64 token ids -> (n, D) float32 normalized embeddings."""

    def encode_tokens(self, tokens: np.ndarray) -> np.ndarray:
        return self.session.run([TEXT_OUTPUT], {TEXT_INPUT: np.ascontiguousarray(tokens, dtype=np.int64)})[0]


def _both(extractor: Any, encoder: OnnxImageEncoder, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(eager, onnx) L2-normalized embeddings of the same n random preprocessed-image tensors."""
    import torch

    h, w = extractor.identity.image_size
    x = torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))
    return extractor.encode_batch(x), encoder.encode_batch(x)


def parity(extractor: Any, encoder: OnnxImageEncoder, n: int = 4, seed: int = 0) -> float:
    """Max |eager - onnx| over n random preprocessed-image tensors (both L2-normalized embeddings)."""
    eager, onnx = _both(extractor, encoder, n, seed)
    return float(np.abs(eager - onnx).max())


def cosine_to_torch(extractor: Any, encoder: OnnxImageEncoder, n: int = 8, seed: int = 0) -> float:
    """Min cosine between eager fp32 and `encoder` embeddings of n random preprocessed-image tensors."""
    eager, onnx = _both(extractor, encoder, n, seed)
    return float((eager * onnx).sum(1).min())


def text_parity(extractor: Any, encoder: OnnxTextEncoder, texts: list[str]) -> float:
    """Max |eager - onnx| over the text embeddings of `texts`, the ONNX side run on the padding-cut tokens
    of one batch (as the fast path runs it)."""
    from toolkit.encoder.bpe import used_length

    tokens = extractor.tokenizer(texts).numpy()
    if extractor._text_tower is not None:
        tokens = tokens[:, :used_length(tokens, extractor._text_tower.pad_id)]
    return float(np.abs(extractor.encode_texts(texts) - encoder.encode_tokens(tokens)).max())
