"""Rank prompt runs and probe runs of one dataset on one metric, with the gain over the best zero-shot run.

Input: run dicts as tracking.search_runs returns them ({run_id, name, kind, dataset, status, params, metrics,
tags}); only FINISHED runs are ranked (`finished_runs` counts the others for a note).
No mlflow import here. Gains are in percentage points (100 x the metric difference).
"""
from __future__ import annotations

import json
from typing import Any, Optional, Sequence

from .errors import ConfigError, TrackingError

KEY_PARAMS = {"prompt": ("prompt_set", "templates_spec", "template_count", "labels_spec", "model", "pretrained"),
              "probe": ("method", "shots", "chosen_value", "seed", "model", "pretrained")}


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
    return f"{p.get('method', '?')} {('C' if p.get('method') == 'logreg' else 'wd')}={p.get('chosen_value', '?')}, " \
           f"shots: {p.get('shots', 'all')}"


def rank(runs: Sequence[dict[str, Any]], metric: str = "accuracy", dataset: Optional[str] = None,
         experiment: str = "") -> dict[str, Any]:
    """Best-first rows of the runs on one dataset that have `metric`, each with `gain` over the baseline.

    The baseline is the best prompt (zero-shot) run; without any, the best zero-shot score probe runs logged
    on their own test split (zeroshot_test_<metric>). Notes flag runs on other datasets or other test splits.
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
    scored.sort(key=lambda r: (-r["metrics"][metric], r["kind"] != "probe", r["name"] or ""))
    zs = [r["metrics"][metric] for r in scored if r["kind"] == "prompt"]
    source = "best prompt run"
    if not zs:
        zs = [r["metrics"][f"zeroshot_test_{metric}"] for r in scored if f"zeroshot_test_{metric}" in r["metrics"]]
        source = "probe runs' zero-shot baseline"
    baseline = max(zs) if zs else None
    rows = [{"rank": i + 1, "run_id": r["run_id"], "name": r["name"], "kind": r["kind"],
             "description": _description(r), metric: r["metrics"][metric],
             "gain": None if baseline is None else 100 * (r["metrics"][metric] - baseline),
             "params": {k: r["params"][k] for k in KEY_PARAMS[r["kind"]] if k in r["params"]},
             "metrics": {k: v for k, v in sorted(r["metrics"].items()) if "/" not in k}}
            for i, r in enumerate(scored)]
    notes = []
    if others:
        notes.append(f"runs on other datasets not shown: {', '.join(others)} (pass --dataset NAME)")
    digests = {r["tags"].get("split_digest") for r in scored} - {None}
    if len(digests) > 1:
        notes.append(f"runs were scored on {len(digests)} different image sets (other seeds, fractions or --split); "
                     "gains across them are not like for like")
    return {"experiment": experiment, "dataset": ds, "metric": metric, "baseline": baseline,
            "baseline_source": source if baseline is not None else None, "runs": rows, "notes": notes}


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
    """One line per run, best first: rank, kind, name, metric (%), gain (points), what it is, run id."""
    m = report["metric"]
    lines = [f"experiment {report['experiment']} / dataset {report['dataset']} / metric {m}"
             + (f" / zero-shot baseline {100 * report['baseline']:.1f}% ({report['baseline_source']})"
                if report["baseline"] is not None else "")]
    width = max([len(r["name"] or "") for r in report["runs"]] + [4])
    lines.append(f"{'#':>2}  {'kind':<6} {'run':<{width}} {m[:10]:>10} {'gain':>7}  {'details':<44} run id")
    for r in report["runs"]:
        gain = "" if r["gain"] is None else f"{r['gain']:+.1f}"
        lines.append(f"{r['rank']:>2}  {r['kind']:<6} {r['name'] or '':<{width}} {100 * r[m]:>9.1f}% {gain:>7}  "
                     f"{r['description'][:44]:<44} {r['run_id']}")
    lines += [f"note: {n}" for n in report["notes"]]
    return "\n".join(lines)


def render_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2)


def bars_png(report: dict[str, Any], path) -> Any:
    """The ranking as a horizontal bar chart (see plots.comparison_bars_png)."""
    from . import plots

    m = report["metric"]
    rows = report["runs"]
    names = [r["name"] or r["run_id"][:8] for r in rows]
    names = [f"{n} ({r['run_id'][:6]})" if names.count(n) > 1 else n for n, r in zip(names, rows)]
    return plots.comparison_bars_png(names, [r[m] for r in rows],
                                     [r["kind"] for r in rows], path, baseline=report["baseline"],
                                     title=f"{report['dataset']}: {m} by run", metric=m)
