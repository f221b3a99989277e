"""`clipkit extract` (dataset -> feature store) and `clipkit train-probe` (store -> linear head + report)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional

import click

from toolkit.config import adopt_model
from toolkit.errors import ConfigError, DataError
from toolkit.cli.common import build_config, extraction_options, model_options, prompt_options, show_progress


def _split_options(f):
    f = click.option("--test-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
                     help="Share of each class drawn for test when the data has no test split. [default: 0.15]")(f)
    f = click.option("--val-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
                     help="Share of each class drawn for validation when the data has no val split. [default: 0.15]")(f)
    f = click.option("--seed", type=int, default=None, help="Seed of the drawn splits and of training. [default: 0]")(f)
    return f


def rejection_options(f):
    """--target-precision | --target-coverage | --reject-below: the "none of these" rule (see apply_rejection)."""
    f = click.option("--reject-below", type=click.FloatRange(0, 1), default=None,
                     help="Answer \"none of these\" below this calibrated probability (given, not chosen).")(f)
    f = click.option("--target-coverage", type=click.FloatRange(0, 1, min_open=True), default=None,
                     help="Choose the threshold on val that still accepts this share of the images.")(f)
    f = click.option("--target-precision", type=click.FloatRange(0, 1, min_open=True), default=None,
                     help="Choose the lowest threshold on val whose accepted predictions are this accurate; the "
                          "head then answers \"none of these\" below it.")(f)
    return f


def apply_rejection(cfg, target_precision: Optional[float], target_coverage: Optional[float],
                    reject_below: Optional[float]) -> None:
    """A rejection flag replaces the config's rule (cfg.probe.target_precision | target_coverage | reject_below)."""
    given = {k: v for k, v in (("target_precision", target_precision), ("target_coverage", target_coverage),
                               ("reject_below", reject_below)) if v is not None}
    if len(given) > 1:
        raise click.UsageError(f"{' and '.join('--' + k.replace('_', '-') for k in given)} both given; "
                               "choose one rejection rule")
    if given:
        cfg.probe = cfg.probe.model_copy(update={"target_precision": None, "target_coverage": None,
                                                 "reject_below": None, **given})


def _probe_overrides(flags: dict[str, Any], **more: Any) -> dict[str, Any]:
    """Move the probe flags out of `flags` into dotted config overrides."""
    out = {"probe.seed": flags.pop("seed", None), "probe.val_fraction": flags.pop("val_fraction", None),
           "probe.test_fraction": flags.pop("test_fraction", None)}
    out.update({f"probe.{k}": v for k, v in more.items()})
    return out


def _load_extractor(cfg):
    from toolkit.encoder.features import FeatureExtractor

    return FeatureExtractor.from_config(cfg.model)


def _store_line(store) -> str:
    skipped = len(store.meta.get("skipped", []))
    state = "reused" if getattr(store, "reused", False) else "extracted"
    extra = f", {skipped} unreadable image(s) skipped (listed in meta.json)" if skipped else ""
    extra += f"; {store.note}" if getattr(store, "note", None) else ""  # e.g. extracted again: damaged
    return f"{store.path} ({len(store)} x {store.features.shape[1]}, {state}{extra})"


@click.command()
@click.argument("data", type=click.Path(exists=False))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Folder of the feature store (created; an unfinished one is resumed).")
@model_options
@_split_options
@extraction_options
def extract(data: str, out: str, config_path: Optional[str], progress: Optional[bool], devices: int, num_nodes: int,
            strategy: str, **flags: Any) -> None:
    """Encode a labelled dataset's images into a feature store.

    DATA is an image folder (ROOT/<label>/*.jpg, or ROOT/{train,val,test}/<label>/*.jpg) or a CSV
    manifest with columns path,label[,split] (paths relative to the CSV). Without given splits, a
    stratified train/val/test split is drawn with --seed.

    \b
    The store holds features.npy (N x D float32, L2-normalized, memory-mappable), index.csv
    (row,path,label,split) and meta.json (model identity, preprocessing, count, skipped files).
    Extraction streams batches to disk; an interrupted run resumes where it stopped, and running
    again on unchanged files with the same model reuses the store.

    \b
    Examples:
      clipkit extract out/demo --config configs/demo.yaml --out out/demo-features
      clipkit extract labels.csv --model ViT-B-32 --pretrained openai --out features/mine
      clipkit extract out/demo --config configs/demo.yaml --out out/f --devices 2   # 2 processes (DDP)
    """
    from toolkit.data.datasets import load_dataset
    from toolkit.data.extraction import extract_store

    cfg = build_config(config_path, **_probe_overrides(flags), **flags)
    dataset = load_dataset(data, cfg.probe.seed, cfg.probe.val_fraction, cfg.probe.test_fraction)
    if devices > 1 or num_nodes > 1:  # one process per device, each writing its batches' rows of the store
        from toolkit.data.extraction import extract_distributed

        store = extract_distributed(_load_extractor(cfg), dataset, out, devices, num_nodes, strategy,
                                    progress=show_progress(progress))
        if store is None:  # not global rank 0: that one reports
            return
    else:
        store = extract_store(_load_extractor(cfg), dataset, out, progress=show_progress(progress))
    click.echo(f"store     {_store_line(store)}")
    click.echo(f"classes   {', '.join(f'{c} ({n})' for c, n in store.meta['class_counts'].items())}")
    click.echo(f"splits    {', '.join(f'{s} {n}' for s, n in store.meta['split_counts'].items())}")


