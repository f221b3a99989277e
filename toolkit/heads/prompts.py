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
        # OpenAI's 80 ImageNet templates as open_clip ships them (open_clip.zero_shot_metadata), kept as data
        return (Path(__file__).parent / "openai_imagenet_templates.txt").read_text(encoding="utf-8").splitlines()
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
    for lb in out:
        why = invisible(lb)
        if why:
            raise ConfigError(f"label {lb!r} in {source} {why}; write labels in visible characters")
    seen: dict[str, str] = {}
    for lb in out:
        key = lb.casefold()
        if key in seen:
            raise ConfigError(f"duplicate label {lb!r} in {source}; each label must be unique")
        seen[key] = lb
    return out


# format characters that hide or reorder text (zero-width spaces, bidi overrides, BOM); ZWJ (U+200D) and the
# variation selectors stay allowed: emoji sequences use them
_HIDING = set("\u200b\u200c\u200e\u200f\u2060\ufeff\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def invisible(label: str) -> Optional[str]:
    """Why `label` can't be told apart on screen (a control character such as NUL or a newline, a zero-width
    or direction-changing character, nothing visible at all), or None when it is plain text."""
    import unicodedata

    for ch in label:
        if unicodedata.category(ch) == "Cc" or ch in _HIDING:
            return f"holds the invisible character U+{ord(ch):04X} ({unicodedata.name(ch, 'a control character')})"
    if not any(unicodedata.category(ch)[0] in "LNPS" for ch in label):
        return "has no visible character"
    return None


def check_prompts_fit(tokenizer, labels: Sequence[str], templates: Sequence[str]) -> None:
    """ConfigError unless the model can tell the labels apart within its text context (77 tokens for CLIP, 32
    for the demo model): a label longer than the context by itself is refused, and so are two labels that
    read the same once a template's prompt is cut at the context (they would always score alike). A label that
    only a long template pushes past the cut is allowed, as open_clip allows it. Each label is tokenized once;
    only labels near the limit are tried with every template. Tokenizers without `encode` and
    `context_length` (Hugging Face ones) are not checked."""
    n_ctx, encode = getattr(tokenizer, "context_length", None), getattr(tokenizer, "encode", None)
    if not isinstance(n_ctx, int) or not callable(encode) or not labels or not templates:
        return
    room = n_ctx - 2  # the start and end tokens take two places
    frame = max(len(encode(t.replace("{}", " "))) for t in templates)
    near = []
    for lb in labels:
        n = len(encode(lb))
        if n > room:
            raise ConfigError(f"label {_short(lb)!r} is {n} tokens, but the model reads {room} (its text context "
                              f"is {n_ctx}), so the rest would be cut off; shorten the label")
        if frame + n + 1 >= room:  # + 1: a token that merges across the label's edge
            near.append(lb)
    for t in templates if len(near) > 1 else ():
        seen: dict[tuple[int, ...], str] = {}
        for lb in near:
            ids = tuple(encode(t.replace("{}", lb)))
            if len(ids) < room:
                continue
            other = seen.setdefault(ids[:room], lb)
            if other != lb:
                raise ConfigError(f"labels {_short(other)!r} and {_short(lb)!r} read the same to the model: with "
                                  f"template {t!r} both are cut at its text context ({n_ctx} tokens) before they "
                                  "differ; make them differ earlier, or shorten them")


def _short(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[:n - 3] + "..."


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


DEFAULT_NEGATIVE = "something else"  # a multi-label class's negative prompt when none is given


def load_negatives(path: str | Path, classes: Sequence[str]) -> dict[str, str]:
    """{class: negative prompt} for every class, from a multi-label negatives file: one `class | negative` line
    per class ('#' starts a comment), `* | negative` for every class not named (default DEFAULT_NEGATIVE).
    The negative goes into the same templates as the class name ("a photo of a person holding a dumbbell."
    against "a photo of a person."). ConfigError, one line naming the line and the fix, for anything else."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"negatives file '{path}' not found; pass a text file of 'class | negative prompt' lines")
    by_fold = {c.casefold(): c for c in classes}
    out: dict[str, str] = {}
    default = DEFAULT_NEGATIVE
    for n, raw in enumerate(_read_raw_lines(p), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"line {n} of negatives file '{path}'"
        if line.count("|") != 1:
            raise ConfigError(f"{where} is {_short(line)!r}; write one 'class | negative prompt' per line "
                              "('* | text' for every other class)")
        name, text = (part.strip() for part in line.split("|"))
        if not text or invisible(text):
            raise ConfigError(f"{where} gives class {name!r} an empty or invisible negative; write the text after '|'")
        if name == "*":
            default = text
            continue
        if name.casefold() not in by_fold:
            guess = difflib.get_close_matches(name, list(classes), n=1)
            hint = f"did you mean '{guess[0]}'? " if guess else ""
            raise ConfigError(f"{where} names {name!r}, which is not a class; {hint}the classes are "
                              f"{', '.join(classes)}")
        cls = by_fold[name.casefold()]
        if cls in out:
            raise ConfigError(f"{where} gives class '{cls}' a second negative; keep one line per class")
        out[cls] = text
    return {c: out.get(c, default) for c in classes}


def _read_raw_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"can't read '{path}' ({e.__class__.__name__}); pass a UTF-8 text file") from None
