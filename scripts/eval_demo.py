"""Zero-shot accuracy of a model on freshly generated exercise images (default: the shipped demo model).

    .venv/bin/python scripts/eval_demo.py --seed 2024 --n 250

Images come from ``toolkit.demo`` under ``--seed`` (streams ``[seed, class_index, i]``, which
training never uses), are encoded through the same FeatureExtractor + ZeroShotHead path as
``clipkit predict``, and are scored against the label texts with the config's templates.
Prints overall accuracy, per-class accuracy and the confusion matrix.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from toolkit.config import load_config  # noqa: E402
from toolkit.demo import EXERCISES, MAIN_CLASSES  # noqa: E402
from toolkit.demo.dataset import parse_classes  # noqa: E402
from toolkit.demo.figures import example_rng, render_example  # noqa: E402
from toolkit import metrics  # noqa: E402
from toolkit.encoder.features import FeatureExtractor  # noqa: E402
from toolkit.heads.prompts import load_templates  # noqa: E402
from toolkit.heads.zeroshot import ZeroShotHead  # noqa: E402


def evaluate(extractor, keys, templates, seed, n, size=224, batch=64):
    """(accuracy, per-class accuracy dict, confusion matrix (C, C) rows = truth, cols = predicted)."""
    labels = [EXERCISES[k] for k in keys]
    head = ZeroShotHead.from_extractor(extractor, labels, templates)
    y_true, proba = [], []
    for key, label in zip(keys, labels):
        class_index = list(EXERCISES).index(key)
        for start in range(0, n, batch):
            images = [render_example(key, example_rng(seed, class_index, i), size)[0]
                      for i in range(start, min(n, start + batch))]  # fmt: skip
            proba.append(head.predict_proba(extractor.encode_images(images)))
            y_true += [label] * len(images)
    m = metrics.evaluate(y_true, np.concatenate(proba), labels)
    per_class = {label: m["per_class"][label]["recall"] for label in labels}  # accuracy within a class
    return m["accuracy"], per_class, np.asarray(m["confusion_matrix"])


def print_report(acc, per_class, confusion, keys):
    print(f"overall accuracy: {acc:.4f}  ({int(np.trace(confusion))}/{int(confusion.sum())})")
    print("per-class accuracy:")
    for label, a in per_class.items():
        print(f"  {a:.4f}  {label}")
    width = max(len(k) for k in keys)
    print("confusion matrix (rows = true, columns = predicted):")
    print(" " * (width + 2) + " ".join(f"{k[:8]:>8}" for k in keys))
    for k, row in zip(keys, confusion):
        print(f"  {k:<{width}}" + " ".join(f"{v:>8d}" for v in row))


@click.command()
@click.option("--config", "config_path", default=str(ROOT / "configs/demo.yaml"), show_default=True)
@click.option("--model", default=None, help="Override model.name (e.g. a config JSON).")
@click.option("--pretrained", default=None, help="Override model.pretrained (e.g. a .safetensors).")
@click.option("--templates", default=None, help="none | people | openai_imagenet | file [config's]")
@click.option("--seed", default=2024, show_default=True, help="Image seed (any; never a training stream).")
@click.option("--n", default=250, show_default=True, help="Images per class.")
@click.option("--classes", default=",".join(MAIN_CLASSES), show_default=True, help="Exercise keys or 'all'.")
@click.option("--size", default=224, show_default=True, help="Rendered image side in pixels.")
@click.option("--json-out", type=click.Path(dir_okay=False), default=None, help="Also write the figures as JSON.")
def main(config_path, model, pretrained, templates, seed, n, classes, size, json_out):
    """Print zero-shot accuracy, per-class accuracy and the confusion matrix on generated images."""
    cfg = load_config(config_path, {"model.name": model, "model.pretrained": pretrained,
                                    "prompts.templates": templates})  # fmt: skip
    keys = parse_classes(classes)
    t0 = time.time()
    extractor = FeatureExtractor.from_config(cfg.model)
    template_list = load_templates(cfg.prompts.templates)
    acc, per_class, confusion = evaluate(extractor, keys, template_list, seed, n, size)
    print(f"model {extractor.identity.label}; templates {cfg.prompts.templates} "
          f"({len(template_list)}); seed {seed}; {n} images per class; {time.time() - t0:.1f}s")
    print_report(acc, per_class, confusion, keys)
    if json_out:
        Path(json_out).write_text(json.dumps({
            "seed": seed, "n_per_class": n, "classes": keys, "templates": cfg.prompts.templates,
            "accuracy": acc, "per_class": per_class, "confusion": confusion.tolist()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
