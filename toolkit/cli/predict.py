"""`clipkit predict` (images) and `clipkit models`."""
from __future__ import annotations

import json
import sys
from typing import Any, Iterable, Iterator, Optional

import click

from toolkit.errors import ConfigError
from toolkit.cli.common import FRACTION, build_config, head_options, local_head, model_options, prompt_options, show_progress


UNKNOWN_LABEL = "none of these"


def render_table(doc: dict[str, Any], top_k: int, unknown_label: str = UNKNOWN_LABEL) -> str:
    """Human-readable table: path, best label, score, and the runners-up. A rejected image shows
    `unknown_label` and its `top_k` best labels as the others."""
    rows = [printable_row(r) for r in doc["results"]]
    width = min(max([len(r["path"]) for r in rows] + [4]), 60)
    return "\n".join([table_header(width), *(table_row(r, width, top_k, unknown_label) for r in rows)])


def table_header(width: int) -> str:
    return f"{'path':<{width}}  {'label':<36} {'score':>6}  others"


def table_row(r: dict[str, Any], width: int, top_k: int, unknown_label: str = UNKNOWN_LABEL) -> str:
    path = r["path"] if len(r["path"]) <= width else "..." + r["path"][-(width - 3):]
    if "error" in r:
        return f"{path:<{width}}  ERROR: {r['error']}"
    rejected = r.get("rejected", False)
    others = ", ".join(f"{t['label']} {t['score']:.2f}" for t in r["top_k"][0 if rejected else 1:top_k])
    label = f"{unknown_label} ({r['reason']})" if rejected and r.get("reason") else \
        unknown_label if rejected else r["label"]  # reason: unfamiliar | low_confidence
    if "labels" in r:  # multi-label: every label on, then the best scores
        label, others = "|".join(r["labels"]) or "(no label)", ", ".join(
            f"{t['label']} {t['score']:.2f}" for t in r["top_k"][:top_k])
    return f"{path:<{width}}  {label:<36} {r['score']:>6.3f}  {others}"


def printable_row(r: dict[str, Any]) -> dict[str, Any]:
    """A result with its path and error as valid UTF-8 (file-name bytes that are not UTF-8 as \\xNN)."""
    from toolkit.fsio import printable

    fixed = {k: printable(r[k]) for k in ("path", "error") if isinstance(r.get(k), str)}
    return {**r, **fixed} if any(fixed[k] is not r[k] for k in fixed) else r


def render_csv(doc: dict[str, Any]) -> str:
    """One row per image: path (absolute), label (empty when rejected), score, rejected (true/false), error,
    then one column per label in the order of the document's `labels` (the order given for zero-shot, the
    head's class order with a head). Cells are made spreadsheet-safe (fsio.csv_safe)."""
    return "".join([csv_line(csv_header(doc["labels"])), *(csv_line(csv_row(r, doc["labels"]))
                                                            for r in doc["results"])])


def csv_header(labels: list[str]) -> list[str]:
    return ["path", "label", "score", "rejected", "error", "reason", *labels]


def csv_row(r: dict[str, Any], labels: list[str]) -> list[str]:
    if "error" in r:
        return [r["path"], "", "", "", r["error"], "", *[""] * len(labels)]
    label = "|".join(r["labels"]) if "labels" in r else r["label"] or ""  # multi-label: every label on, '|'-joined
    return [r["path"], label, f"{r['score']:.6f}", str(r["rejected"]).lower(), "", r.get("reason") or "",
            *[f"{r['scores'][lb]:.6f}" for lb in labels]]


def csv_line(fields: list[str]) -> str:
    """One CSV line; text cells spreadsheet-safe (a leading = + - @ gets a ') and valid UTF-8."""
    from toolkit.fsio import csv_text

    return csv_text([fields])


def render_json(doc: dict[str, Any]) -> str:
    return json.dumps({**doc, "results": [printable_row(r) for r in doc["results"]]}, indent=2)


