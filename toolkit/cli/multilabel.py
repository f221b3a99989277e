"""train-probe on a multi-label store: the fit (fitting.multilabel_probe), the head folder, the report, MLflow and
the summary. Called by `clipkit train-probe` when its DATA is multi-label; phrased in flags."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

import click

from toolkit.errors import ConfigError


def check_multilabel_flags(cfg) -> None:
    """Single-label options a multi-label run can't honour: one line each, naming the fix."""
    p = cfg.probe
    if p.target_coverage is not None or p.reject_below is not None:
        flag = "--target-coverage" if p.target_coverage is not None else "--reject-below"
        raise ConfigError(f"{flag} sets a single-label \"none of these\" rule, but DATA is multi-label: each class "
                          "gets its own threshold on val (best F1, or --target-precision P); drop " + flag)
    if p.method not in ("logreg", "blend", "cache") or p.finetune:
        what = "--finetune (Tip-Adapter-F)" if p.finetune else f"--method {p.method}"
        raise ConfigError(f"{what} has no multi-label form; use --method logreg (one-vs-rest), blend (with the "
                          "zero-shot scores) or cache (zero-shot + a vote of the training images) for multi-label DATA")


NEGATIVES_HELP = ("Multi-label DATA: a file giving each class its own negative prompt, one 'class | negative' "
                  "line per class ('* | text' for every class not named; '#' comments), e.g. 'a person holding a "
                  "dumbbell | a person'. [default: every class against 'something else']")


def negatives_option(f):
    """--negatives FILE (prompts.negatives_file): per-class negative prompts of the multi-label zero-shot head."""
    return click.option("--negatives", "negatives_file", type=click.Path(dir_okay=False), default=None,
                        help=NEGATIVES_HELP)(f)


def refuse_negatives(cfg) -> None:
    """--negatives on single-label DATA: one line naming the fix."""
    if cfg.prompts.negatives_file:
        raise ConfigError("--negatives gives each class of a multi-label dataset its negative prompt, but DATA is "
                          "single-label (one label per image); drop --negatives")


def multilabel_zeroshot(extractor, classes: list[str], prompts, labels: Optional[dict[str, str]] = None,
                        templates: Optional[list[str]] = None):
    """The multi-label zero-shot head over the store's classes: each class (or its prompt text in `labels`) in
    every template (`templates`, else prompts.templates) against its negative prompt (prompts.negatives_file,
    else "something else")."""
    from toolkit.heads.multilabel import MultiLabelZeroShotHead
    from toolkit.heads.prompts import load_negatives, resolve_templates

    negatives = load_negatives(prompts.negatives_file, classes) if prompts.negatives_file else None
    templates = templates or resolve_templates(prompts)
    if labels is None:
        return MultiLabelZeroShotHead.from_extractor(extractor, classes, templates, negatives)
    texts = [labels[c] for c in classes]
    negs = None if negatives is None else {labels[c]: negatives[c] for c in classes}
    head = MultiLabelZeroShotHead.from_extractor(extractor, texts, templates, negs)
    head.classes_ = list(classes)  # scored under the dataset's class names
    return head


def run_multilabel(cfg, store, extractor, name: str, out_dir: Path, c_grid=None) -> None:
    """Fit, save OUT (head) and OUT/report, log the run unless tracking is off, print the summary."""
    import shutil

    from toolkit.fitting.multilabel_probe import train_multilabel
    from toolkit.tracking import records as run_records

    check_multilabel_flags(cfg)
    p = cfg.probe
    zeroshot = multilabel_zeroshot(extractor, store.classes, cfg.prompts)
    with run_records.probe_run(cfg, name, store=store) as run:
        with tempfile.TemporaryDirectory(prefix="clipkit-report-") as tmp:
            result = train_multilabel(store, p.method, zeroshot, p.fewshot, p.seed, c_grid or p.c_grid,
                                      p.per_class_c, p.class_calibration, p.target_precision, Path(tmp) / "report",
                                      cfg.probe.model_dump(mode="json"))
            result.head.save(out_dir)  # atomically, replacing the folder: the report goes in after
            shutil.move(str(result.report_dir), str(out_dir / "report"))
            result.report_dir = out_dir / "report"
        run.log_result(result)
    click.echo(summary(result, out_dir))
    if run.run_id:
        click.echo(f"mlflow    run {run.run_id}: --head runs:/{run.run_id}/head")


def _pct(v: Optional[float]) -> str:
    return "   n/a" if v is None else f"{100 * v:5.1f}%"


