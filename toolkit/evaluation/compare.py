"""Rank prompt runs and probe runs of one dataset on one metric, with the gain over zero-shot.

A probe run's gain is over the zero-shot score it logged on its own test split (zeroshot_test_<metric>): the
number `train-probe` printed for it. Prompt runs are measured against the best probe run's zero-shot score
(the class names as prompts), or, with no probe runs, against the best prompt run.

Input: run dicts as tracking.search_runs returns them ({run_id, name, kind, dataset, status, params, metrics,
tags}); only FINISHED runs are ranked (`finished_runs` counts the others for a note).
No mlflow import here. Gains are in percentage points (100 x the metric difference) for metrics that are
fractions, in the metric's own units for the others (nll, brier). For a metric where lower is better (ece,
nll, brier) the best run is the lowest one and a positive gain is still an improvement.
"""
from __future__ import annotations

import json
from typing import Any, Optional, Sequence

from toolkit.errors import ConfigError, TrackingError

LOWER_IS_BETTER = ("ece", "nll", "brier")  # calibration errors and losses, by name (also test_ece, ...)
NOT_FRACTIONS = ("nll", "brier", "temperature")  # shown as numbers, not %: nll is unbounded, brier runs 0..2


def _base(metric: str) -> str:
    """A metric's kind, without split prefix or '_before' suffix: 'zeroshot_test_ece_before' -> 'ece'."""
    name = metric.rsplit("/", 1)[-1].removesuffix("_before")
    last = name.rsplit("_", 1)[-1]
    return last if last in LOWER_IS_BETTER + NOT_FRACTIONS else name


def lower_is_better(metric: str) -> bool:
    return _base(metric) in LOWER_IS_BETTER


def is_fraction(metric: str) -> bool:
    """Whether a metric is a fraction in [0, 1] (shown as %, gains in points)."""
    return _base(metric) not in NOT_FRACTIONS


KEY_PARAMS = {"prompt": ("prompt_set", "templates_spec", "template_count", "labels_spec", "model", "pretrained"),
              "probe": ("method", "chosen", "shots", "chosen_value", "seed", "model", "pretrained")}


def _pick_dataset(runs: list[dict[str, Any]], dataset: Optional[str]) -> tuple[str, list[str]]:
    datasets = sorted({r["dataset"] for r in runs if r.get("dataset")})
    if dataset is not None:
        if dataset not in datasets:
            raise ConfigError(f"no runs on dataset '{dataset}' here; datasets with runs: "
                              f"{', '.join(datasets) or 'none'}")
        return dataset, [d for d in datasets if d != dataset]
    latest = max(runs, key=lambda r: r.get("start_time") or 0)["dataset"]
    return latest, [d for d in datasets if d != latest]


def _description(run: dict[str, Any]) -> str:
    p = run["params"]
    if run["kind"] == "prompt":
        return (f"{p.get('template_count', '?')} templates ({p.get('templates_spec', '?')}), "
                f"labels: {p.get('labels_spec', '?')}")
    method = p.get("method", "?")
    chosen = p.get("chosen", method)  # auto: the candidate it kept
    if chosen == "cache" and str(p.get("finetune")) == "True":  # MLflow params come back as strings
        chosen = "cache-f"
    name = {"logreg": "C", "linear": "wd", "cache": "alpha", "cache-f": "alpha", "blend": "alpha"}.get(chosen, "value")
    what = f"auto -> {chosen}" if method == "auto" else chosen
    value = p.get("chosen_value", "?")
    try:
        value = f"{float(value):.3g}"  # MLflow gives params back as strings: '17.78279410038923' -> '17.8'
    except (TypeError, ValueError):
        pass
    return f"{what} {name}={value}, shots: {p.get('shots', 'all')}"


