"""`clipkit label` (the labelling page), `clipkit suggest` (what to label next) and `clipkit audit` (the errors in
labels). The work is in toolkit.labeling; the page in toolkit.serve.label_app."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import click

from toolkit.cli.common import build_config, model_options, prompt_options, show_progress
from toolkit.cli.outputs import overwrite_option, refuse_existing
from toolkit.errors import ConfigError

STRATEGY = click.option("--strategy", type=click.Choice(["auto", "typical", "margin", "random"]), default="auto",
                        show_default=True, help="typical: dense, diverse picks (the cold start); margin: where the "
                        "current head is least sure, kept diverse; auto: typical, then margin as labels arrive.")
FORMAT = click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
                      show_default=True)


def _store_dir(inputs: Sequence[str], out_hint: Optional[Path], identity) -> Path:
    """Where images given as files are embedded: beside the labels CSV, else the user cache (one per input set)."""
    if out_hint is not None:
        return out_hint.with_name(out_hint.stem + ".features")
    from toolkit.runtime import cache_root

    key = json.dumps([sorted(str(Path(p).absolute()) for p in inputs), identity.features_key()])
    return cache_root() / "stores" / f"label-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def open_images(inputs: Sequence[str], cfg, out_hint: Optional[Path], store_dir: Optional[str], progress: bool):
    """(store, extractor, cfg): INPUTS as one feature store (given, or embedded now: only what isn't yet)."""
    from toolkit.identity import adopt_model
    from toolkit.data.store import FeatureStore
    from toolkit.encoder.features import FeatureExtractor

    if not inputs:
        raise ConfigError("give images (files, folders, globs) or a feature store from `clipkit embed`")
    if len(inputs) == 1 and FeatureStore.is_store(inputs[0]):
        store = FeatureStore.open(inputs[0])
        store.check_rows()
        cfg = adopt_model(cfg, store.identity, f"store '{inputs[0]}'")
        return store, FeatureExtractor.from_config(cfg.model), cfg
    from toolkit.data.datasets import unlabelled_dataset
    from toolkit.data.extraction import extract_store
    from toolkit.encoder.inputs import expand_inputs, skipped_note

    found = expand_inputs(inputs)
    if found.skipped:
        click.echo(skipped_note(found.skipped), err=True)
    extractor = FeatureExtractor.from_config(cfg.model)
    where = Path(store_dir) if store_dir else _store_dir(inputs, out_hint, extractor.identity)
    store = extract_store(extractor, unlabelled_dataset(found.files), where, progress=progress)
    return store, extractor, cfg


def zeroshot_proba(store, extractor, cfg, chunk: int = 8192):
    """(labels, templates, (n, C) zero-shot probabilities of every store row)."""
    import numpy as np

    from toolkit.heads.prompts import resolve_labels, resolve_templates
    from toolkit.heads.zeroshot import ZeroShotHead

    labels, templates = resolve_labels(cfg.prompts), resolve_templates(cfg.prompts)
    head = ZeroShotHead.from_extractor(extractor, labels, templates)
    parts = [head.predict_proba(np.asarray(store.features[s:s + chunk], np.float32))
             for s in range(0, len(store), chunk)]
    return labels, np.concatenate(parts) if parts else np.zeros((0, len(labels)))


def _render(rows: list[dict[str, Any]], columns: Sequence[str], fmt: str, doc: Optional[dict[str, Any]] = None) -> str:
    if fmt == "json":
        return json.dumps({**(doc or {}), "results": rows}, indent=2)
    if fmt == "csv":
        from toolkit.fsio import csv_safe

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(columns)
        w.writerows([[csv_safe(_cell(r.get(c))) for c in columns] for r in rows])
        return buf.getvalue().rstrip("\n")
    widths = {c: min(max([len(c)] + [len(_cell(r.get(c))) for r in rows]), 60) for c in columns}
    lines = ["  ".join(f"{c:<{widths[c]}}" for c in columns)]
    lines += ["  ".join(f"{_short(_cell(r.get(c)), widths[c]):<{widths[c]}}" for c in columns).rstrip() for r in rows]
    return "\n".join(lines)


def _cell(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else ("" if v is None else str(v))


def _short(s: str, width: int) -> str:
    return s if len(s) <= width else "..." + s[-(width - 3):]


# ---------------------------------------------------------------- label


@click.command()
@click.argument("inputs", nargs=-1)
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="labels.csv to write (path,label; what `train-probe` reads); an existing one is resumed.")
@click.option("--store", "store_dir", type=click.Path(file_okay=False), default=None,
              help="Where to embed the images. [default: beside --out, LABELS.features]")
@STRATEGY
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface of the page (keep it local).")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True)
@click.option("--open/--no-open", "open_browser", default=False, help="Open the page in a browser.")
@click.option("--progress/--no-progress", default=None, help="Progress bar while embedding.")
@model_options
@prompt_options
def label(inputs: tuple[str, ...], out: str, store_dir: Optional[str], strategy: str, host: str, port: int,
          open_browser: bool, progress: Optional[bool], config_path: Optional[str], **flags: Any) -> None:
    """Label images on a local page: one image at a time, in "what to label next" order, the suggestion
    pre-selected.

    \b
    INPUTS are image files, folders, globs, or one feature store from `clipkit embed`. Images not embedded yet
    are embedded first. Keys: 1-9 pick a class, Enter accepts the suggestion, 0 or n none of these, s skip,
    u undo. Every answer is written at once to --out (path,label); running again resumes; a second page on
    the same CSV is refused. A head is refitted as you go; train and save it with
    `clipkit train-probe LABELS.csv --out HEAD`.

    \b
    Examples:
      clipkit label photos/ --config configs/demo.yaml --out labels.csv
      clipkit label emb/ --label cat --label dog --out labels.csv --port 8800
    """
    from toolkit.labeling.labeller import Labeller
    from toolkit.labeling.session import LabelSession
    from toolkit.serve.label_app import run_label_server

    cfg = build_config(config_path, **flags)
    out_path = Path(out)
    url = f"http://{host}:{port}/"
    session = LabelSession(out_path, [], []).lock(owner=url)  # a second page is refused before the slow start
    try:
        store, extractor, cfg = open_images(inputs, cfg, out_path, store_dir, show_progress(progress))
        labels, zs = zeroshot_proba(store, extractor, cfg)
        session.bind(list(store.paths), labels).open()
        for note in session.notes:
            click.echo(f"note: {note}", err=True)
        labeller = Labeller(store.features, list(store.paths), session, zs, strategy)
        click.echo(f"labelling {len(store)} images into {out_path} ({len(session.labels)} labelled so far); "
                   f"page: {url} (Ctrl-C to stop)", err=True)
        if open_browser:
            import webbrowser

            webbrowser.open(url)
        run_label_server(labeller, host, port)
    finally:
        session.close()
    click.echo(f"labels: {out_path} ({len(session.labels)}); train: clipkit train-probe {out_path} --out HEAD", err=True)


# ---------------------------------------------------------------- suggest


@click.command()
@click.argument("inputs", nargs=-1)
@click.option("--budget", type=click.IntRange(1), default=20, show_default=True, help="How many images to suggest.")
@click.option("--labelled", "labelled_csv", type=click.Path(dir_okay=False, exists=True), default=None,
              help="labels.csv (path,label) of what is labelled already.")
@click.option("--store", "store_dir", type=click.Path(file_okay=False), default=None,
              help="Where to embed images given as files. [default: ~/.cache/clipkit/stores/label-...]")
@STRATEGY
@click.option("--seed", type=int, default=0, show_default=True)
@FORMAT
@model_options
@prompt_options
def suggest(inputs: tuple[str, ...], budget: int, labelled_csv: Optional[str], store_dir: Optional[str],
            strategy: str, seed: int, fmt: str, config_path: Optional[str], **flags: Any) -> None:
    """Print the images to label next (the order the labelling page uses).

    \b
    Examples:
      clipkit suggest emb/ --config configs/demo.yaml --budget 20
      clipkit suggest photos/ --config configs/demo.yaml --labelled labels.csv --strategy margin --format csv
    """
    from toolkit.labeling.model import current_proba
    from toolkit.labeling.session import read_labels_csv
    from toolkit.labeling.suggest import auto_strategy, margins, pick

    import numpy as np

    cfg = build_config(config_path, **flags)
    store, extractor, cfg = open_images(inputs, cfg, None, store_dir, False)
    classes, zs = zeroshot_proba(store, extractor, cfg)
    done: dict[str, str] = {}
    if labelled_csv:
        real = {os.path.realpath(p): p for p in store.paths}
        done, _, notes, _ = read_labels_csv(Path(labelled_csv), real, classes)
        for note in notes:
            click.echo(f"note: {note}", err=True)
    row_of = {p: i for i, p in enumerate(store.paths)}
    labelled = {row_of[p]: classes.index(lb) for p, lb in done.items()}
    X = np.asarray(store.features, np.float32)
    rows = np.fromiter(labelled.keys(), int, len(labelled))
    y = np.fromiter(labelled.values(), int, len(labelled))
    proba = current_proba(X[rows], y, X, len(classes), zs)
    used = auto_strategy(labelled, len(classes)) if strategy == "auto" else strategy
    picked = pick(X, labelled, budget, used, proba, len(classes), seed)
    m = margins(proba[picked]) if picked else []
    out = [{"rank": k + 1, "row": int(r), "path": str(store.paths[r]), "suggestion": classes[int(proba[r].argmax())],
            "score": float(proba[r].max()), "margin": float(m[k])} for k, r in enumerate(picked)]
    doc = {"strategy": used, "budget": budget, "labelled": len(labelled), "store": str(store.path)}
    click.echo(_render(out, ["rank", "path", "suggestion", "score", "margin"], fmt, doc))
    if fmt == "table":
        click.echo(f"({used} picks; {len(labelled)} labelled of {len(store)})", err=True)


# ---------------------------------------------------------------- audit


def _write_audit(report, out: Path, store, classes: list[str]) -> Path:
    """OUT/audit.json, issues.csv, duplicates.csv, outliers.csv and contact_sheet.png (the flagged rows)."""
    from toolkit import fsio
    from toolkit.evaluation.plots import contact_sheet_png

    items = [{"path": r["path"], "lines": [Path(r["path"]).name, f"given: {r['given']}",
                                           f"suggested: {r['suggested']} {r['score']:.2f}"]} for r in report.issues[:48]]
    items += [{"path": r["path"], "lines": [Path(r["path"]).name, f"outlier z={r['z']:.1f}", r["label"] or "-"]}
              for r in report.outliers[:12]]
    with fsio.atomic_dir(out) as tmp:  # the folder is replaced whole (--overwrite), never left half-written
        (tmp / "audit.json").write_text(json.dumps(report.to_dict(), indent=2))
        for name, rows, cols in (("issues", report.issues, ISSUE_COLUMNS),
                                 ("duplicates", report.duplicates, DUP_COLUMNS),
                                 ("outliers", report.outliers, OUTLIER_COLUMNS)):
            (tmp / f"{name}.csv").write_text(_render(rows, cols, "csv") + "\n")
        contact_sheet_png(items, tmp / "contact_sheet.png", f"audit of {store.path.name}: likely label errors, "
                          "then outliers")
    return out / "contact_sheet.png"


ISSUE_COLUMNS = ["path", "split", "given", "suggested", "score", "self_confidence", "threshold"]
DUP_COLUMNS = ["kind", "pixel", "similarity", "path_a", "path_b", "splits"]
OUTLIER_COLUMNS = ["path", "label", "split", "z", "distance"]


@click.command()
@click.argument("data")
@click.option("--out", "out", type=click.Path(file_okay=False), default=None,
              help="Folder for audit.json, issues/duplicates/outliers.csv and contact_sheet.png (an existing one "
                   "is refused without --overwrite).")
@click.option("--store", "store_dir", type=click.Path(file_okay=False), default=None,
              help="Where to extract DATA's features. [default: ~/.cache/clipkit/stores/...]")
@click.option("--folds", type=click.IntRange(2, 20), default=5, show_default=True,
              help="k of the k-fold held-out probabilities.")
@click.option("--dup-threshold", type=click.FloatRange(0, 1), default=None,
              help="Pixel correlation (0-1) of a verified near-duplicate pair. [default: 0.95]")
@click.option("--top", type=click.IntRange(1), default=20, show_default=True, help="Rows per table printed.")
@click.option("--no-track", is_flag=True, help="Don't log the audit to MLflow.")
@overwrite_option
@FORMAT
@model_options
@prompt_options
def audit(data: str, out: Optional[str], store_dir: Optional[str], folds: int, dup_threshold: Optional[float],
          top: int, no_track: bool, overwrite: bool, fmt: str, config_path: Optional[str], **flags: Any) -> None:
    """Find likely label errors, near-duplicates (leakage across train/val/test) and outliers.

    \b
    DATA is a labelled dataset (image folder, CSV manifest such as the page's labels.csv) or a feature store
    from `clipkit extract`. Label errors: k-fold held-out probabilities, then confident learning (a row whose
    given label scores below that class's typical self-confidence while another class reaches its own).

    \b
    Examples:
      clipkit audit out/novel --config configs/demo.yaml --out out/audit
      clipkit audit labels.csv --config configs/demo.yaml --format json --no-track
    """
    from toolkit.data.sources import store_and_extractor
    from toolkit.labeling.audit import DUP_THRESHOLD, audit as run_audit
    from toolkit.runtime import cache_root

    if out:
        refuse_existing(out, overwrite, "--out")
    cfg = build_config(config_path, **flags)
    if no_track:
        cfg.tracking.enabled = False
    store, _, name = store_and_extractor(data, cfg, cache_root() / "stores", store_dir)
    report = run_audit(store.features, list(store.labels), store.classes, list(store.paths), list(store.splits),
                       folds=folds, dup_threshold=dup_threshold or DUP_THRESHOLD)
    sheet = _write_audit(report, Path(out), store, store.classes) if out else None
    if cfg.tracking.enabled:
        _track(cfg, name, report, out)
    if fmt == "json":
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    for title, rows, cols in (("likely label errors", report.issues, ISSUE_COLUMNS),
                              ("near-duplicates", report.duplicates, DUP_COLUMNS),
                              ("outliers", report.outliers, OUTLIER_COLUMNS)):
        if fmt == "table":
            est = report.summary.get("estimated_errors") if rows is report.issues else None
            click.echo(f"{title}: {len(rows)}" + (f" (top {top})" if len(rows) > top else "")
                       + ("" if est is None else f"; confident learning estimates {est} mislabelled rows"))
        if rows or fmt == "csv":
            click.echo(_render(rows[:top] if fmt == "table" else rows, cols, fmt))
        click.echo("")
    if sheet:
        click.echo(f"report    {out} (audit.json, issues.csv, duplicates.csv, outliers.csv, {sheet.name})", err=True)


def _track(cfg, name: str, report, out: Optional[str]) -> None:
    from toolkit.tracking.adapter import tracked_run

    s = report.summary
    with tracked_run(cfg, name, "audit", "audit") as run:
        run.params({k: s[k] for k in ("folds", "dup_threshold", "outlier_z", "rows", "labelled")})
        run.metrics({k: s[k] for k in ("label_issues", "estimated_errors", "duplicate_pairs", "leaking_pairs",
                                       "outliers") if k in s})
        if out:
            run.folder(out, "audit")
        else:
            run.text(json.dumps(report.to_dict(), indent=2), "audit.json")
