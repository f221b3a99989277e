"""`clipkit extract` (dataset -> feature store) and `clipkit train-probe` (store -> linear head + report)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import click

from toolkit.errors import ConfigError
from toolkit.cli.common import (build_config, extraction_options, model_options, probe_overrides, prompt_options,
                                rejection_options, show_progress, split_options, with_rejection)
from toolkit.cli.outputs import overwrite_option, refuse_existing
from toolkit.cli.multilabel import negatives_option


def extraction_extractor(cfg, distributed: bool = False):
    """The extractor `extract` and `embed` run: in one process, encoder.fast's choice (ONNX Runtime on the CPU
    where its fast path applies: no torch import, images decoded in threads while the graph runs; torch
    otherwise); over several processes (--devices/--num-nodes > 1), the torch model under Lightning."""
    if not distributed:
        from toolkit.encoder.fast import open_extractor
        from toolkit.runtime import cache_root

        return open_extractor(cfg.model, cache_root(), bulk=True)
    for field, value, fix in (("engine", "onnx", "auto or torch"), ("precision", "int8", "auto or fp32")):
        if getattr(cfg.model, field) == value:
            raise ConfigError(f"{field} {value} runs in one process (ONNX Runtime); set {{field}} {fix}, or drop "
                              "--devices/--num-nodes", field=field)
    from toolkit.encoder.features import FeatureExtractor

    return FeatureExtractor.from_config(cfg.model)


def _store_line(store) -> str:
    skipped = len(store.meta.get("skipped", []))
    state = "reused" if getattr(store, "reused", False) else "extracted"
    extra = f", {skipped} unreadable image(s) skipped (listed in meta.json)" if skipped else ""
    extra += f"; {store.note}" if getattr(store, "note", None) else ""  # e.g. extracted again: damaged
    return f"{store.path} ({len(store)} x {store.features.shape[1]}, {state}{extra})"


engine_option = click.option(
    "--engine", type=click.Choice(["auto", "onnx", "torch"]), default=None,
    help="In one process, auto runs ONNX Runtime on the CPU (fp32, no torch import; the image tower is exported "
         "once into clipkit's cache, as for `predict`) and torch elsewhere: on CUDA, with precision bf16/fp16, "
         "with precision auto on a CPU that runs bf16 natively, or --devices/--num-nodes > 1 (Lightning). onnx: "
         "that or an error; torch: always PyTorch. Either engine's store is reused by the other (same features "
         "within 1e-5). [default: the config's model.engine, auto]")


@click.command()
@click.argument("data", type=click.Path(exists=False))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Folder of the feature store (created; an unfinished one is resumed).")
@model_options
@split_options
@extraction_options
@engine_option
def extract(data: str, out: str, config_path: Optional[str], progress: Optional[bool], devices: int, num_nodes: int,
            strategy: str, engine: Optional[str], **flags: Any) -> None:
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
    What runs where (--engine): one process on the CPU runs the model's image tower with ONNX Runtime
    in fp32 (no torch import; images decoded in threads while it runs), or in int8 with --precision int8
    (opt-in: faster, features slightly changed, a store of its own); torch runs it on CUDA, in bf16/fp16,
    with precision auto on a CPU that runs bf16 natively, and with --devices/--num-nodes > 1 (one
    Lightning process per device, DataLoader workers decoding).

    \b
    Examples:
      clipkit extract out/demo --config configs/demo.yaml --out out/demo-features
      clipkit extract labels.csv --model ViT-B-32 --pretrained openai --out features/mine
      clipkit extract out/demo --config configs/demo.yaml --out out/f --devices 2   # 2 processes (DDP)
    """
    from toolkit.data.extraction import extract_store
    from toolkit.data.multilabel import load_any

    cfg = build_config(config_path, **probe_overrides(flags), **flags, **{"model.engine": engine})
    p = cfg.probe  # a multi-label CSV / JSON Lines file (or --multi-label) gives a multi-label store
    dataset = load_any(data, p.seed, p.val_fraction, p.test_fraction, p.multi_label)
    if devices > 1 or num_nodes > 1:  # one process per device, each writing its batches' rows of the store
        from toolkit.data.extraction import extract_distributed

        store = extract_distributed(extraction_extractor(cfg, True), dataset, out, devices, num_nodes, strategy,
                                    progress=show_progress(progress))
        if store is None:  # not global rank 0: that one reports
            return
    else:
        store = extract_store(extraction_extractor(cfg), dataset, out, progress=show_progress(progress))
    click.echo(f"store     {_store_line(store)}")
    click.echo(f"classes   {', '.join(f'{c} ({n})' for c, n in store.meta['class_counts'].items())}")
    click.echo(f"splits    {', '.join(f'{s} {n}' for s, n in store.meta['split_counts'].items())}")


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
    cal = m.get("calibration") or {}
    lines += calibration_lines({"zero-shot": cal.get("zeroshot"), "probe": cal.get("probe")})
    lines += openset_lines(cal.get("openset"))
    lines += [f"head      {out}", f"report    {result.report_dir} (report.json, confusion_matrix.png, sweep.png, "
              "reliability.png)"]
    return "\n".join(lines)


