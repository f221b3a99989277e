"""`clipkit embed`: CLIP embeddings of any images (no labels) into a feature store."""
from __future__ import annotations

from typing import Any, Optional

import click

from toolkit.cli.common import build_config, extraction_options, model_options, show_progress
from toolkit.cli.probe import engine_option, extraction_extractor


@click.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Folder of the feature store (created; an unfinished one is resumed, an unchanged one reused).")
@model_options
@extraction_options
@engine_option
def embed(paths: tuple[str, ...], out: str, config_path: Optional[str], progress: Optional[bool], devices: int,
          num_nodes: int, strategy: str, engine: Optional[str], **flags: Any) -> None:
    """Embed images (files, folders searched recursively, globs) into a feature store; no labels needed.

    \b
    The store is the one `clipkit extract` writes: features.npy (N x D float32, L2-normalized,
    memory-mappable), index.csv (row,path,label,split with empty labels) and meta.json. Unreadable
    images are skipped and listed in meta.json; an interrupted run resumes; unchanged files are reused.
    What runs where: as `clipkit extract` (see --engine).
    Classify the store later without encoding again: `clipkit predict --store OUT [--head H]`.

    \b
    Examples:
      clipkit embed photos/ --config configs/demo.yaml --out out/photos-emb
      clipkit embed 'shots/**/*.jpg' --model ViT-B-32 --pretrained openai --out emb/shots --devices 2
      python -c "import numpy as np; print(np.load('out/photos-emb/features.npy', mmap_mode='r').shape)"
    """
    from toolkit.data.datasets import unlabelled_dataset
    from toolkit.encoder.inputs import expand_inputs, skipped_note
    from toolkit.data.extraction import extract_store

    cfg = build_config(config_path, **flags, **{"model.engine": engine})
    found = expand_inputs(paths)
    note = skipped_note(found.skipped)
    if note:
        click.echo(note, err=True)
    dataset = unlabelled_dataset(found.files)
    distributed = devices > 1 or num_nodes > 1
    extractor = extraction_extractor(cfg, distributed)
    show = show_progress(progress)
    if distributed:
        from toolkit.data.extraction import extract_distributed

        store = extract_distributed(extractor, dataset, out, devices, num_nodes, strategy, progress=show)
        if store is None:  # not global rank 0: that one reports
            return
    else:
        store = extract_store(extractor, dataset, out, progress=show)
    skipped = len(store.meta.get("skipped", []))
    state = "reused" if store.reused else "written"
    click.echo(f"store     {store.path} ({len(store)} x {store.features.shape[1]}, {state}; model "
               f"{store.identity.label})" + (f", {skipped} unreadable image(s) skipped (see meta.json)" if skipped else ""))
