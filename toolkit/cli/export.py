"""`clipkit export-onnx`: the image tower as an ONNX model, checked against eager PyTorch."""
from __future__ import annotations

from typing import Any, Optional

import click

from toolkit.cli.common import build_config, model_options
from toolkit.cli.outputs import overwrite_option, refuse_existing


@click.command("export-onnx")
@model_options
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Where to write the .onnx file.")
@click.option("--opset", type=click.IntRange(13, 21), default=17, show_default=True, help="ONNX opset version.")
@click.option("--check/--no-check", default=True, show_default=True,
              help="Run ONNX Runtime on random inputs and compare with eager PyTorch (max abs difference).")
@click.option("--tolerance", type=float, default=1e-4, show_default=True,
              help="Fail (exit 3) when the check's max abs difference of the embeddings exceeds this.")
@overwrite_option
def export_onnx(config_path: Optional[str], out: str, opset: int, check: bool, tolerance: float, overwrite: bool,
                **flags: Any) -> None:
    """Export the model's image tower to ONNX: (n, 3, H, W) preprocessed images -> (n, D) L2-normalized
    embeddings, with a dynamic batch axis and the extractor identity in the model metadata.

    The export is always fp32 (--precision is ignored). clipkit's own fast path (`predict`, `predict-video`
    and `serve` with engine auto) prepares and caches both towers by itself; this file is for deployments
    that run ONNX Runtime elsewhere.

    \b
    Examples:
      clipkit export-onnx --config configs/demo.yaml --out out/demo-image.onnx
      clipkit export-onnx --model ViT-B-32 --pretrained none --out out/vit-b-32.onnx
    """
    from toolkit.errors import ModelError
    from toolkit.encoder.features import FeatureExtractor
    from toolkit.encoder.onnx import OnnxImageEncoder, export_image_encoder, parity

    refuse_existing(out, overwrite, "--out")
    flags["precision"] = "fp32"
    cfg = build_config(config_path, **flags)
    cfg.model.device = "cpu"
    extractor = FeatureExtractor.from_config(cfg.model)
    path = export_image_encoder(extractor, out, opset=opset)
    click.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): {extractor.identity.label}, "
               f"input (n, 3, {', '.join(map(str, extractor.identity.image_size))}), output (n, {extractor.embed_dim})")
    if check:
        diff = parity(extractor, OnnxImageEncoder(path))
        click.echo(f"check: max |onnxruntime - pytorch| = {diff:.2e} over 4 random inputs (tolerance {tolerance:g})")
        if diff > tolerance:
            raise ModelError(f"ONNX output differs from PyTorch by {diff:.2e} > {tolerance:g}; "
                             "try another --opset, or raise --tolerance if that is acceptable")
