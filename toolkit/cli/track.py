"""`clipkit eval-prompts` (prompt sets scored zero-shot, one MLflow run each) and `clipkit compare`."""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Callable, Optional

import click

from toolkit.fitting.prompt_eval import SPLIT_CHOICES
from toolkit.cli.common import (build_config, model_options, probe_overrides, rejection_options, show_progress,
                                split_options, with_rejection)
from toolkit.cli.multilabel import negatives_option
from toolkit.cli.outputs import overwrite_option, refuse_existing

def tracking_options(f: Callable) -> Callable:
    """--experiment, --tracking-uri, --no-track (fill cfg.tracking through `tracking_overrides`)."""
    opts = [
        click.option("--experiment", default=None, help="MLflow experiment name. [default: clipkit-<dataset>]"),
        click.option("--tracking-uri", default=None, help="MLflow store: sqlite:///FILE.db or http://HOST:PORT of an "
                     "`mlflow server`. [default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db + ./mlartifacts]"),
        click.option("--no-track", is_flag=True, help="Don't record anything in MLflow."),
    ]
    return functools.reduce(lambda acc, opt: opt(acc), reversed(opts), f)


def tracking_overrides(experiment: Optional[str], tracking_uri: Optional[str], no_track: bool) -> dict[str, Any]:
    return {"tracking.experiment": experiment, "tracking.uri": tracking_uri,
            "tracking.enabled": False if no_track else None}


def _results_table(rows: list[dict[str, Any]]) -> str:
    """One line per prompt set: accuracy, balanced accuracy, macro-F1, temperature, ECE before -> after."""
    width = max([len(r["prompt_set"]) for r in rows] + [10])
    lines = [f"{'prompt set':<{width}} {'templates':>9} {'accuracy':>9} {'bal. acc':>9} {'macro-F1':>9} "
             f"{'temp.':>6} {'ECE before->after':>18}  run id"]
    for r in rows:
        m, c = r["metrics"], r["calibration"]
        ece = f"{100 * c['ece_before']:.1f}% -> {100 * c['ece']:.1f}%" if "ece" in c else "n/a"
        lines.append(f"{r['prompt_set']:<{width}} {r['template_count']:>9} {100 * m['accuracy']:>8.1f}% "
                     f"{100 * m['balanced_accuracy']:>8.1f}% {100 * m['macro_f1']:>8.1f}% "
                     f"{c.get('temperature', 1):>6.3g} {ece:>18}  {r['run_id'] or '-'}")
    return "\n".join(lines)


def _save_head(evals: list, out: str) -> str:
    """Save the calibrated zero-shot head of the prompt set with the best val accuracy (ties: lower val NLL
    after calibration) to `out`; returns a line saying which was saved."""
    def key(ev):
        after = ev.calibration["val"]["after"]
        return (-(after["accuracy"] or 0), after["nll"] if after["nll"] is not None else float("inf"))

    best = min(evals, key=key)
    best.head.annotated(metrics=best.scalar_metrics()).save(out)
    why = f" (best val accuracy of {len(evals)})" if len(evals) > 1 else ""
    return (f"saved the calibrated zero-shot head of prompt set '{best.prompt_set.name}'{why} to {out}: "
            f"serve it with `clipkit serve --head {out}`")


@click.command("eval-prompts")
@click.argument("data")
@model_options
@click.option("--templates", "templates", multiple=True, help="none | people | openai_imagenet | a file with one "
              "'{}' template per line. Repeat to compare several.")
@click.option("--labels", "labels_files", multiple=True, type=click.Path(dir_okay=False),
              help="A file naming the classes, one per line. Repeat to compare several (x each --templates).")
@click.option("--prompt-sets", type=click.Path(dir_okay=False), default=None,
              help="YAML of named prompt sets; labels may map class -> prompt text. See configs/prompt_sets.yaml.")
@click.option("--split", type=click.Choice(SPLIT_CHOICES), default="test", show_default=True,
              help="Which images to score (test = the split a probe is tested on, for `clipkit compare`).")
@split_options
@click.option("--store", "store_path", default=None, type=click.Path(file_okay=False),
              help="Feature-store folder to reuse or fill. [default: train-probe's, ~/.cache/clipkit/stores/...]")
@rejection_options
@click.option("--save-head", "save_head", default=None, type=click.Path(file_okay=False),
              help="Save the calibrated zero-shot head (the best prompt set on val) to this folder, for "
                   "`clipkit predict --head` / `clipkit serve --head`.")
