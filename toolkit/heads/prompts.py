"""Labels and prompt templates: load, validate, and name the built-in ensembles.

A template is a string with exactly one '{}' where the label goes. A template set is a list of them;
the zero-shot class embedding is the re-normalized mean over the set (see zeroshot.py).
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Optional, Sequence

from toolkit.config import PromptConfig
from toolkit.labels import DEFAULT_LABELS
from toolkit.errors import ConfigError

# A small ensemble suited to people and actions. Labels are phrases like "a person repeating a squat".
PEOPLE_TEMPLATES = [
    "{}",
    "a photo of {}.",
    "a picture of {}.",
    "an image of {}.",
    "a photo of a person: {}.",
    "a drawing of {}.",
    "a low resolution photo of {}.",
]

BUILTIN_TEMPLATE_SETS = ("none", "people", "openai_imagenet")


def builtin_templates(name: str) -> list[str]:
    """The templates of a built-in set: 'none' (the label is the prompt), 'people', 'openai_imagenet'."""
    if name == "none":
        return ["{}"]
    if name == "people":
        return list(PEOPLE_TEMPLATES)
    if name == "openai_imagenet":
        from toolkit.models.weights import openai_imagenet_templates  # pulls in open_clip only when asked for

        return openai_imagenet_templates()
    raise KeyError(name)


def validate_templates(templates: Sequence[str], source: str) -> list[str]:
    """Check that each template holds exactly one '{}' and the set is non-empty; return it as a list."""
    out = [t for t in (s.strip() for s in templates) if t]
    if not out:
        raise ConfigError(f"no templates in {source}; give at least one line containing '{{}}'")
    for t in out:
        if t.count("{}") != 1:
            raise ConfigError(f"template {t!r} in {source} must contain '{{}}' exactly once (where the label goes)")
    return out


def load_templates(spec: str) -> list[str]:
    """A built-in set name or a file with one template per line ('#' starts a comment)."""
    if spec in BUILTIN_TEMPLATE_SETS:
        return builtin_templates(spec)
    path = Path(spec)
    if not path.is_file():
        guess = difflib.get_close_matches(spec, BUILTIN_TEMPLATE_SETS, n=1)
        hint = f"did you mean '{guess[0]}'? " if guess else ""
        raise ConfigError(f"templates '{spec}' is neither a built-in set nor a file; {hint}"
                          f"use one of {', '.join(BUILTIN_TEMPLATE_SETS)} or a file with one '{{}}' template per line")
    return validate_templates(_read_lines(path), f"template file '{spec}'")


def _read_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"can't read '{path}' ({e.__class__.__name__}); pass a UTF-8 text file") from None
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def validate_labels(labels: Sequence[str], source: str) -> list[str]:
    """Strip labels; reject an empty set, blank labels and duplicates (case-insensitive)."""
    out = [str(lb).strip() for lb in labels]
    if not out:
        raise ConfigError(f"no labels in {source}; give at least two labels")
    if any(not lb for lb in out):
        raise ConfigError(f"blank label in {source}; remove empty labels")
    seen: dict[str, str] = {}
    for lb in out:
        key = lb.casefold()
        if key in seen:
            raise ConfigError(f"duplicate label {lb!r} in {source}; each label must be unique")
        seen[key] = lb
    return out


def load_labels(path: str | Path) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"labels file '{path}' not found; pass a text file with one label per line")
    return validate_labels(_read_lines(p), f"labels file '{path}'")


def resolve_labels(cfg: PromptConfig) -> list[str]:
    """Labels from the config: explicit list, else the labels file, else the exercise labels."""
    if cfg.labels is not None:
        return validate_labels(cfg.labels, "the label list")
    if cfg.labels_file:
        return load_labels(cfg.labels_file)
    return list(DEFAULT_LABELS)


def resolve_templates(cfg: PromptConfig) -> list[str]:
    return load_templates(cfg.templates)


def expand(labels: Sequence[str], templates: Sequence[str]) -> list[str]:
    """All prompts, label-major: [t.format(l) for l in labels for t in templates], shape (C*T,)."""
    return [t.replace("{}", lb) for lb in labels for t in templates]


def template_set_name(spec: Optional[str]) -> str:
    """A short name for a template spec, for tables and MLflow params."""
    if spec is None:
        return "none"
    return spec if spec in BUILTIN_TEMPLATE_SETS else Path(spec).stem
