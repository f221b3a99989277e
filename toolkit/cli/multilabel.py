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
    if p.method not in ("logreg", "blend"):
        raise ConfigError(f"--method {p.method} has no multi-label form; use --method logreg (one-vs-rest) or "
                          "--method blend (with the zero-shot scores) for multi-label DATA")


def multilabel_zeroshot(extractor, classes: list[str], prompts, negatives: Optional[dict[str, str]] = None):
    """The multi-label zero-shot head over the store's classes: each class name in every template against a
    negative prompt (`negatives` per class, else "something else")."""
    from toolkit.heads.multilabel import MultiLabelZeroShotHead
    from toolkit.heads.prompts import resolve_templates

    return MultiLabelZeroShotHead.from_extractor(extractor, classes, resolve_templates(prompts), negatives)


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
    alpha = f", alpha={p['alpha']:.2g} x probe + zero-shot" if "alpha" in p else ""
    lines = [f"multi-label {len(result.head.classes_)} classes; split train {p['n_train']}{few}, val {p['n_val']}, "
             f"test {p['n_test']}",
             f"method    {p['method']} (one-vs-rest): {cs}{alpha}; calibration {p['calibration']} per class; "
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
