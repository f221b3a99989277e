"""`clipkit evaluate DATA --head H`: a head (or zero-shot) scored on a labelled split, with 95% intervals,
a warning when the split is too small to trust, and a gallery of its mistakes."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import click

from toolkit.cli.common import FRACTION, build_config, head_options, local_head, model_options, show_progress
from toolkit.cli.multilabel import negatives_option
from toolkit.cli.outputs import overwrite_option, refuse_existing
from toolkit.errors import ConfigError


def _split_rows(data: str, split: str, cfg) -> tuple[list[str], list[str], Optional[Any], list[str]]:
    """(paths, true labels, the store's features or None, the dataset's classes) of one split of DATA:
    a feature store, or an image folder / CSV split as train-probe splits it (same seed and fractions)."""
    from toolkit.data.store import FeatureStore

    if FeatureStore.is_store(data):
        store = FeatureStore.open(data)
        rows = range(len(store)) if split == "all" else store.split_indices(split)
        idx = [int(i) for i in rows if store.labels[i]]
        return [str(store.paths[i]) for i in idx], [str(store.labels[i]) for i in idx], store, store.classes
    from toolkit.data.datasets import load_dataset

    ds = load_dataset(data, cfg.probe.seed, cfg.probe.val_fraction, cfg.probe.test_fraction)
    idx = [i for i, s in enumerate(ds.splits) if split in ("all", s)]
    return [ds.paths[i] for i in idx], [ds.labels[i] for i in idx], None, list(ds.classes)


def _features(predictor, paths: list[str], store, progress: bool):
    """(features of the readable images, their positions in `paths`, {path: error})."""
    import numpy as np

    if store is not None:
        from toolkit.predictor import check_head_matches

        check_head_matches(predictor.head, store.identity)
        pos = {p: i for i, p in enumerate(store.paths)}
        return np.asarray(store.features[[pos[p] for p in paths]]), list(range(len(paths))), {}
    feats, errors = predictor.extractor.encode_paths(paths, progress=progress)
    ok = [i for i in range(len(paths)) if i not in errors]
    return feats[ok], ok, {paths[i]: msg for i, msg in errors.items()}


def _write(out: Path, result: dict[str, Any], rows: list[dict[str, Any]], paths, truth, proba, classes,
           threshold: Optional[float], title: str) -> None:
    """OUT/evaluation.json, predictions.csv, confusion_matrix.png, errors.html + thumbs/ (one folder, atomic)."""
    from toolkit import fsio
    from toolkit.encoder.images import load_image
    from toolkit.evaluation.gallery import write_gallery
    from toolkit.evaluation.plots import confusion_matrix_png

    with fsio.atomic_dir(out) as tmp:
        (tmp / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n")
        table = [["path", "true", "predicted", "score", "rejected", "correct"]]
        for p, t, pr in zip(paths, truth, proba):
            best = int(pr.argmax())
            rejected = bool(threshold) and float(pr[best]) < threshold
            table.append([p, t, classes[best], f"{pr[best]:.6f}", str(rejected).lower(),
                          str(classes[best] == t).lower()])
        (tmp / "predictions.csv").write_text(fsio.csv_text(table))
        confusion_matrix_png(result["confusion_matrix"], classes, tmp / "confusion_matrix.png",
                             title=f"{title}: confusion matrix")
        write_gallery(tmp, rows, title, load_image, meta=f"{result['split']} split, {result['n']} images")


@click.command("evaluate")
@click.argument("data", type=click.Path())
@head_options
@model_options
@click.option("--templates", default=None, help="Zero-shot (no --head): prompt templates for the class names. "
              "[default: people]")
@click.option("--split", type=click.Choice(["test", "val", "train", "all"]), default="test", show_default=True,
              help="Which images of DATA to score. A folder without split folders is split as train-probe "
                   "splits it (probe.seed, probe.val_fraction, probe.test_fraction), so `test` is the same images.")
@click.option("--reject-below", type=FRACTION, default=None,
              help="Score with this \"none of these\" threshold instead of the head's (0: reject nothing).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder for evaluation.json, predictions.csv, confusion_matrix.png and errors.html (a gallery "
                   "of the mistakes, most confident first).")
@negatives_option
@click.option("--multi-label", "multi_label", is_flag=True, default=None,
              help="DATA is multi-label (recognised from a CSV `labels` column or JSON Lines without it): mAP, "
                   "micro/macro F1, per-class AP and thresholds.")
@overwrite_option
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr (default: when a terminal).")
def evaluate(data: str, head: Optional[str], config_path: Optional[str], split: str, reject_below: Optional[float],
             out: Optional[str], overwrite: bool, fmt: str, progress: Optional[bool], **flags: Any) -> None:
    """Score a head on a labelled dataset: accuracy, balanced accuracy and macro-F1 with 95% confidence
    intervals, per-class recall, and with --out a gallery of what it got wrong.

    DATA is an image folder (DATA/<label>/... or DATA/{train,val,test}/<label>/...), a CSV manifest
    (path,label[,split]) or a feature store. Without --head the zero-shot classifier is scored, prompted with
    DATA's class names. A split under 100 images, or a class under 10, gets a warning: its interval is wide.

    \b
    Examples:
      clipkit evaluate out/demo --head out/head --out out/eval
      clipkit evaluate out/demo --config configs/demo.yaml --split val        # zero-shot on the class names
      clipkit evaluate held-out/ --head runs:/RUN_ID/head --split all --format json
    """
    from toolkit.evaluation.evaluate import evaluate_predictions, mistakes, summary_lines
    from toolkit.predictor import build_predictor

    if out:
        refuse_existing(out, overwrite, "--out")
    tracking_uri = flags.pop("tracking_uri", None)
    more = {"probe.multi_label": flags.pop("multi_label", None), "prompts.negatives_file": flags.pop("negatives_file", None)}
    cfg = build_config(config_path, tracking_uri=tracking_uri, **flags, **more)
    from toolkit.cli.multilabel import (data_is_multilabel, evaluate_multilabel_data, refuse_multilabel_head,
                                        refuse_negatives)

    if data_is_multilabel(data, cfg):  # labels separated by '|': mAP, per-class F1 and thresholds
        if reject_below is not None:
            raise ConfigError("--reject-below is a single-label \"none of these\" rule, but DATA is multi-label: "
                              "each class has its own threshold (saved with the head); drop --reject-below")
        return evaluate_multilabel_data(data, head, split, cfg, out, fmt, show_progress(progress))
    refuse_negatives(cfg)
    paths, truth, store, classes = _split_rows(data, split, cfg)
    if not paths:
        raise ConfigError(f"DATA '{data}' has no labelled images in the {split} split; pick another --split "
                          "(train, val, test or all)")
    folder = local_head(head, cfg)
    if folder is None:
        cfg.prompts.labels, cfg.prompts.labels_file = list(classes), None
    predictor = build_predictor(cfg, folder)
    refuse_multilabel_head(predictor.head)
    missing = sorted(set(truth) - set(predictor.labels))
    if missing:
        raise ConfigError(f"DATA '{data}' has classes the head doesn't know ({', '.join(map(repr, missing[:5]))}); "
                          f"the head's classes are {predictor.labels}")
    feats, ok, failed = _features(predictor, paths, store, show_progress(progress))
    paths, truth = [paths[i] for i in ok], [truth[i] for i in ok]
    threshold = predictor.threshold(reject_below)
    labels, proba = predictor.proba(feats)
    result = evaluate_predictions(truth, proba, labels, threshold, split=split)
    result.update(data=str(data), head=head or "zero-shot (class names)", failed=failed)
    rows = mistakes(paths, truth, proba, labels, threshold)
    if out:
        name = Path(head).name if head else "zero-shot"
        _write(Path(out), result, rows, paths, truth, proba, labels, threshold, f"{name} on {data} ({split})")
    if fmt == "json":
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo("\n".join(summary_lines(result)))
        click.echo(f"  mistakes: {len(rows)} of {result['n']}" + (f"; gallery {Path(out) / 'errors.html'}" if out
                                                                   else " (--out DIR writes a gallery of them)"))
    for line in result["warnings"]:
        click.echo(f"warning: {line}", err=True)
    if failed:
        click.echo(f"warning: {len(failed)} images could not be read and were left out "
                   f"(first: {next(iter(failed.values()))})", err=True)