def rank(runs: Sequence[dict[str, Any]], metric: str = "accuracy", dataset: Optional[str] = None,
         experiment: str = "") -> dict[str, Any]:
    """Best-first rows of the runs on one dataset that have `metric`, each with `gain` over the baseline.

    A probe run's gain is over its own zero-shot score (zeroshot_test_<metric>, as train-probe reports it);
    other rows' gain is over `baseline`: the zero-shot score of the best probe run that logged one, else the
    best prompt run. Best is the highest value, or the lowest for ece, nll and brier (`lower_is_better`); a
    positive gain is better than the baseline either way. Notes flag runs on other datasets or other test splits.
    """
    runs = [r for r in runs if r.get("kind") in ("prompt", "probe") and r.get("status", "FINISHED") == "FINISHED"]
    if not runs:
        raise TrackingError(f"experiment '{experiment}' has no finished prompt or probe runs; run "
                            "`clipkit eval-prompts DATA` or `clipkit train-probe DATA` first")
    ds, others = _pick_dataset(runs, dataset)
    mine = [r for r in runs if r["dataset"] == ds]
    scored = [r for r in mine if r["metrics"].get(metric) is not None]
    if not scored:
        known = sorted({k for r in mine for k in r["metrics"] if "/" not in k})
        raise ConfigError(f"no run on '{ds}' has metric '{metric}'; use one of: {', '.join(known)}")
    sign = -1.0 if lower_is_better(metric) else 1.0  # sign * value: higher is better
    scale = 100.0 if is_fraction(metric) else 1.0  # gains in points for fractions
    scored.sort(key=lambda r: (-sign * r["metrics"][metric], r["kind"] != "probe", r["name"] or ""))
    own = {r["run_id"]: r["metrics"][f"zeroshot_test_{metric}"] for r in scored
           if r["kind"] == "probe" and r["metrics"].get(f"zeroshot_test_{metric}") is not None}
    prompts = [r["metrics"][metric] for r in scored if r["kind"] == "prompt"]
    baseline, source = None, None
    if own:  # scored is best first: the best probe run's own zero-shot score
        baseline, source = next(own[r["run_id"]] for r in scored if r["run_id"] in own), "probe runs' zero-shot"
    elif prompts:
        baseline, source = max(prompts, key=lambda v: sign * v), "best prompt run"
    base = {r["run_id"]: own.get(r["run_id"], baseline) for r in scored}
    rows = [{"rank": i + 1, "run_id": r["run_id"], "name": r["name"], "kind": r["kind"],
             "description": _description(r), metric: r["metrics"][metric], "baseline": base[r["run_id"]],
             "gain": None if base[r["run_id"]] is None else
             scale * sign * (r["metrics"][metric] - base[r["run_id"]]),
             "params": {k: r["params"][k] for k in KEY_PARAMS[r["kind"]] if k in r["params"]},
             "metrics": {k: v for k, v in sorted(r["metrics"].items()) if "/" not in k}}
            for i, r in enumerate(scored)]
    notes = []
    if others:
        notes.append(f"runs on other datasets not shown: {', '.join(others)} (pass --dataset NAME)")
    if len({round(v, 9) for v in own.values()}) > 1:
        notes.append("probe runs scored zero-shot differently (other test splits or templates); each probe's gain "
                     "is over its own zero-shot score")
    digests = {r["tags"].get("split_digest") for r in scored} - {None}
    if len(digests) > 1:
        notes.append(f"runs were scored on {len(digests)} different image sets (other seeds, fractions or --split); "
                     "gains across them are not like for like")
    return {"experiment": experiment, "dataset": ds, "metric": metric, "lower_is_better": sign < 0,
            "baseline": baseline,
            "baseline_source": source, "runs": rows, "notes": notes}


def _value(metric: str, v: float) -> str:
    return f"{100 * v:.1f}%" if is_fraction(metric) else f"{v:.3f}"


