"""Benchmark 2: building a zero-shot classifier (4 labels x 80 templates), clipkit vs open_clip's builder.

    .venv/bin/python scripts/bench_text.py --rounds 3 --out out/bench/text.json

Same ViT-B-32 model (random weights, fp32) for every side, in one process, interleaved:
  open_clip          open_clip.build_zero_shot_classifier(model, tokenizer, labels, templates)
  clipkit            ZeroShotHead.from_extractor(extractor, labels, templates) on an empty text cache
  clipkit-full-ctx   the same with truncation off (every prompt padded to 77 tokens): isolates its effect
Reports classifiers/s, the speed-up over open_clip, and max |class weight difference| vs open_clip.
"""
from __future__ import annotations

import click
import numpy as np
import torch

import _bench
from toolkit.config import ModelConfig
from toolkit.labels import DEFAULT_LABELS
from toolkit.encoder.features import FeatureExtractor
from toolkit.models.weights import openai_imagenet_templates
from toolkit.heads.zeroshot import ZeroShotHead


def open_clip_weights(ex: FeatureExtractor, labels, templates) -> np.ndarray:
    """(C, D) class weights from open_clip's own builder."""
    from open_clip import build_zero_shot_classifier

    with torch.inference_mode():
        w = build_zero_shot_classifier(ex.model, ex.tokenizer, labels, [t.format for t in templates],
                                       num_classes_per_batch=10, device="cpu", use_tqdm=False)
    return w.T.float().numpy()


def clipkit_weights(ex: FeatureExtractor, labels, templates) -> np.ndarray:
    ex._text_cache.clear()  # time the encoding, not the cache
    return ZeroShotHead.from_extractor(ex, labels, templates).coef_


@click.command()
@click.option("--rounds", default=3, help="Alternating rounds; the median is reported.")
@click.option("--threads", default=None, type=int, help="torch threads; default: torch's.")
@click.option("--out", default=None, help="Write the figures as JSON here.")
def main(rounds: int, threads, out) -> None:
    if threads:
        torch.set_num_threads(threads)
    note = _bench.machine_note()
    labels, templates = DEFAULT_LABELS, openai_imagenet_templates()
    ex = FeatureExtractor.from_config(ModelConfig(name="ViT-B-32", pretrained="none", device="cpu"))
    full = FeatureExtractor(ex.model, ex.preprocess, ex.tokenizer, ex.identity, ex.cfg)
    full._text_tower = None  # encode all 77 positions, as model.encode_text does
    ref = open_clip_weights(ex, labels, templates)
    diff = float(np.abs(clipkit_weights(ex, labels, templates) - ref).max())
    diff_full = float(np.abs(clipkit_weights(full, labels, templates) - ref).max())
    tokens = ex.tokenizer([t.format(lb) for lb in labels for t in templates])
    lengths = (tokens != 0).sum(1)
    res = _bench.alternate({
        "open_clip": lambda: (open_clip_weights(ex, labels, templates), 1)[1],
        "clipkit": lambda: (clipkit_weights(ex, labels, templates), 1)[1],
        "clipkit-full-ctx": lambda: (clipkit_weights(full, labels, templates), 1)[1],
    }, rounds)
    base = res["open_clip"]["rate"]
    diffs = {"open_clip": "0 (reference)", "clipkit": f"{diff:.1e}", "clipkit-full-ctx": f"{diff_full:.1e}"}
    rows = [[k, 1 / v["rate"], v["rate"] / base, diffs[k]] for k, v in res.items()]
    print(f"\nMachine: {note}")
    print(f"{len(labels)} labels x {len(templates)} templates = {len(tokens)} prompts; tokens per prompt "
          f"{int(lengths.min())}-{int(lengths.max())} (median {int(lengths.median())}) of {tokens.shape[1]}")
    print(_bench.table(["side", "seconds per classifier", "x open_clip", "max |weight diff| vs open_clip"], rows))
    _bench.write_json(out, {"machine": note, "results": res, "max_diff": diff, "max_diff_full_ctx": diff_full})


if __name__ == "__main__":
    main()