@negatives_option
@tracking_options
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr (default: when a terminal).")
@overwrite_option
def eval_prompts(data: str, config_path: Optional[str], templates: tuple[str, ...], labels_files: tuple[str, ...],
                 prompt_sets: Optional[str], split: str, store_path: Optional[str],
                 experiment: Optional[str], tracking_uri: Optional[str], no_track: bool, fmt: str,
                 progress: Optional[bool], target_precision: Optional[float], target_coverage: Optional[float],
                 reject_below: Optional[float], save_head: Optional[str], overwrite: bool, **flags: Any) -> None:
    """Score several prompt sets zero-shot on one labelled dataset; one MLflow run (kind=prompt) each.

    DATA is an image folder (ROOT/<class>/*.jpg or ROOT/{train,val,test}/<class>/), a CSV manifest
    (path,label[,split]) or a feature store. Images are encoded once (into a feature store); each
    prompt set costs one text encoding. Labels default to the class names.

    \b
    Each zero-shot head is calibrated: a temperature fitted on the val split (NLL), with ECE / NLL / Brier
    before and after logged. --target-precision | --target-coverage | --reject-below add a "none of these"
    threshold (chosen on val); --save-head OUT saves the calibrated head (answering with the class names).

    \b
    Multi-label DATA (labels separated by '|'): each class is scored on its own, its prompt against a negative
    prompt (--negatives FILE gives each class its own; default "something else"), calibrated (Platt) and
    thresholded per class on val (best F1, or --target-precision P); mAP, micro/macro F1 and per-class AP
    and thresholds are reported and logged (`clipkit compare --metric map`).

    \b
    Examples:
      clipkit eval-prompts out/demo --config configs/demo.yaml --templates none --templates people
      clipkit eval-prompts out/demo --config configs/demo.yaml --prompt-sets configs/prompt_sets.yaml
      clipkit eval-prompts shots.csv --templates people --labels a.txt --labels b.txt --format json
      clipkit eval-prompts out/demo --config configs/demo.yaml --target-precision 0.9 --save-head out/zs-head
      clipkit compare          # then rank them against trained probes
    """
    from toolkit.tracking import records as run_records
    from toolkit.tracking import adapter as tracking
    from toolkit.evaluation.metrics import headline
    from toolkit.data.sources import open_data, store_and_extractor
    from toolkit.fitting.prompt_eval import evaluate_prompt_set, load_prompt_sets, prompt_sets_from_flags
    from toolkit.runtime import cache_root

    if save_head:
        refuse_existing(save_head, overwrite, "--save-head")  # before any work, as every command's output
    overrides = {**probe_overrides(flags), **tracking_overrides(experiment, tracking_uri, no_track),
                 "prompts.negatives_file": flags.pop("negatives_file", None)}
    cfg = build_config(config_path, **overrides, **flags)
    cfg = with_rejection(cfg, target_precision, target_coverage, reject_below)
    rule = {k: getattr(cfg.probe, k) for k in ("target_precision", "target_coverage", "reject_below")}
    opened = open_data(data, cfg.probe)
    from toolkit.cli.multilabel import check_multilabel_prompts, eval_prompts_multilabel, opened_multilabel

    multi = opened_multilabel(opened)  # one run per prompt set, each class scored on its own
    check_multilabel_prompts(cfg, multi, save_head)
    classes, name = opened[2], opened[3]
    sets = load_prompt_sets(prompt_sets, classes) if prompt_sets else []
    if templates or labels_files or not sets:
        sets += prompt_sets_from_flags(templates, labels_files, classes, cfg.prompts.templates)
    if len({s.name for s in sets}) != len(sets):
        raise click.UsageError("two prompt sets share a name; rename one in the YAML")
    tracking.check_tracking(cfg.tracking)  # before the model load
    # the same store cache train-probe uses, so images are encoded once
    store, extractor, _ = store_and_extractor(data, cfg, cache_root() / "stores", store_path,
                                              show_progress(progress), opened)
    if multi:
        return eval_prompts_multilabel(cfg, name, sets, store, extractor, split, fmt, save_head)
    rows, evals = [], []
    for ps in sets:
        with run_records.prompt_run(cfg, name, ps, store) as run:
            ev = evaluate_prompt_set(extractor, store, ps, split, rule)
            run.log_result(ev)
        evals.append(ev)
        rows.append({"prompt_set": ps.name, "template_count": len(ps.templates), "run_id": run.run_id,
                     "metrics": headline(ev.metrics), "calibration": ev.scalar_metrics(),
                     "rejection": ev.calibration.get("rejection") or None,
                     "recall": {c: v["recall"] for c, v in ev.metrics["per_class"].items()}})
    rows.sort(key=lambda r: -r["metrics"]["accuracy"])
    exp = tracking.experiment_name(cfg.tracking, name)
    if fmt == "json":
        click.echo(json.dumps({"dataset": name, "split": split, "store": str(store.path),
                               "experiment": exp if cfg.tracking.enabled else None, "results": rows}, indent=2))
    else:
        click.echo(_results_table(rows))
    if cfg.tracking.enabled:
        click.echo(f"logged {len(rows)} prompt run(s) to experiment '{exp}' in {tracking.resolve_uri(cfg.tracking)}; "
                   f"rank them with `clipkit compare --experiment {exp}`", err=True)
    for ev in evals:
        for note in (ev.calibration.get("note"), (ev.calibration.get("rejection") or {}).get("note")):
            if note:
                click.echo(f"note: prompt set '{ev.prompt_set.name}': {note}", err=True)
        from toolkit.heads.calibration import tradeoff_lines  # a target that costs most coverage, said loudly

        for line in tradeoff_lines(ev.calibration.get("rejection") or {}):
            click.echo(line.replace("warning: ", f"warning: prompt set '{ev.prompt_set.name}': ", 1), err=True)
    if save_head:
        click.echo(_save_head(evals, save_head), err=True)


