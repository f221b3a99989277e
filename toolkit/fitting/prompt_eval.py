"""Prompt experiments: named prompt sets (labels x templates) scored zero-shot on a labelled feature store.

A prompt set maps each dataset class to the text that goes into the prompts, plus a template list:

    PromptSet(name="people", labels={"squat": "a person repeating a squat", ...}, templates=[...])

Sets come from a YAML file (`load_prompt_sets`) or from repeated --templates/--labels flags
(`prompt_sets_from_flags`). Scoring reuses the store's image features, so the images are encoded once
however many sets are tried; each set costs one text encoding of its prompts.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import yaml

from toolkit import fsio
from toolkit.errors import ConfigError
from toolkit.heads.prompts import load_labels, load_templates, template_set_name, validate_templates

SPLIT_CHOICES = ("test", "val", "train", "all")


@dataclass
class PromptSet:
    """One zero-shot classifier recipe. `labels`: class name -> prompt text, in the dataset's class order."""

    name: str
    labels: dict[str, str]
    templates: list[str]
    templates_spec: str = "inline"  # built-in name, file name, or 'inline'
    labels_spec: str = "classes"  # 'classes' (the class names), a labels file name, or 'inline'

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "labels": dict(self.labels), "templates": list(self.templates),
                "templates_spec": self.templates_spec, "labels_spec": self.labels_spec}


@dataclass
class PromptEval:
    """A prompt set scored on one split: `proba` (n, C) calibrated, in `classes` order, rows sum to 1."""

    prompt_set: PromptSet
    split: str
    classes: list[str]
    paths: list[str]
    y_true: list[str]
    proba: np.ndarray
    metrics: dict[str, Any] = field(default_factory=dict)  # toolkit.evaluation.metrics.evaluate() output
    # calibration.calibrate_head report: temperature fitted on the val split, {val, <split>} before/after
    calibration: dict[str, Any] = field(default_factory=dict)
    head: Any = None  # the calibrated ZeroShotHead (classes = the dataset's class names); see `saved_head`

    def scalar_metrics(self) -> dict[str, float]:
        """Calibration numbers for MLflow: temperature, {val,<split>}_{ece,nll,brier}[_before], and plain
        ece / nll / brier (+ _before) on the scored split, like the plain accuracy."""
        from toolkit.heads.calibration import scalar_metrics

        out = scalar_metrics(self.calibration)
        for k in ("ece", "nll", "brier"):
            for suffix in ("", "_before"):
                if f"{self.split}_{k}{suffix}" in out:
                    out[f"{k}{suffix}"] = out[f"{self.split}_{k}{suffix}"]
        return out

    def predictions_csv(self) -> str:
        """path,label,predicted,score, then one probability column per class."""
        buf = io.StringIO()
        w = fsio.csv_writer(buf)
        w.writerow(["path", "label", "predicted", "score", *self.classes])
        for p, y, row in zip(self.paths, self.y_true, self.proba):
            j = int(row.argmax())
            w.writerow([p, y, self.classes[j], f"{row[j]:.6f}", *[f"{v:.6f}" for v in row]])
        return buf.getvalue()


# ---------------------------------------------------------------- building prompt sets

def match_labels(labels: Any, classes: Sequence[str], source: str) -> dict[str, str]:
    """A class -> prompt-text mapping from a list of class names or a {class: text} mapping.

    A list must name every class exactly once (case-insensitive); a mapping must have every class as a key.
    """
    by_fold = {c.casefold(): c for c in classes}
    if isinstance(labels, dict):
        unknown = [k for k in labels if str(k).casefold() not in by_fold]
        if unknown:
            raise ConfigError(f"label key {unknown[0]!r} in {source} is not a class of the dataset; "
                              f"use the class names as keys: {', '.join(classes)}")
        out = {by_fold[str(k).casefold()]: str(v).strip() for k, v in labels.items()}
    elif isinstance(labels, (list, tuple)):
        unknown = [lb for lb in labels if str(lb).strip().casefold() not in by_fold]
        if unknown:
            raise ConfigError(f"label {unknown[0]!r} in {source} is not a class of the dataset ({', '.join(classes)});"
                              " to prompt with other words, map class -> text in a --prompt-sets YAML")
        out = {by_fold[str(lb).strip().casefold()]: by_fold[str(lb).strip().casefold()] for lb in labels}
    else:
        raise ConfigError(f"labels in {source} must be a list of class names or a mapping class -> text, "
                          f"got {type(labels).__name__}")
    missing = [c for c in classes if c not in out]
    if missing:
        raise ConfigError(f"class {missing[0]!r} has no label in {source}; give a label for every class")
    texts = [out[c] for c in classes]
    if any(not t for t in texts) or len({t.casefold() for t in texts}) != len(texts):
        raise ConfigError(f"labels in {source} must be non-empty and distinct (got {texts}); fix the duplicates")
    return {c: out[c] for c in classes}


def _templates(spec: Any, base: Optional[Path], source: str) -> tuple[list[str], str]:
    """(templates, spec name) from a built-in name, a file (relative to `base`), or an inline list."""
    if isinstance(spec, (list, tuple)):
        return validate_templates([str(t) for t in spec], source), "inline"
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"templates in {source} must be a built-in name, a file or a list, got {spec!r}")
    if base is not None and not Path(spec).is_absolute() and (base / spec).is_file():
        spec = str(base / spec)
    return load_templates(spec), template_set_name(spec)


def _check_name(name: str, seen: set[str], source: str) -> str:
    name = str(name).strip()
    if not name:
        raise ConfigError(f"a prompt set in {source} has an empty name; name every set")
    if name in seen:
        raise ConfigError(f"prompt set name {name!r} appears twice ({source}); give each set its own name")
    seen.add(name)
    return name


