"""Options shared by several commands, and the config they build (config flows from here inward)."""
from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import threading
from typing import Any, Callable, Iterator, Optional

import click

from toolkit.config import Config, load_config


def flag_name(field: str) -> str:
    """A config field or parameter as the CLI spells it: target_precision -> --target-precision."""
    return "--" + field.replace("_", "-")


def model_options(f: Callable) -> Callable:
    """--config, --model, --pretrained, --device, --precision, --batch-size, --quick-gelu."""
    opts = [
        click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                     help="YAML config (e.g. configs/demo.yaml); flags below override it."),
        click.option("--model", default=None, help="open_clip architecture (ViT-B-32), hf-hub:org/repo, a "
                     "model-config .json path, or a model folder (open_clip's, local-dir:DIR, or a transformers "
                     "CLIP folder). See `clipkit models`."),
        click.option("--pretrained", default=None, help="Pretrained tag (openai, laion2b_s34b_b79k, ...), a local "
                     "checkpoint (.pt/.bin/.safetensors), or 'none' for random weights."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None,
                     help="auto picks CUDA when present. [default: auto]"),
        click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16", "auto", "int8"]), default=None,
                     help="Model weights' precision: fp32 (reference numerics), bf16, fp16, or auto (bf16 where "
                     "the CPU/GPU runs it natively, else fp32). int8 (opt-in; predict, extract, embed, serve on the "
                     "CPU through ONNX Runtime only): the image tower's matrix products in int8, ~1.45x faster "
                     "(ViT-B-32) on CPUs without bf16, features slightly changed (cosine ~0.99 to fp32), kept in "
                     "stores of their own. [default: auto]"),
        click.option("--batch-size", type=click.IntRange(1, 4096), default=None, help="Images per model batch."),
        click.option("--quick-gelu", type=click.Choice(["auto", "true", "false"]), default=None,
                     help="Build with QuickGELU (OpenAI's activation) or GELU; auto: what the pretrained tag or "
                     "the model files say. [default: auto]"),
    ]
    return functools.reduce(lambda acc, opt: opt(acc), reversed(opts), f)


def prompt_options(f: Callable) -> Callable:
    """--labels FILE, --label TEXT (repeatable), --templates NAME|FILE."""
    opts = [
        click.option("--labels", "labels_file", type=click.Path(dir_okay=False), default=None,
                     help="File with one label per line (default: the exercise labels)."),
        click.option("--label", "labels", multiple=True, help="A label; repeat for several. Wins over --labels."),
        click.option("--templates", default=None, help="Prompt templates: none | people | openai_imagenet | a file "
                     "with one template per line containing {}. [default: people]"),
    ]
    return functools.reduce(lambda acc, opt: opt(acc), reversed(opts), f)


def extraction_options(f: Callable) -> Callable:
    """--progress, --devices, --num-nodes, --strategy: for commands that fill a feature store (extract, embed)."""
    opts = [
        click.option("--progress/--no-progress", default=None, help="Progress bar on stderr (default: when a terminal)."),
        click.option("--devices", type=click.IntRange(1), default=1, show_default=True,
                     help="Processes per machine (CPU processes, or GPUs); >1 shards the batches with Lightning DDP."),
        click.option("--num-nodes", type=click.IntRange(1), default=1, show_default=True,
                     help="Machines (launch the same command on each, with MASTER_ADDR/NODE_RANK set; --out on a "
                     "shared disk)."),
        click.option("--strategy", type=click.Choice(["ddp", "ddp_spawn"]), default="ddp", show_default=True,
                     help="Lightning strategy for --devices/--num-nodes > 1."),
    ]
    return functools.reduce(lambda acc, opt: opt(acc), reversed(opts), f)


def head_options(f: Callable) -> Callable:
    """--head (a folder, runs:/RUN_ID/head or models:/NAME/VERSION) and the --tracking-uri it is read from."""
    opts = [
        click.option("--head", default=None, help="A trained head: a folder, runs:/RUN_ID/head or "
                     "models:/NAME/VERSION. Without it, zero-shot on the labels."),
        click.option("--tracking-uri", default=None, help="MLflow store that runs:/ and models:/ heads are read "
                     "from. [default: the config's tracking.uri, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db]"),
    ]
    return functools.reduce(lambda acc, opt: opt(acc), reversed(opts), f)


def local_head(spec: Optional[str], cfg: Config) -> Optional[str]:
    """The head as a local folder: runs:/ and models:/ URIs are downloaded from the config's tracking store
    (MLflow is imported only then)."""
    from toolkit.tracking.checks import is_mlflow_uri

    if not spec or not is_mlflow_uri(spec):
        return spec
    from toolkit.tracking import adapter as tracking

    return tracking.fetch_head(spec, cfg.tracking)


def build_config(config_path: Optional[str] = None, **flags: Any) -> Config:
    """Merge a YAML config with CLI flags (None means 'not given'). Paths given as flags are relative to the CWD."""
    overrides = {
        "model.name": flags.pop("model", None), "model.pretrained": flags.pop("pretrained", None),
        "model.device": flags.pop("device", None), "model.precision": flags.pop("precision", None),
        "model.batch_size": flags.pop("batch_size", None), "model.quick_gelu": flags.pop("quick_gelu", None),
        "prompts.templates": flags.pop("templates", None),
        "tracking.uri": flags.pop("tracking_uri", None),
    }
    labels = flags.pop("labels", None)
    labels_file = flags.pop("labels_file", None)
    if labels:
        overrides["prompts.labels"] = list(labels)
    elif labels_file:
        overrides["prompts.labels_file"] = labels_file
    overrides.update(flags)
    cfg = load_config(config_path, overrides)
    if labels_file and not labels:  # a labels file flag replaces labels given inline in the YAML
        cfg.prompts.labels = None
    if cfg.tracking.uri is None and os.environ.get("MLFLOW_TRACKING_URI"):
        cfg.tracking.uri = os.environ["MLFLOW_TRACKING_URI"]
    return cfg