def default_store_dir(data: str, identity) -> Path:
    """Where train-probe caches a dataset's features: one folder per (dataset path, extractor)."""
    from toolkit.data.datasets import dataset_name

    key = json.dumps([str(Path(data).resolve()), identity.features_key()], sort_keys=True)
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "clipkit" / "stores"
    return root / f"{dataset_name(data)}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _check_store_model(store, extractor) -> None:
    reason = extractor.identity.mismatch(store.identity)
    if reason:
        raise DataError(f"store '{store.path}' holds features of {store.identity.label}, but the loaded model is "
                        f"{extractor.identity.label} ({reason}); pass that store's --model/--pretrained (or --config)")


def _zeroshot_head(cfg, extractor, classes: list[str], labels_given: bool):
    from toolkit.heads.prompts import resolve_labels, resolve_templates
    from toolkit.heads.zeroshot import ZeroShotHead

    if labels_given and sorted(resolve_labels(cfg.prompts)) != sorted(classes):
        raise ConfigError(f"--label/--labels {resolve_labels(cfg.prompts)} differ from the dataset's classes "
                          f"{classes}; the zero-shot baseline prompts with the class names, so drop those flags")
    return ZeroShotHead.from_extractor(extractor, classes, resolve_templates(cfg.prompts))


def _fmt(v: Optional[float]) -> str:
    return "   n/a" if v is None else f"{100 * v:5.1f}%"


def _summary(result, store, out: Path) -> str:
    m, p = result.metrics, result.params
    few = f", {p['fewshot']} shots per class" if p.get("fewshot") else ""
    lines = [f"store     {_store_line(store)}",
             f"split     train {p['n_train']}{few}, val {p['n_val']}, test {p['n_test']}",
             f"method    {_chosen(p)}, fit in {result.timings['fit_s']:.1f} s"]
    sel = m.get("selection")
    if sel:  # auto: every candidate's val score
        how = "val" if sel["mode"] == "val" else f"{sel['mode']} CV over train + val (val too small)"
        lines.append(f"candidates ({how}): " + ", ".join(
            f"{n} {100 * c['val_accuracy']:.1f}%" for n, c in sel["candidates"].items()) + f" -> {sel['chosen']}")
    lines.append(f"{'':<16}{'accuracy':>9} {'bal.acc':>8} {'macro-F1':>9}")
    for name, part in (("zero-shot", m.get("zeroshot_test")), ("probe", m["test"])):
        if part:
            lines.append(f"{name:<16}{_fmt(part['accuracy']):>9} {_fmt(part['balanced_accuracy']):>8} "
                         f"{_fmt(part['macro_f1']):>9}")
    if m.get("gain_over_zeroshot") is not None:
        lines.append(f"gain            {m['gain_over_zeroshot']:+.1f} accuracy points over zero-shot")
    from toolkit.heads.calibration import summary_lines

    cal = m.get("calibration") or {}
    lines += summary_lines({"zero-shot": cal.get("zeroshot"), "probe": cal.get("probe")})
    lines += [f"head      {out}", f"report    {result.report_dir} (report.json, confusion_matrix.png, sweep.png, "
              "reliability.png)"]
    return "\n".join(lines)