def _refuse_missing_database(uri: str) -> None:
    """compare only reads: an SQLite store that isn't there is named (with where it was looked for), never created
    empty. The default store is mlflow.db in the folder clipkit runs in."""
    rest = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
    rest = rest[len("file:"):].split("?", 1)[0] if rest.startswith("file:") else rest
    if rest and rest != ":memory:" and not Path(rest).exists():
        from toolkit.errors import TrackingError

        raise TrackingError(f"no MLflow store at '{Path(rest).resolve()}' (tracking URI {uri}; the default store "
                            "is mlflow.db in the current folder); run compare in the folder you trained in, or "
                            "pass --tracking-uri sqlite:////ABSOLUTE/PATH/mlflow.db")


@click.command()
@click.option("--experiment", default=None, help="Experiment to compare. [default: the one with the latest run]")
@click.option("--dataset", default=None, help="Dataset name, when an experiment holds runs on several.")
@click.option("--metric", default="accuracy", show_default=True,
              help="accuracy | balanced_accuracy | macro_f1 | map (multi-label runs) (or any metric the runs "
                   "logged).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--out", "charts_dir", default=None, type=click.Path(file_okay=False),
              help="Folder for the bar charts, one per metric named by it (OUT/accuracy.png, OUT/macro_f1.png, "
                   "...). Without it (or --plot) no file is written.")
@click.option("--plot", "plot_path", default=None, type=click.Path(dir_okay=False),
              help="Bar chart PNG of --metric at this path; one per other metric beside it (PATH-<metric>.png).")
@click.option("--no-plot", is_flag=True, help="Don't write charts (the default without --out or --plot).")
@click.option("--tracking-uri", default=None, help="MLflow store. [default: $MLFLOW_TRACKING_URI, else "
              "sqlite:///mlflow.db]")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="YAML config whose tracking section names the store.")
def compare(experiment: Optional[str], dataset: Optional[str], metric: str, fmt: str, charts_dir: Optional[str],
            plot_path: Optional[str], no_plot: bool, tracking_uri: Optional[str], config_path: Optional[str]) -> None:
    """Rank the prompt runs and probe runs of one dataset, best first, with the gain over zero-shot.

    Gains are percentage points. A probe run's gain is over the zero-shot score it logged on its own
    test split, the gain `train-probe` printed; prompt runs are measured against the best probe run's
    zero-shot score (or, with no probe runs, the best prompt run). Probe rows use test-split metrics;
    prompt runs made with the default --split test use the same images when seed and fractions agree.

    \b
    Examples:
      clipkit compare
      clipkit compare --experiment clipkit-demo --metric macro_f1 --format json
      clipkit compare --tracking-uri http://127.0.0.1:5000 --out out/compare   # out/compare/<metric>.png
    """
    from toolkit.tracking import adapter as tracking
    from toolkit.evaluation.compare import finished_runs, rank, render_json, render_table, write_chart_folder, \
        write_charts

    cfg = build_config(config_path, **{"tracking.uri": tracking_uri, "tracking.enabled": True})
    tracking.check_tracking(cfg.tracking, write=False)  # ranking only reads: a read-only database will do
    _refuse_missing_database(tracking.resolve_uri(cfg.tracking))
    name, runs = tracking.search_runs(cfg.tracking, experiment)
    runs, skipped = finished_runs(runs)
    if skipped:
        click.echo(skipped, err=True)
    report = rank(runs, metric, dataset, name)
    click.echo(render_json(report) if fmt == "json" else render_table(report))
    if no_plot or not (charts_dir or plot_path):
        return
    paths = (write_chart_folder(runs, report, charts_dir) if charts_dir
             else write_charts(runs, report, Path(plot_path)))
    click.echo(f"wrote {len(paths)} charts: " + ", ".join(str(p) for p in paths), err=True)