def openset_lines(report: Optional[dict[str, Any]]) -> list[str]:
    """The out-of-set detector's summary line (train-probe --keep-known), or its note."""
    if not report:
        return []
    if "detector" not in report:
        return [f"note            {report.get('note', '')}"]
    sel, test = report["selection"], report.get("test_known_kept")
    return [f"unfamiliar      {report['chosen']} below {report['threshold']:.4g} (keep known {sel['target']:g}); "
            f"held-out-class AUROC {report['heldout_auroc']:.3f}; known kept: val {_pct(sel.get('val_known_kept'))}"
            + (f", test {_pct(test)}" if test is not None else "")]


def _pct(v: Optional[float]) -> str:
    return "  n/a" if v is None else f"{100 * v:4.1f}%"


def calibration_lines(reports: dict[str, Optional[dict[str, Any]]], split: str = "test") -> list[str]:
    """Summary lines for {name: heads.calibration.calibrate report}: temperature and ECE / NLL / Brier on `split` before ->
    after, then the "none of these" rule with its val and `split` precision and coverage, and any notes."""
    lines = [f"{'calibration':<16}{'temp.':>6}   {'ECE (' + split + ')':<16} {'NLL':<16} Brier"]
    notes = []
    for name, cal in reports.items():
        if not cal:
            continue
        b, a = (cal.get(split) or {}).get("before") or {}, (cal.get(split) or {}).get("after") or {}
        if b.get("ece") is None:
            continue
        lines.append(f"{name:<16}{cal['temperature']:>6.3g}   {_pct(b['ece'])} -> {_pct(a['ece'])}  "
                     f"{b['nll']:.3f} -> {a['nll']:.3f}   {b['brier']:.3f} -> {a['brier']:.3f}")
        if cal.get("note"):
            notes.append(f"note            {name}: {cal['note']}")
        rule = cal.get("rejection") or {}
        if rule:
            lines.append(_rule_line(rule, (cal.get(split) or {}).get("selective"), split))
            if rule.get("note"):
                notes.append(f"note            {name}: {rule['note']}")
    return lines + notes


def _rule_line(rule: dict[str, Any], sel: Optional[dict[str, Any]], split: str) -> str:
    how = {"target_precision": f"target precision {rule['target']:g}",
           "target_coverage": f"target coverage {rule['target']:g}", "given": "given"}[rule["rule"]]
    text = (f"none of these   below {rule['threshold']:.3f} ({how}); val: precision {_pct(rule['val_precision'])}, "
            f"coverage {_pct(rule['val_coverage'])}")
    if sel:
        text += f"; {split}: precision {_pct(sel['precision'])}, coverage {_pct(sel['coverage'])}"
    return text


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
@split_options
@rejection_options
@click.option("--keep-known", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Save an out-of-set detector with the head, chosen by holding each class out in turn, its "
                   "threshold keeping this share of known val (e.g. 0.95): images far from everything it was "
                   "trained on are rejected as \"unfamiliar\".")
@negatives_option
@click.option("--experiment", default=None, help="MLflow experiment name. [default: from the dataset name]")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI. [default: $MLFLOW_TRACKING_URI or "
              "sqlite:///mlflow.db]")