def load_prompt_sets(path: str | Path, classes: Sequence[str]) -> list[PromptSet]:
    """Read `prompt_sets: {name: {templates: NAME|FILE|[...], labels: [...]|{class: text}|FILE}}`."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"prompt-sets file '{path}' not found; see configs/prompt_sets.yaml for the format")
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"prompt-sets file '{path}' is not valid YAML ({e.__class__.__name__}); "
                          "fix its syntax") from None
    sets = doc.get("prompt_sets") if isinstance(doc, dict) else None
    if not isinstance(sets, dict) or not sets:
        raise ConfigError(f"prompt-sets file '{path}' needs a non-empty 'prompt_sets:' mapping of name -> "
                          "{templates, labels}; see configs/prompt_sets.yaml")
    out, seen = [], set()
    for name, spec in sets.items():
        where = f"prompt set {name!r} of '{path}'"
        name = _check_name(name, seen, str(path))
        spec = spec or {}
        if not isinstance(spec, dict) or set(spec) - {"templates", "labels"}:
            raise ConfigError(f"{where} must be a mapping with 'templates' and optional 'labels' keys")
        templates, tspec = _templates(spec.get("templates", "none"), p.parent, where)
        labels, lspec = spec.get("labels"), "classes"
        if isinstance(labels, str):
            lfile = p.parent / labels if not Path(labels).is_absolute() else Path(labels)
            labels, lspec = load_labels(lfile), lfile.stem
        elif labels is not None:
            lspec = "inline"
        mapping = match_labels(labels if labels is not None else list(classes), classes, where)
        out.append(PromptSet(name, mapping, templates, tspec, lspec))
    return out


def prompt_sets_from_flags(templates: Sequence[str], labels_files: Sequence[str], classes: Sequence[str],
                           default_templates: str = "people") -> list[PromptSet]:
    """One set per (labels file, templates) pair; no labels file means the class names themselves."""
    tspecs = list(templates) or [default_templates]
    lspecs: list[Optional[str]] = list(labels_files) or [None]
    out, seen = [], set()
    for lf in lspecs:
        mapping = match_labels(load_labels(lf) if lf else list(classes), classes, f"labels file '{lf}'" if lf
                               else "the dataset's classes")
        for ts in tspecs:
            tname = template_set_name(ts)
            name = tname if len(lspecs) == 1 else f"{Path(lf).stem if lf else 'classes'}+{tname}"
            name = _check_name(name, seen, "the --templates/--labels flags")
            out.append(PromptSet(name, mapping, load_templates(ts), tname, Path(lf).stem if lf else "classes"))
    return out


# ---------------------------------------------------------------- scoring

def split_rows(store, split: str) -> np.ndarray:
    """Row indices of one split of a FeatureStore ('all' = every row)."""
    if split not in SPLIT_CHOICES:
        raise ConfigError(f"unknown split '{split}'; use one of {', '.join(SPLIT_CHOICES)}")
    rows = np.arange(len(store)) if split == "all" else store.split_indices(split)
    if len(rows) == 0:
        raise ConfigError(f"the '{split}' split of store '{store.path}' is empty; pick another {{field}}", field="split")
    return rows


def split_digest(paths: Sequence[str]) -> str:
    """A short id of a set of image paths, so runs scored on the same test images can be recognised."""
    return hashlib.sha256("\n".join(sorted(str(p) for p in paths)).encode()).hexdigest()[:12]


def _arrays(store, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """((n, D) float32 features, (n,) class indices in store.classes order) of some rows of a store."""
    pos = {c: i for i, c in enumerate(store.classes)}
    return np.asarray(store.features[rows], np.float32), np.asarray([pos[str(v)] for v in store.labels[rows]])


def evaluate_prompt_set(extractor, store, prompt_set: PromptSet, split: str = "test",
                        rule: Optional[dict[str, Optional[float]]] = None) -> PromptEval:
    """Score a prompt set zero-shot on one split of a store; metrics as toolkit.evaluation.metrics.evaluate.

    The zero-shot head is calibrated first: a temperature fitted on the store's val split (and, with `rule`
    {target_precision | target_coverage | reject_below}, a "none of these" threshold chosen there)."""
    from toolkit.heads.calibration import calibrate_head
    from toolkit.evaluation.metrics import evaluate
    from toolkit.heads.zeroshot import ZeroShotHead

    classes = store.classes
    if list(prompt_set.labels) != list(classes):
        prompt_set.labels = match_labels(prompt_set.labels, classes, f"prompt set {prompt_set.name!r}")
    texts = [prompt_set.labels[c] for c in classes]
    built = ZeroShotHead.from_extractor(extractor, texts, prompt_set.templates)
    # the dataset's class names are what it answers; the prompt texts it was built from are kept in params
    head = ZeroShotHead(classes, built.templates, built.coef_, built.logit_scale, built.identity,
                        params={"prompt_set": prompt_set.name, "label_texts": dict(prompt_set.labels)})
    rows, val = split_rows(store, split), store.split_indices("val")
    if len(val) == 0:
        raise ConfigError(f"store '{store.path}' has no val split; the zero-shot head's temperature is fitted on "
                          "val: give a val split or let clipkit draw one ({field})", field="val_fraction")
    (X_val, y_val), (X, y) = _arrays(store, val), _arrays(store, rows)
    head, cal = calibrate_head(head, head.decision_function(X_val), y_val, head.decision_function(X), y,
                               split=split, **(rule or {}))
    proba = head.predict_proba(X)  # calibrated; columns follow `classes`
    y_true = [str(v) for v in store.labels[rows]]
    return PromptEval(prompt_set, split, list(classes), [str(p) for p in store.paths[rows]], y_true, proba,
                      evaluate(y_true, proba, classes), cal, head)