def finished_runs(runs: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], Optional[str]]:
    """(the FINISHED runs, a line counting the others or None). Unfinished runs (RUNNING: still going or its
    process died; KILLED; FAILED) have partial metrics or none, so they are left out, but never silently."""
    done = [r for r in runs if r.get("status", "FINISHED") == "FINISHED"]
    left = sorted(r["status"] for r in runs if r.get("status", "FINISHED") != "FINISHED")
    if not left:
        return done, None
    counts = ", ".join(f"{left.count(s)} {s}" for s in sorted(set(left)))
    return done, (f"note: skipped {len(left)} unfinished run(s) ({counts}); only FINISHED runs are ranked "
                  "(a RUNNING one is still going, or its process died)")


def render_table(report: dict[str, Any]) -> str:
    """One line per run, best first: rank, kind, name, metric (% for fractions), gain (points for fractions;
    positive = better), what it is, run id."""
    m = report["metric"]
    lines = [f"experiment {report['experiment']} / dataset {report['dataset']} / metric {m}"
             + (" (lower is better)" if report.get("lower_is_better") else "")
             + (f" / zero-shot baseline {_value(m, report['baseline'])} ({report['baseline_source']})"
                if report["baseline"] is not None else "")]
    width = max([len(r["name"] or "") for r in report["runs"]] + [4])
    lines.append(f"{'#':>2}  {'kind':<6} {'run':<{width}} {m[:10]:>10} {'gain':>7}  {'details':<44} run id")
    for r in report["runs"]:
        gain = "" if r["gain"] is None else (f"{r['gain']:+.1f}" if is_fraction(m) else f"{r['gain']:+.3f}")
        lines.append(f"{r['rank']:>2}  {r['kind']:<6} {r['name'] or '':<{width}} {_value(m, r[m]):>10} {gain:>7}  "
                     f"{r['description'][:44]:<44} {r['run_id']}")
    lines += [f"note: {n}" for n in report["notes"]]
    return "\n".join(lines)


def render_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2)


HEADLINE_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")


def write_charts(runs: Sequence[dict[str, Any]], report: dict[str, Any], path) -> list[Any]:
    """One bar chart per metric: the report's own metric at `path`, each other headline metric the runs logged
    at <stem>-<metric><suffix> beside it, each ranked by its own metric."""
    from pathlib import Path

    path = Path(path)
    out = [bars_png(report, path)]
    for m in HEADLINE_METRICS:
        have = any(r.get("dataset") == report["dataset"] and r["metrics"].get(m) is not None for r in runs)
        if m != report["metric"] and have:
            other = rank(runs, m, report["dataset"], report["experiment"])
            out.append(bars_png(other, path.with_name(f"{path.stem}-{m}{path.suffix or '.png'}")))
    return out


def write_chart_folder(runs: Sequence[dict[str, Any]], report: dict[str, Any], folder) -> list[Any]:
    """One bar chart per metric in `folder`, named by the metric (accuracy.png, macro_f1.png, ...): the report's
    own metric and every other headline metric the runs logged, each ranked by its own metric. A chart of the
    same metric from an earlier run is replaced; other metrics' charts are left alone."""
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = [bars_png(report, folder / f"{report['metric']}.png")]
    for m in HEADLINE_METRICS:
        have = any(r.get("dataset") == report["dataset"] and r["metrics"].get(m) is not None for r in runs)
        if m != report["metric"] and have:
            out.append(bars_png(rank(runs, m, report["dataset"], report["experiment"]), folder / f"{m}.png"))
    return out


def bars_png(report: dict[str, Any], path) -> Any:
    """The ranking as a horizontal bar chart (see plots.comparison_bars_png)."""
    from toolkit.evaluation import plots

    m = report["metric"]
    rows = report["runs"]
    names = [r["name"] or r["run_id"][:8] for r in rows]
    names = [f"{n} ({r['run_id'][:6]})" if names.count(n) > 1 else n for n, r in zip(names, rows)]
    better = " (lower is better)" if report.get("lower_is_better") else ""
    return plots.comparison_bars_png(names, [r[m] for r in rows], [r["kind"] for r in rows], path,
                                     baseline=report["baseline"], title=f"{report['dataset']}: {m} by run{better}",
                                     metric=m, percent=is_fraction(m))
