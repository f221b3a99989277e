"""One rerun rule for every command that writes a named output (a folder or a file).

An output that already exists and holds something is refused before any work starts, in one line naming it and
the fix, unless `--overwrite` is given; then it is replaced as a whole (atomically where the writer is). Feature
stores keep their own rule: a store is reused while its inputs don't change and resumed when interrupted.

Commands under this rule: train-probe --out, eval-prompts --save-head, demo-data OUT, demo-video OUT,
export-onnx --out, evaluate --out. (compare --out is a folder of views named by metric: a chart replaces the
chart of the same metric, see evaluation/compare.write_chart_folder.)
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import click

from toolkit.errors import ConfigError

OVERWRITE_HELP = "Replace the output if it already exists (without it an existing output is refused)."


def overwrite_option(f: Callable) -> Callable:
    """--overwrite: the one flag that lets a command replace what an earlier run wrote."""
    return click.option("--overwrite", is_flag=True, help=OVERWRITE_HELP)(f)


def refuse_existing(path: str | Path, overwrite: bool, what: str) -> Path:
    """`path` as a Path, or ConfigError (exit 2) when it exists (a non-empty folder, or a file) and `overwrite`
    is False. `what` names the output in the message, e.g. "--out" or "OUT"."""
    p = Path(path)
    if overwrite or not p.exists():
        return p
    if p.is_dir():
        if not any(p.iterdir()):
            return p
        raise ConfigError(f"{what} '{p}' is a folder that is not empty; pass --overwrite to replace it, "
                          "or choose another folder")
    raise ConfigError(f"{what} '{p}' already exists; pass --overwrite to replace it, or choose another path")