def stream_results(doc: dict[str, Any], rows: Iterable[dict[str, Any]], fmt: str, top_k: int,
                   unknown_label: str, width: int = 60) -> Iterator[str]:
    """The output of `render_*` for `doc` with its results taken one at a time from `rows` (for stores of any
    size: memory stays flat). Yields text pieces in order."""
    rows = (printable_row(r) for r in rows)
    if fmt == "csv":
        yield csv_line(csv_header(doc["labels"]))
        yield from (csv_line(csv_row(r, doc["labels"])) for r in rows)
    elif fmt == "table":
        yield table_header(width) + "\n"
        yield from (table_row(r, width, top_k, unknown_label) + "\n" for r in rows)
    else:
        head = json.dumps({k: v for k, v in doc.items() if k != "results"}, indent=2)
        yield head[:-2] + ',\n  "results": ['
        for i, r in enumerate(rows):
            yield ("," if i else "") + "\n    " + json.dumps(r)
        yield "\n  ]\n}\n"


@click.command()
@click.argument("paths", nargs=-1)
@click.option("--store", "store_path", type=click.Path(file_okay=False), default=None,
              help="Classify the rows of a feature store (from `clipkit embed` or `extract`) instead of image files: "
                   "no encoding, results streamed. The store's model is used unless a head or flags name one.")
@model_options
@prompt_options
@head_options
@click.option("--top-k", type=click.IntRange(1), default=3, show_default=True,
              help="How many labels to list per image (table, and 'top_k' in JSON).")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
@click.option("--reject-below", type=FRACTION, default=None,
              help="Answer \"none of these\" when the best (calibrated) probability is below this; 0 rejects "
                   "nothing. [default: the head's own threshold, if it has one]")
@click.option("--unknown-label", default=UNKNOWN_LABEL, show_default=True,
              help="What the table shows for a rejected image (JSON: label null, rejected true; CSV: empty label).")
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr (default: when a terminal).")
@click.option("--engine", type=click.Choice(["auto", "onnx", "torch"]), default=None,
              help="auto: ONNX Runtime on the CPU without importing torch (the model's towers are exported once "
                   "into clipkit's cache; prompt embeddings are cached there too), else torch. onnx: that or an "
                   "error; torch: always PyTorch. [default: the config's model.engine, auto]")
def predict(paths: tuple[str, ...], store_path: Optional[str], config_path: Optional[str], head: Optional[str],
            top_k: int, fmt: str, reject_below: Optional[float], unknown_label: str, progress: Optional[bool],
            engine: Optional[str], **flags: Any) -> None:
    """Classify images: files, folders (searched recursively) and globs.

    \b
    Examples:
      clipkit predict --config configs/demo.yaml data/samples
      clipkit predict photo.jpg --label "a cat" --label "a dog" --format json
      clipkit predict 'shots/**/*.jpg' --model ViT-B-32 --pretrained openai --templates openai_imagenet
      clipkit predict --head out/head data/samples --format csv > preds.csv
      clipkit predict --head out/head data/samples --reject-below 0.6   # "none of these" under 60%
      clipkit embed photos/ --config configs/demo.yaml --out emb && clipkit predict --store emb --format csv

    Results go to stdout; a file that can't be read (or a broken link) gets an error entry and the exit code
    is 1. In folders, files that are not images are skipped, with their count on stderr.

    A head saved with a "none of these" threshold (train-probe/eval-prompts --target-precision, ...) rejects
    images whose best calibrated probability is below it: JSON label null and rejected true (scores kept),
    the table shows --unknown-label, CSV an empty label. --reject-below overrides it for this run.
    A head saved with an out-of-set detector (train-probe --keep-known) also rejects images far from
    everything it was trained on; zero-shot labels get MCM with a text-derived threshold (prompts.unfamiliar).
    Each rejection says why: reason "unfamiliar" or "low_confidence" (JSON, CSV column, table).
    """
    from toolkit.encoder.inputs import expand_inputs, skipped_note
    from toolkit.predictor import build_predictor, image_document

    cfg = build_config(config_path, **flags, **{"model.engine": engine})
    if bool(paths) == bool(store_path):
        raise ConfigError("give image paths or --store STORE (one of them); see `clipkit predict --help`")
    if store_path:
        return _predict_store(store_path, cfg, head, top_k, fmt, reject_below, unknown_label)
    found = expand_inputs(paths)
    files = [str(f.absolute()) for f in found.files]  # one path rule for every output: absolute
    if found.skipped:
        click.echo(skipped_note(found.skipped), err=True)
    predictor = build_predictor(cfg, head=local_head(head, cfg), open_extractor=_open_extractor,
                                cache_dir=_negatives_cache())
    show = show_progress(progress)
    rows = predictor.iter_paths(files, top_k=top_k, progress=show and len(files) > 1, reject_below=reject_below)
    doc = image_document(predictor, [], reject_below=predictor.threshold(reject_below))
    results: list[dict[str, Any]] = []
    counted = (results.append(r) or r for r in rows)
    if fmt == "json":  # one document, written whole
        click.echo(render_json({**doc, "results": list(counted)}).rstrip("\n"))
    else:  # a line per image as soon as its batch is done (the first batch is one image on the fast path)
        width = min(max([len(printable_row({"path": f})["path"]) for f in files] + [4]), 60)
        for piece in stream_results(doc, counted, fmt, top_k, unknown_label, width):
            click.echo(piece, nl=False)
    failed = sum("error" in r for r in results)
    if failed:
        click.echo(f"error: {failed} of {len(results)} inputs failed (see their error entries)", err=True)
        sys.exit(1)