def _chosen(p: dict[str, Any]) -> str:
    """What a run's method chose, in words: 'logreg (init random): C=3.16 (17 candidates)'."""
    method = p.get("chosen", p["method"])  # auto: the candidate it kept
    if method == "cache" and p.get("finetune"):
        method = "cache-f"
    cache = f"alpha={p.get('alpha')}, beta={p.get('beta')}, {p.get('n_keys')} keys"
    what = {"logreg": lambda: f"C={p.get('C', 0):.3g} ({p.get('n_candidates')} candidates)",
            "linear": lambda: f"weight_decay={p.get('weight_decay')} (best epoch {p.get('best_epoch')})",
            "cache": lambda: cache,
            "cache-f": lambda: f"{cache} fine-tuned {p.get('finetune_epochs')} epochs",
            "blend": lambda: f"alpha={p.get('alpha')} x {p.get('base')} probe + {1 - p.get('alpha', 0):.2g} x zero-shot",
            "zeroshot": lambda: "the zero-shot classifier itself"}[method]()
    head = f"{p['method']} -> {method}" if p["method"] == "auto" else method
    return head + (f" (init {p['init']})" if method in ("logreg", "linear") else "") + f": {what}"


def _open_or_extract(data: str, store_dir: Optional[str], cfg, progress: bool):
    """(store, extractor, dataset name): open DATA as a store, or load it as a dataset and extract it."""
    from toolkit.data.datasets import dataset_name, load_dataset
    from toolkit.data.store import FeatureStore
    from toolkit.data.extraction import extract_store

    if FeatureStore.is_store(data):
        store = FeatureStore.open(data)
        store.check_rows()  # NaN or garbage rows: one line now, not a solver's traceback later
        store.reused = True  # given as DATA: used as is
        extractor = _load_extractor(adopt_model(cfg, store.identity, f"store '{data}'"))
        _check_store_model(store, extractor)
        return store, extractor, dataset_name(store.meta.get("dataset_root") or data)
    dataset = load_dataset(data, cfg.probe.seed, cfg.probe.val_fraction, cfg.probe.test_fraction)
    extractor = _load_extractor(cfg)
    where = Path(store_dir) if store_dir else default_store_dir(data, extractor.identity)
    store = extract_store(extractor, dataset, where, progress=progress)
    store.check_rows()
    return store, extractor, dataset_name(data)


def _place_report(result, out: Path) -> None:
    """Move the report next to the saved head (out/report); the head folder itself was written atomically."""
    target = out / "report"
    shutil.rmtree(target, ignore_errors=True)
    shutil.move(str(result.report_dir), str(target))
    result.report_dir = target


def _c_grid(value: Optional[str]) -> Optional[list[float]]:
    if not value:
        return None
    try:
        grid = [float(v) for v in value.replace(",", " ").split()]
    except ValueError:
        raise ConfigError(f"--c-grid '{value}' is not a list of numbers; write e.g. --c-grid 0.01,0.1,1,10") from None
    if not grid or min(grid) <= 0:
        raise ConfigError(f"--c-grid '{value}' needs positive values; write e.g. --c-grid 0.01,0.1,1,10")
    return grid


@click.command("train-probe")
@click.argument("data", type=click.Path(exists=False))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Folder to write the trained head to (replaced atomically), with its report in OUT/report.")
@click.option("--method", type=click.Choice(["logreg", "linear", "cache", "blend", "auto"]), default=None,
              help="logreg: logistic regression (L-BFGS) with the CLIP paper's C sweep. linear: a Lightning linear "
                   "layer with AdamW, a weight-decay sweep and early stopping. cache: Tip-Adapter (zero-shot + a "
                   "cache of the training features; alpha, beta on val). blend: WiSE-FT, zero-shot and a probe "
                   "mixed by an alpha chosen on val. auto: all of these and zero-shot, the best on val. "
                   "[default: logreg]")
@click.option("--finetune", is_flag=True, default=None, help="cache: fine-tune the cache keys (Tip-Adapter-F).")
@click.option("--init", type=click.Choice(["random", "zeroshot"]), default=None,
              help="linear only: start from the zero-shot classifier (class embeddings x logit scale). "
                   "[default: random]")
@click.option("--fewshot", type=click.IntRange(1), default=None, help="Train on K examples per class (seeded).")
@click.option("--c-grid", default=None, help="logreg: explicit C values, e.g. 0.1,1,10 (one value: no sweep).")
@click.option("--store", "store_dir", type=click.Path(file_okay=False), default=None,
              help="Where to extract DATA's features (reused when unchanged). [default: ~/.cache/clipkit/stores/...]")
