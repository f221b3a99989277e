"""`clipkit predict` (images) and `clipkit models`."""
from __future__ import annotations

import csv
import io
import json
import sys
from typing import Any, Optional

import click

from .common import build_config, head_options, local_head, model_options, prompt_options, show_progress


def render_table(doc: dict[str, Any], top_k: int) -> str:
    """Human-readable table: path, best label, score, and the runners-up."""
    rows = doc["results"]
    width = min(max([len(r["path"]) for r in rows] + [4]), 60)
    lines = [f"{'path':<{width}}  {'label':<36} {'score':>6}  others"]
    for r in rows:
        path = r["path"] if len(r["path"]) <= width else "..." + r["path"][-(width - 3):]
        if "error" in r:
            lines.append(f"{path:<{width}}  ERROR: {r['error']}")
            continue
        others = ", ".join(f"{t['label']} {t['score']:.2f}" for t in r["top_k"][1:top_k])
        lines.append(f"{path:<{width}}  {r['label']:<36} {r['score']:>6.3f}  {others}")
    return "\n".join(lines)


def render_csv(doc: dict[str, Any]) -> str:
    """One row per image: path, label, score, error, then one column per label."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "label", "score", "error", *doc["labels"]])
    for r in doc["results"]:
        if "error" in r:
            w.writerow([r["path"], "", "", r["error"], *[""] * len(doc["labels"])])
        else:
            w.writerow([r["path"], r["label"], f"{r['score']:.6f}", "",
                        *[f"{r['scores'][lb]:.6f}" for lb in doc["labels"]]])
    return buf.getvalue()


def render_json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2)


@click.command()
@click.argument("paths", nargs=-1, required=True)
@model_options
@prompt_options
@head_options
@click.option("--top-k", type=click.IntRange(1), default=3, show_default=True,
              help="How many labels to list per image (table, and 'top_k' in JSON).")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr (default: when a terminal).")
def predict(paths: tuple[str, ...], config_path: Optional[str], head: Optional[str], top_k: int, fmt: str,
            progress: Optional[bool], **flags: Any) -> None:
    """Classify images: files, folders (searched recursively) and globs.

    \b
    Examples:
      clipkit predict --config configs/demo.yaml data/samples
      clipkit predict photo.jpg --label "a cat" --label "a dog" --format json
      clipkit predict 'shots/**/*.jpg' --model ViT-B-32 --pretrained openai --templates openai_imagenet
      clipkit predict --head out/head data/samples --format csv > preds.csv

    Results go to stdout; a file that can't be read (or a broken link) gets an error entry and the exit code
    is 1. In folders, files that are not images are skipped, with their count on stderr.
    """
    from ..inputs import expand_inputs, skipped_note
    from ..predictor import build_predictor, image_document

    cfg = build_config(config_path, **flags)
    found = expand_inputs(paths)
    files = [str(f) for f in found.files]
    if found.skipped:
        click.echo(skipped_note(found.skipped), err=True)
    predictor = build_predictor(cfg, head=local_head(head, cfg))
    show = show_progress(progress)
    results = predictor.predict_paths(files, top_k=top_k, progress=show and len(files) > 1)
    doc = image_document(predictor, results)
    out = {"table": lambda: render_table(doc, top_k), "csv": lambda: render_csv(doc),
           "json": lambda: render_json(doc)}[fmt]()
    click.echo(out.rstrip("\n"))
    failed = sum("error" in r for r in results)
    if failed:
        click.echo(f"error: {failed} of {len(results)} inputs failed (see their error entries)", err=True)
        sys.exit(1)


@click.command()
@click.option("--pretrained-only", is_flag=True, help="Only architectures that have pretrained tags.")
@click.option("--filter", "pattern", default=None, help="Case-insensitive substring filter, e.g. ViT-B.")
def models(pretrained_only: bool, pattern: Optional[str]) -> None:
    """List the architectures and pretrained tags that open_clip knows.

    Pass one as `--model ARCH --pretrained TAG`. Any architecture also works from a model-config
    JSON (`--model my_model.json`) and `hf-hub:org/repo` names load from the Hugging Face hub.
    """
    from ..weights import list_models, list_pretrained

    tags: dict[str, list[str]] = {}
    for arch, tag in list_pretrained():
        tags.setdefault(arch, []).append(tag)
    for arch in list_models():
        if pattern and pattern.lower() not in arch.lower():
            continue
        if pretrained_only and arch not in tags:
            continue
        click.echo(f"{arch:<40} {', '.join(tags.get(arch, [])) or '-'}")