def summary(result, out: Path) -> str:
    m, p = result.metrics, result.params
    few = f", {p['fewshot']} shots per class" if p.get("fewshot") else ""
    C = p.get("C")
    cs = (f"C per class {min(C):.3g}..{max(C):.3g}" if isinstance(C, list) else f"C={C:.3g}") if C else ""
    cs += ", features re-centred" if p.get("centered") else ""
    alpha = f", alpha={p['alpha']:.2g} x probe + zero-shot" if isinstance(p.get("alpha"), float) else ""
    if p.get("method") == "cache":
        cs = (f"zero-shot + a vote of {p['n_keys']} training images, beta={p['beta']:g}, alpha per class "
              f"{min(p['alpha']):g}..{max(p['alpha']):g}")
    lines = [f"multi-label {len(result.head.classes_)} classes; split train {p['n_train']}{few}, val {p['n_val']}, "
             f"test {p['n_test']}",
             f"method    {p['method']}: {cs}{alpha}; calibration {p['calibration']} per class; "
             f"fit in {result.timings['fit_s']:.1f} s",
             f"{'':<16}{'mAP':>7} {'micro-F1':>9} {'macro-F1':>9} {'ECE':>7}"]
    for label, part in (("zero-shot", m.get("zeroshot_test")), ("head", m["test"])):
        if part:
            lines.append(f"{label:<16}{_pct(part['mAP']):>7} {_pct(part['micro_f1']):>9} {_pct(part['macro_f1']):>9} "
                         f"{_pct(part['ece']):>7}")
    g = m.get("test_global_threshold")
    if g:
        lines.append(f"one threshold   {g['threshold']:.2f} for every class (best on val): macro-F1 "
                     f"{_pct(g['macro_f1']).strip()} vs {_pct(m['test']['macro_f1']).strip()} per class")
    if m.get("gain_over_zeroshot") is not None:
        lines.append(f"gain            {m['gain_over_zeroshot']:+.1f} mAP points over zero-shot")
    lines.append("thresholds      " + ", ".join(f"{c} {t:.2f}" for c, t in
                                                zip(result.head.classes_, result.head.thresholds_)))
    lines += [f"head      {out}", f"report    {result.report_dir} (report.json, predictions.csv)"]
    return "\n".join(lines)


def is_multilabel(store) -> bool:
    from toolkit.data.multilabel import is_multilabel_store

    return is_multilabel_store(store)


def refuse_multilabel(opened, what: str) -> None:
    """ConfigError for a single-label command given multi-label data: `opened` is data.sources.open_data's
    (dataset or None, store or None, classes, name)."""
    dataset, store = opened[0], opened[1]
    if getattr(dataset, "multi_label", False) or (store is not None and is_multilabel(store)):
        raise ConfigError(f"{what} is single-label, but DATA is multi-label (labels separated by '|'); use "
                          "`clipkit train-probe` on it, which scores the multi-label zero-shot head as its baseline")


def opened_multilabel(opened) -> bool:
    """Whether data.sources.open_data's (dataset or None, store or None, classes, name) is multi-label."""
    dataset, store = opened[0], opened[1]
    return bool(getattr(dataset, "multi_label", False) or (store is not None and is_multilabel(store)))


def check_multilabel_prompts(cfg, multi: bool, save_head: Optional[str] = None) -> None:
    """eval-prompts' options that don't fit the data: single-label rules on multi-label data, --negatives on
    single-label data (one line each, naming the fix)."""
    if not multi:
        return refuse_negatives(cfg)
    p = cfg.probe
    if p.target_coverage is not None or p.reject_below is not None:
        flag = "--target-coverage" if p.target_coverage is not None else "--reject-below"
        raise ConfigError(f"{flag} sets a single-label \"none of these\" rule, but DATA is multi-label: each class "
                          "gets its own threshold on val (best F1, or --target-precision P); drop " + flag)


def eval_prompts_multilabel(cfg, name: str, sets: list, store, extractor, split: str, fmt: str,
                            save_head: Optional[str] = None) -> None:
    """eval-prompts on multi-label data: per prompt set, the multi-label zero-shot head (each class's text in the
    set's templates against its negative), Platt calibration and thresholds per class on val, scored on `split`;
    one MLflow run (kind=prompt) each; a table (or JSON) best mAP first."""
    import json

    from toolkit.fitting.multilabel_eval import score_prompts
    from toolkit.tracking import adapter as tracking
    from toolkit.tracking import records as run_records

    rows, evals = [], []
    for ps in sets:
        zs = multilabel_zeroshot(extractor, store.classes, cfg.prompts, ps.labels, ps.templates)
        with run_records.prompt_run(cfg, name, ps, store) as run:
            ev = score_prompts(zs, store, split, cfg.probe.class_calibration, cfg.probe.target_precision, ps)
            run.log_result(ev)
        evals.append(ev)
        m = ev.metrics
        rows.append({"prompt_set": ps.name, "template_count": len(ps.templates), "run_id": run.run_id,
                     "metrics": {k: m.get(k) for k in ("mAP", "micro_f1", "macro_f1", "ece")}, "val_mAP": ev.val_map,
                     "per_class": {c: {"ap": v.get("ap"), "threshold": v.get("threshold")}
                                   for c, v in m["per_class"].items()}})
    rows.sort(key=lambda r: -(r["metrics"]["mAP"] or 0))
    exp = tracking.experiment_name(cfg.tracking, name)
    if fmt == "json":
        click.echo(json.dumps({"dataset": name, "split": split, "multi_label": True, "store": str(store.path),
                               "experiment": exp if cfg.tracking.enabled else None, "results": rows}, indent=2))
    else:
        width = max([len(r["prompt_set"]) for r in rows] + [10])
        click.echo(f"{'prompt set':<{width}} {'templates':>9} {'mAP':>7} {'micro-F1':>9} {'macro-F1':>9} "
                   f"{'ECE':>7}  run id")
        for r in rows:
            m = r["metrics"]
            click.echo(f"{r['prompt_set']:<{width}} {r['template_count']:>9} {_pct(m['mAP']):>7} "
                       f"{_pct(m['micro_f1']):>9} {_pct(m['macro_f1']):>9} {_pct(m['ece']):>7}  {r['run_id'] or '-'}")
    if cfg.tracking.enabled:
        click.echo(f"logged {len(rows)} prompt run(s) to experiment '{exp}' in {tracking.resolve_uri(cfg.tracking)}; "
                   f"rank them with `clipkit compare --experiment {exp} --metric map`", err=True)
    if save_head:
        best = max(evals, key=lambda ev: ev.val_map if ev.val_map is not None else -1.0)
        best.head.annotated(metrics=best.scalar_metrics()).save(save_head)
        click.echo(f"saved the multi-label zero-shot head of prompt set '{best.prompt_set.name}' (best val mAP of "
                   f"{len(evals)}) to {save_head}: serve it with `clipkit serve --head {save_head}`", err=True)