@model_options
@prompt_options
@_split_options
@rejection_options
@click.option("--experiment", default=None, help="MLflow experiment name. [default: from the dataset name]")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI. [default: $MLFLOW_TRACKING_URI or "
              "sqlite:///mlflow.db]")
@click.option("--no-track", is_flag=True, help="Don't log the run to MLflow.")
@click.option("--progress/--no-progress", default=None, help="Progress bars on stderr (default: when a terminal).")
def train_probe(data: str, out: str, config_path: Optional[str], method: Optional[str], finetune: Optional[bool],
                init: Optional[str], fewshot: Optional[int], c_grid: Optional[str], store_dir: Optional[str], experiment: Optional[str],
                tracking_uri: Optional[str], no_track: bool, progress: Optional[bool],
                target_precision: Optional[float], target_coverage: Optional[float], reject_below: Optional[float],
                **flags: Any) -> None:
    """Train a head on CLIP features and score it against zero-shot on the test split.

    DATA is a feature store (from `clipkit extract`) or a dataset (image folder or CSV manifest,
    see `clipkit extract --help`), which is extracted first into --store and reused next time.
    Hyper-parameters are chosen on the validation split; the probe and the zero-shot classifier
    (prompted with the class names and --templates) are both scored on the test split.

    \b
    Writes OUT/head.safetensors + OUT/head.json (use with `clipkit predict --head OUT`) and
    OUT/report/: report.json, confusion matrices (CSV + PNG) of probe and zero-shot,
    per_class.csv, predictions.csv, sweep.png and reliability.png. Logs the run to MLflow unless --no-track.

    \b
    Scores are calibrated: a temperature is fitted on val (NLL) for the probe and the zero-shot baseline,
    with ECE / NLL / Brier before and after. --target-precision P, --target-coverage C (both chosen on val)
    or --reject-below T save a "none of these" threshold with the head: `clipkit predict` and `serve`
    then reject images whose best calibrated probability is below it.

    \b
    Examples:
      clipkit train-probe out/demo --config configs/demo.yaml --out out/head
      clipkit train-probe out/demo-features --config configs/demo.yaml --out out/head-linear \\
          --method linear --init zeroshot --fewshot 8
      clipkit train-probe out/demo --config configs/demo.yaml --out out/head --target-precision 0.95
      clipkit train-probe out/demo --config configs/demo.yaml --out out/head-auto --method auto --fewshot 4
      clipkit train-probe labels.csv --model ViT-B-32 --pretrained openai --out heads/mine --no-track
    """
    from toolkit.tracking import records as run_records
    from toolkit.tracking import adapter as tracking
    from toolkit.fitting.probe import train_probe as fit

    labels_given = bool(flags.get("labels") or flags.get("labels_file"))
    overrides = _probe_overrides(flags, method=method, finetune=finetune, init=init, fewshot=fewshot,
                                 c_grid=_c_grid(c_grid))
    overrides.update({"tracking.experiment": experiment, "tracking.uri": tracking_uri,
                      "tracking.enabled": False if no_track else None})
    cfg = build_config(config_path, **overrides, **flags)
    apply_rejection(cfg, target_precision, target_coverage, reject_below)
    if cfg.probe.finetune and cfg.probe.method != "cache":  # before the model loads
        raise ConfigError(f"--finetune trains the keys of a cache head; use it with --method cache, "
                          f"not {cfg.probe.method}")
    if cfg.tracking.enabled:
        tracking.check_tracking(cfg.tracking)  # fail in seconds, before any encoding
    show = show_progress(progress)
    store, extractor, name = _open_or_extract(data, store_dir, cfg, show)
    zeroshot = _zeroshot_head(cfg, extractor, store.classes, labels_given)
    out_dir = Path(out)
    with run_records.probe_run(cfg, name, store=store) as run:
        result = fit(store, cfg.probe, zeroshot, progress=show)
        result.head.save(out_dir)
        _place_report(result, out_dir)
        run.log_result(result)
    click.echo(_summary(result, store, out_dir))
    if run.run_id:  # None when --no-track
        click.echo(f"mlflow    run {run.run_id} in {tracking.experiment_name(cfg.tracking, name)}: "
                   f"--head runs:/{run.run_id}/head" + (f" or {run.registered_uri}" if run.registered_uri else ""))