@click.option("--no-track", is_flag=True, help="Don't log the run to MLflow.")
@click.option("--progress/--no-progress", default=None, help="Progress bars on stderr (default: when a terminal).")
@overwrite_option
def train_probe(data: str, out: str, config_path: Optional[str], method: Optional[str], finetune: Optional[bool],
                init: Optional[str], fewshot: Optional[int], c_grid: Optional[str], store_dir: Optional[str], experiment: Optional[str],
                tracking_uri: Optional[str], no_track: bool, progress: Optional[bool], overwrite: bool,
                target_precision: Optional[float], target_coverage: Optional[float], reject_below: Optional[float],
                keep_known: Optional[float], **flags: Any) -> None:
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
    from toolkit.fitting.probe import check_probe_config
    from toolkit.tracking import records as run_records
    from toolkit.data.sources import store_and_extractor
    from toolkit.evaluation.report import write_report
    from toolkit.fitting.probe import train_probe as fit
    from toolkit.heads.zeroshot import baseline_head
    from toolkit.runtime import cache_root
    from toolkit.tracking import adapter as tracking

    from toolkit import fsio

    # one train-probe at a time per --out: a second one started meanwhile is refused (the lock sits beside OUT,
    # which is replaced whole), and released however this command ends
    click.get_current_context().with_resource(fsio.held_lock(fsio.sibling_lock(out), f"head folder '{out}'"))
    refuse_existing(out, overwrite, "--out")  # before any work: a rerun never replaces a head silently
    labels_given = bool(flags.get("labels") or flags.get("labels_file"))
    flags["prompts.negatives_file"] = flags.pop("negatives_file", None)
    overrides = probe_overrides(flags, method=method, finetune=finetune, init=init, fewshot=fewshot,
                                 c_grid=_c_grid(c_grid), keep_known=keep_known)
    overrides.update({"tracking.experiment": experiment, "tracking.uri": tracking_uri,
                      "tracking.enabled": False if no_track else None})
    cfg = build_config(config_path, **overrides, **flags)
    cfg = with_rejection(cfg, target_precision, target_coverage, reject_below)
    check_probe_config(cfg.probe, has_zeroshot=True)  # before the model loads (the baseline is always built)
    if cfg.tracking.enabled:
        tracking.check_tracking(cfg.tracking)  # fail in seconds, before any encoding
    show = show_progress(progress)
    store, extractor, name = store_and_extractor(data, cfg, cache_root() / "stores", store_dir, show)
    from toolkit.cli.multilabel import is_multilabel, refuse_negatives, run_multilabel

    if is_multilabel(store):  # labels separated by '|': one-vs-rest heads, per-class thresholds
        return run_multilabel(cfg, store, extractor, name, Path(out))
    refuse_negatives(cfg)
    zeroshot = baseline_head(extractor, store.classes, cfg.prompts, labels_given)
    negatives = None
    if cfg.probe.keep_known is not None:  # NegLabel among the out-of-set candidates: its words, once per model
        from toolkit.heads.openset import negative_embeddings

        negatives = negative_embeddings(extractor, cache_root() / "negatives")
    out_dir = Path(out)
    with run_records.probe_run(cfg, name, store=store) as run:
        result = fit(store, cfg.probe, zeroshot, progress=show, negatives=negatives,
                     step=(lambda text: click.echo(f"{text} ...", err=True)) if show else None)
        result.head.save(out_dir)  # atomically, replacing the folder: the report goes in after
        result.report_dir = write_report(result, out_dir / "report")
        run.log_result(result)
    click.echo(_summary(result, store, out_dir))
    from toolkit.evaluation.evaluate import size_warnings

    for line in size_warnings(int(result.params.get("n_val", 0)), {}, "val"):  # choosing on it: say how little
        click.echo(f"warning: {line} (hyper-parameters, the head and the threshold were chosen on it)", err=True)
    from toolkit.heads.calibration import tradeoff_lines

    for line in tradeoff_lines(((result.metrics.get("calibration") or {}).get("probe") or {}).get("rejection") or {}):
        click.echo(line, err=True)  # a target that costs most of the coverage, said loudly with the trade-off
    if run.run_id:  # None when --no-track
        click.echo(f"mlflow    run {run.run_id} in {tracking.experiment_name(cfg.tracking, name)}: "
                   f"--head runs:/{run.run_id}/head" + (f" or {run.registered_uri}" if run.registered_uri else ""))
