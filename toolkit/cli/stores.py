"""`clipkit stores`: the feature stores train-probe, eval-prompts and evaluate keep in the cache, listed with
their size, model and images, and cleaned on request (they are rebuilt from the images when needed)."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Optional

import click


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def _describe(folder: Path) -> dict[str, Any]:
    """{path, bytes, images, model, dataset, complete, modified} of one store folder (a broken one included)."""
    row: dict[str, Any] = {"path": str(folder), "bytes": _size(folder), "images": None, "model": None,
                           "dataset": None, "complete": (folder / "meta.json").is_file(),
                           "modified": folder.stat().st_mtime}
    try:
        meta = json.loads((folder / "meta.json").read_text())
        ident = meta.get("identity") or {}
        row.update(images=meta.get("count"), dataset=meta.get("dataset_root"),
                   model=" / ".join(str(Path(str(v)).name) for v in (ident.get("model"), ident.get("pretrained"))
                                    if v))
    except (OSError, ValueError, AttributeError):
        pass
    return row


def list_stores(root: Path) -> list[dict[str, Any]]:
    """Every store folder under `root` (sub-folders holding meta.json or an unfinished plan), newest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted((_describe(p) for p in found), key=lambda r: -r["modified"])


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


@click.command("stores")
@click.option("--clean", is_flag=True, help="Delete the listed stores (all, or those --older-than).")
@click.option("--older-than", "older_days", type=click.FloatRange(0), default=None,
              help="With --clean: only stores not written for this many days.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def stores(clean: bool, older_days: Optional[float], fmt: str) -> None:
    """List the cached feature stores (under $XDG_CACHE_HOME/clipkit/stores, else ~/.cache/clipkit/stores):
    size, model, images and the dataset each was made from. `--clean` deletes them; a store is rebuilt from
    its images the next time a command needs it. Stores you made with `--out`/`--store` are yours: not listed.

    \b
    Examples:
      clipkit stores
      clipkit stores --clean --older-than 30
    """
    from toolkit.runtime import cache_root

    root = cache_root() / "stores"
    rows = list_stores(root)
    if older_days is not None:
        cutoff = time.time() - older_days * 86400
        rows = [r for r in rows if r["modified"] < cutoff]
    if clean:
        for r in rows:
            shutil.rmtree(r["path"], ignore_errors=True)
        click.echo(f"deleted {len(rows)} stores ({_human(sum(r['bytes'] for r in rows))}) from {root}")
        return
    if fmt == "json":
        click.echo(json.dumps({"root": str(root), "stores": rows}, indent=2))
        return
    if not rows:
        click.echo(f"no feature stores in {root}")
        return
    click.echo(f"{len(rows)} stores in {root}, {_human(sum(r['bytes'] for r in rows))} in all")
    for r in rows:
        images = "unfinished" if not r["complete"] else f"{r['images']} images"
        click.echo(f"  {Path(r['path']).name:<28} {_human(r['bytes']):>9}  {images:<12} {r['model'] or '?'}"
                   f"  <- {r['dataset'] or '?'}")
