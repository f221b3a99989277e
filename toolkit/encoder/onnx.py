"""Export the image tower to ONNX and run it with ONNX Runtime.

The exported graph maps (n, 3, H, W) float32 preprocessed images to (n, D) L2-normalized float32 embeddings,
exactly what `FeatureExtractor.encode_batch` returns, with a dynamic batch axis. The extractor's identity is
stored in the model's metadata ("clipkit_identity"), so a consumer can check it matches a head.

Measured against eager PyTorch in BENCHMARKS.md ("Extraction performance"): ONNX Runtime is not wired into
the default path unless it wins there; `clipkit export-onnx` exists for deployments that want it.
"""
from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from toolkit.errors import InputError, ModelError
from toolkit.fsio import file_mode

INPUT, OUTPUT = "pixel_values", "image_embeds"


class _NormalizedImageTower(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.model.encode_image(x).float(), dim=-1)


def export_image_encoder(extractor: Any, out: str | Path, opset: int = 17) -> Path:
    """Write the extractor's image tower (fp32) to `out` as ONNX, atomically; return the path."""
    if extractor.dtype != torch.float32:
        raise ModelError(f"export needs an fp32 extractor, got {extractor.dtype}; load it with precision fp32")
    out = Path(out)
    if out.suffix != ".onnx":
        raise InputError(f"output '{out}' should end in .onnx; pass --out FILE.onnx")
    out.parent.mkdir(parents=True, exist_ok=True)
    h, w = extractor.identity.image_size
    example = torch.zeros(2, 3, h, w)
    fd, tmp = tempfile.mkstemp(suffix=".onnx.part", dir=out.parent)
    os.close(fd)
    try:
        # Tracing with grad enabled keeps nn.MultiheadAttention off its fused fast path, which ONNX can't express.
        # The tracer warns about shape checks inside torch's own attention code; they hold for every batch size
        # (the export is checked against eager afterwards), so they are not the user's concern.
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(_NormalizedImageTower(extractor.model).eval(), (example.requires_grad_(True),), tmp,
                              input_names=[INPUT], output_names=[OUTPUT], opset_version=opset, dynamo=False,
                              dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
        _add_metadata(tmp, {"clipkit_identity": json.dumps(extractor.identity.to_dict())})
        os.chmod(tmp, file_mode())  # mkstemp makes it private; an exported model is meant to be shared
        os.replace(tmp, out)
    except BaseException as e:  # Ctrl-C / SIGTERM too: no .onnx.part left beside --out
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, (ModelError, InputError)) or not isinstance(e, Exception):
            raise
        raise ModelError(f"ONNX export of '{extractor.identity.label}' failed: {str(e).splitlines()[0][:200]}") from None
    return out


def _add_metadata(path: str, props: dict[str, str]) -> None:
    import onnx

    model = onnx.load(path)
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, path)


class OnnxImageEncoder:
    """ONNX Runtime session over an exported image tower: (n, 3, H, W) float32 -> (n, D) float32 normalized."""

    def __init__(self, path: str | Path, threads: Optional[int] = None):
        import onnxruntime as ort

        if not Path(path).is_file():
            raise InputError(f"ONNX model '{path}' not found; create it with `clipkit export-onnx --out {path}`")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ModelError(f"'{path}' is not a loadable ONNX model ({str(e).splitlines()[0][:200]}); "
                             "re-export it with `clipkit export-onnx`") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        self.identity = json.loads(meta["clipkit_identity"]) if "clipkit_identity" in meta else None

    def encode_batch(self, batch: torch.Tensor | np.ndarray) -> np.ndarray:
        x = batch.numpy() if isinstance(batch, torch.Tensor) else batch
        return self.session.run([OUTPUT], {INPUT: np.ascontiguousarray(x, dtype=np.float32)})[0]


def parity(extractor: Any, encoder: OnnxImageEncoder, n: int = 4, seed: int = 0) -> float:
    """Max |eager - onnx| over n random preprocessed-image tensors (both L2-normalized embeddings)."""
    h, w = extractor.identity.image_size
    x = torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))
    return float(np.abs(extractor.encode_batch(x) - encoder.encode_batch(x)).max())