def _negatives_cache():
    """Where the default "unfamiliar" detector keeps its negative-word embeddings (once per model)."""
    from toolkit.runtime import cache_root

    return cache_root() / "negatives"


def _open_extractor(model_cfg, check=None):
    """The extractor for image files: encoder.fast's choice between ONNX Runtime and torch."""
    from toolkit.encoder.fast import open_extractor
    from toolkit.runtime import cache_root

    return open_extractor(model_cfg, cache_root(), check=check)


@click.command()
@click.option("--pretrained-only", is_flag=True, help="Only architectures that have pretrained tags.")
@click.option("--filter", "pattern", default=None, help="Case-insensitive substring filter, e.g. ViT-B.")
def models(pretrained_only: bool, pattern: Optional[str]) -> None:
    """List the architectures and pretrained tags that open_clip knows.

    Pass one as `--model ARCH --pretrained TAG`. Any architecture also works from a model-config
    JSON (`--model my_model.json`) and `hf-hub:org/repo` names load from the Hugging Face hub.
    """
    from toolkit.models.weights import is_cached, list_models, list_pretrained

    tags: dict[str, list[str]] = {}
    for arch, tag in list_pretrained():  # a tag whose weights are in the local cache gets a '*'
        tags.setdefault(arch, []).append(tag + "*" * is_cached(arch, tag))
    n_cached = sum(t.endswith("*") for ts in tags.values() for t in ts)
    click.echo(f"# tag* = weights in the local cache, usable offline ({n_cached} cached); others download once",
               err=True)
    for arch in list_models():
        if pattern and pattern.lower() not in arch.lower():
            continue
        if pretrained_only and arch not in tags:
            continue
        click.echo(f"{arch:<40} {', '.join(tags.get(arch, [])) or '-'}")


def _predict_store(store_path: str, cfg, head: Optional[str], top_k: int, fmt: str, reject_below: Optional[float],
                   unknown_label: str) -> None:
    """`clipkit predict --store`: the store's rows classified chunk by chunk and printed as they come."""
    from toolkit.identity import adopt_model
    from toolkit.heads.base import load_head
    from toolkit.predictor import build_predictor, image_document, predict_store
    from toolkit.data.store import FeatureStore
    from toolkit.fsio import printable

    store = FeatureStore.open(store_path)
    store.check_rows()  # finite, unit-norm rows: a damaged store fails here, in one line
    loaded = load_head(local_head(head, cfg)) if head else None
    if loaded is None:  # zero-shot on the store's model, unless one was given
        cfg = adopt_model(cfg, store.identity, f"store '{store_path}'")
    predictor = build_predictor(cfg, head=loaded, open_extractor=_open_extractor, cache_dir=_negatives_cache())
    doc = {**image_document(predictor, [], reject_below=predictor.threshold(reject_below)), "store": printable(str(store.path))}
    rows = predict_store(predictor, store, top_k=top_k, reject_below=reject_below)
    for piece in stream_results(doc, rows, fmt, top_k, unknown_label):
        click.echo(piece, nl=False)