def data_is_multilabel(data: str, cfg) -> bool:
    """Whether DATA (a feature store, or a CSV / JSON Lines file, or --multi-label) is multi-label."""
    from toolkit.data.multilabel import is_multilabel_source
    from toolkit.data.store import FeatureStore

    if FeatureStore.is_store(data):
        return is_multilabel(FeatureStore.open(data))
    return bool(cfg.probe.multi_label) or (Path(data).is_file() and is_multilabel_source(data))


def refuse_multilabel_head(head) -> None:
    """A multi-label head asked to score single-label data: one line naming the fix."""
    if getattr(head, "multi_label", False):
        raise ConfigError("the head is multi-label (each class on its own), but DATA is single-label (one label per "
                          "image); evaluate it on a multi-label CSV (path,labels with '|') or JSON Lines file, or "
                          "pass --multi-label")


def evaluate_multilabel_data(data: str, head_spec: Optional[str], split: str, cfg, out: Optional[str], fmt: str,
                             progress: bool) -> None:
    """`clipkit evaluate` on multi-label DATA: the head (or, without --head, the multi-label zero-shot head on the
    class names, calibrated and thresholded on val) on `split` of DATA's feature store (train-probe's, reused):
    mAP, micro/macro F1, per-class AP, F1 and threshold; --out gets evaluation.json and predictions.csv."""
    import json

    from toolkit import fsio
    from toolkit.cli.common import local_head
    from toolkit.data.sources import store_and_extractor
    from toolkit.fitting.multilabel_eval import score_head, score_prompts
    from toolkit.heads.base import load_head
    from toolkit.predictor import check_head_matches
    from toolkit.runtime import cache_root

    folder = local_head(head_spec, cfg)
    head = load_head(folder) if folder else None
    if head is not None and not getattr(head, "multi_label", False):
        raise ConfigError(f"head '{head_spec}' is single-label (one class per image), but DATA is multi-label; "
                          "train a multi-label head on DATA with `clipkit train-probe`")
    if head is not None:  # the head's model, unless one was given
        from toolkit.identity import adopt_model

        cfg = adopt_model(cfg, head.identity, f"head '{head_spec}'")
    store, extractor, _ = store_and_extractor(data, cfg, cache_root() / "stores", None, progress)
    if head is None:
        ev = score_prompts(multilabel_zeroshot(extractor, store.classes, cfg.prompts), store, split,
                           cfg.probe.class_calibration)
    else:
        check_head_matches(head, store.identity)
        ev = score_head(head, store, split)
    m = ev.metrics
    result = {"data": str(data), "head": head_spec or "zero-shot (class names)", "split": split, "multi_label": True,
              "n": len(ev.paths), **{k: m.get(k) for k in ("mAP", "micro_f1", "macro_f1", "ece")},
              "per_class": m["per_class"]}
    if out:
        with fsio.atomic_dir(Path(out)) as tmp:
            (tmp / "evaluation.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
            (tmp / "predictions.csv").write_text(ev.predictions_csv())
    if fmt == "json":
        click.echo(json.dumps(result, indent=2, default=float))
        return
    click.echo(f"{result['head']} on {data} ({split}, {result['n']} images, multi-label)")
    click.echo(f"  mAP {_pct(m['mAP']).strip()}   micro-F1 {_pct(m['micro_f1']).strip()}   macro-F1 "
               f"{_pct(m['macro_f1']).strip()}   ECE {_pct(m['ece']).strip()}")
    width = max(len(c) for c in ev.classes)
    click.echo(f"  {'label':<{width}} {'AP':>7} {'F1':>7} {'threshold':>9}")
    for c, v in m["per_class"].items():
        click.echo(f"  {c:<{width}} {_pct(v.get('ap')):>7} {_pct(v.get('f1')):>7} {v['threshold']:>9.2f}")
    if out:
        click.echo(f"  wrote {Path(out) / 'evaluation.json'} and predictions.csv")