class Fraction(click.ParamType):
    """A number between 0 and 1 (NaN and inf refused with that wording, which click.FloatRange lets through)."""

    name = "0..1"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        import math

        try:
            x = float(value)
        except (TypeError, ValueError):
            x = math.nan
        if not 0.0 <= x <= 1.0:  # False for NaN too
            self.fail(f"{value!r} should be a number between 0 and 1", param, ctx)
        return x


FRACTION = Fraction()


# ---------------------------------------------------------------- splits and the "none of these" rule

def split_options(f: Callable) -> Callable:
    """--seed, --val-fraction, --test-fraction: how a dataset without given splits is split."""
    f = click.option("--test-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
                     help="Share of each class drawn for test when the data has no test split. [default: 0.15]")(f)
    f = click.option("--val-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
                     help="Share of each class drawn for validation when the data has no val split. [default: 0.15]")(f)
    f = click.option("--seed", type=int, default=None, help="Seed of the drawn splits and of training. [default: 0]")(f)
    f = click.option("--multi-label", "multi_label", is_flag=True, default=None,
                     help="DATA is multi-label: a CSV path,labels[,split] with labels separated by '|', or JSON Lines "
                          "{\"path\", \"labels\": [...]}. [default: recognised from the file]")(f)
    return f


def rejection_options(f: Callable) -> Callable:
    """--target-precision | --target-coverage | --reject-below: the "none of these" rule (see with_rejection)."""
    f = click.option("--reject-below", type=FRACTION, default=None,
                     help="Answer \"none of these\" below this calibrated probability (given, not chosen).")(f)
    f = click.option("--target-coverage", type=click.FloatRange(0, 1, min_open=True), default=None,
                     help="Choose the threshold on val that still accepts this share of the images.")(f)
    f = click.option("--target-precision", type=click.FloatRange(0, 1, min_open=True), default=None,
                     help="Choose the lowest threshold on val whose accepted predictions are this accurate; the "
                          "head then answers \"none of these\" below it.")(f)
    return f


def with_rejection(cfg: Config, target_precision: Optional[float], target_coverage: Optional[float],
                   reject_below: Optional[float]) -> Config:
    """The config with a rejection flag replacing its rule (cfg.probe.target_precision | target_coverage |
    reject_below); the same config when no flag is given."""
    given = {k: v for k, v in (("target_precision", target_precision), ("target_coverage", target_coverage),
                               ("reject_below", reject_below)) if v is not None}
    if len(given) > 1:
        raise click.UsageError(f"{' and '.join('--' + k.replace('_', '-') for k in given)} both given; "
                               "choose one rejection rule")
    if not given:
        return cfg
    probe = cfg.probe.model_copy(update={"target_precision": None, "target_coverage": None, "reject_below": None,
                                         **given})
    return cfg.model_copy(update={"probe": probe})


def probe_overrides(flags: dict[str, Any], **more: Any) -> dict[str, Any]:
    """Move the probe flags out of `flags` into dotted config overrides."""
    out = {"probe.seed": flags.pop("seed", None), "probe.val_fraction": flags.pop("val_fraction", None),
           "probe.test_fraction": flags.pop("test_fraction", None), "probe.multi_label": flags.pop("multi_label", None)}
    out.update({f"probe.{k}": v for k, v in more.items()})
    return out


def show_progress(flag: Optional[bool]) -> bool:
    """--progress/--no-progress, or (not given) whether stderr is a terminal."""
    return sys.stderr.isatty() if flag is None else flag


# ---------------------------------------------------------------- signals


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT, raised in the main thread by `signals_as_interrupts`. A KeyboardInterrupt, so what
    cleans up after Ctrl-C does the same for SIGTERM: a tracked run ends KILLED (tracking.tracked_run), an
    atomic write removes its temporary file, an extraction leaves its store unfinished (resumable). The CLI
    then prints one line (with the notes added on the way out) and exits 128 + the signal number."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        self.signal_name = signal.Signals(signum).name
        super().__init__(self.signal_name)


@contextlib.contextmanager
def signals_as_interrupts() -> Iterator[None]:
    """While the block runs, SIGTERM and SIGINT raise Interrupted in the main thread. A second signal while
    the first is being cleaned up after takes the default action (the process ends at once). A signal that
    was ignored when the process started (SIGINT in a background job, `nohup`) stays ignored."""
    if threading.current_thread() is not threading.main_thread():  # handlers can only be set from there
        yield
        return
    caught: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        if caught:  # pressed again: stop cleaning up
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        caught.append(signum)
        raise Interrupted(signum)

    previous = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        if signal.getsignal(signum) is not signal.SIG_IGN:
            previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old if old is not None else signal.SIG_DFL)


def interrupted_line(e: KeyboardInterrupt) -> tuple[str, int]:
    """The one line printed for an interrupted command, and its exit code (143 for SIGTERM, 130 for SIGINT):
    `error: interrupted by SIGTERM; MLflow run 1f2e... is marked KILLED`."""
    name = getattr(e, "signal_name", "SIGINT")
    notes = "; ".join(getattr(e, "__notes__", None) or [])
    return f"error: interrupted by {name}" + (f"; {notes}" if notes else ""), 128 + getattr(e, "signum", 2)
