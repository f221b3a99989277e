"""What a prompt run and a probe run record: params, metrics, artifacts, and (probe) the head as a model.

No mlflow import here: everything goes through tracking.TrackedRun (this module uses tracking, never the
reverse). Both kinds log the headline metrics of
the split they were scored on under plain names (accuracy, balanced_accuracy, macro_f1, recall/<class>),
so `clipkit compare` ranks them on one axis; a probe's plain metrics are its test metrics.
"""
from __future__ import annotations

import json
import tempfile
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator, Optional

from toolkit.tracking import adapter as tracking
from toolkit.fitting.prompt_eval import split_digest

MODEL_CODE = Path(__file__).with_name("logged_model.py")  # the models-from-code file MLflow loads
SMALL_CHECKPOINT = 50 * 2**20  # local checkpoints below this size travel with the logged model


def yaml_dump(doc: Any) -> str:
    import yaml

    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


def store_params(store) -> dict[str, Any]:
    """The feature store's identity: folder, fingerprint, extractor."""
    if store is None:
        return {}
    ident = store.meta.get("identity") or {}
    return {"store": str(store.path), "store_fingerprint": str(store.meta.get("fingerprint", ""))[:16],
            "extractor": f"{ident.get('model')} / {ident.get('pretrained') or 'random-init'}",
            "weights_sha256": ident.get("weights_sha256")}


def _split_params(cfg) -> dict[str, Any]:
    return {"model": cfg.model.name, "pretrained": cfg.model.pretrained, "split_seed": cfg.probe.seed,
            "val_fraction": cfg.probe.val_fraction, "test_fraction": cfg.probe.test_fraction,
            "rejection": _rejection(cfg.probe)}


def _rejection(p) -> str:
    """The "none of these" rule asked for: 'target_precision=0.95', ... or 'none'."""
    return next((f"{k}={getattr(p, k):g}" for k in ("target_precision", "target_coverage", "reject_below")
                 if getattr(p, k) is not None), "none")


class PromptRun:
    """A kind=prompt run for one PromptSet; params are logged up front, the rest by `log_result`."""

    def __init__(self, run, prompt_set, store=None):
        self.run, self.run_id = run, run.run_id
        ps = prompt_set
        run.params({**_split_params(run.cfg), "prompt_set": ps.name, "labels": list(ps.labels.values()),
                    "templates": ps.templates, "template_count": len(ps.templates),
                    "templates_spec": ps.templates_spec, "labels_spec": ps.labels_spec, **store_params(store)})
        run.text(yaml_dump(ps.to_dict()), "prompt_set.yaml")

    def log_result(self, ev) -> None:
        """Metrics of a PromptEval (calibration included), its predictions CSV, confusion matrix (CSV + PNG)
        and reliability diagram."""
        from toolkit.evaluation import plots
        from toolkit.evaluation.metrics import confusion_csv, reliability_panels

        if getattr(ev, "multi_label", False):
            return self._log_multilabel(ev)
        r, m = self.run, ev.metrics
        r.params({"eval_split": ev.split, "n_images": len(ev.y_true)})
        r.tags({"eval_split": ev.split, "split_digest": split_digest(ev.paths)})
        r.evaluation(m)
        r.metrics(ev.scalar_metrics())
        r.text(ev.predictions_csv(), "predictions.csv")
        r.text(confusion_csv(m["confusion_matrix"], ev.classes), "confusion_matrix.csv")
        acc = m.get("accuracy")
        title = f"prompt set '{ev.prompt_set.name}' on {ev.split}" + (
            f": accuracy {100 * acc:.1f}%" if acc is not None else "")
        with tempfile.TemporaryDirectory(prefix="clipkit-prompt-") as tmp:
            r.file(plots.confusion_matrix_png(m["confusion_matrix"], ev.classes, Path(tmp) / "confusion_matrix.png",
                                              title))
            panels = reliability_panels({f"zero-shot '{ev.prompt_set.name}'": ev.calibration}, ev.split)
            if panels:
                r.file(plots.reliability_png(panels, Path(tmp) / "reliability.png", f"calibration on {ev.split}, "
                                             "before and after temperature scaling (fitted on val)"))


    def _log_multilabel(self, ev) -> None:
        """A multi-label prompt set (fitting.multilabel_eval.MultiLabelEval): mAP, micro/macro F1, ECE, per-class
        AP and threshold, recall/<class> (as single-label runs), and predictions.csv."""
        r = self.run
        r.params({"eval_split": ev.split, "n_images": len(ev.paths), "multi_label": True,
                  "negatives": list(getattr(ev.head, "negatives", []))})
        r.tags({"eval_split": ev.split, "split_digest": split_digest(ev.paths)})
        r.evaluation(ev.metrics)
        r.metrics(ev.scalar_metrics())
        r.text(ev.predictions_csv(), "predictions.csv")


class ProbeRun:
    """A kind=probe run of `train-probe`; config params up front, results, head and model by `log_result`."""

    def __init__(self, run, store=None):
        self.run, self.run_id, self.store = run, run.run_id, store
        self.model_uri: Optional[str] = None
        self.registered_uri: Optional[str] = None
        p = run.cfg.probe
        self._logged = {**_split_params(run.cfg), "method": p.method, "init": p.init, "seed": p.seed,
                        "shots": p.fewshot or "all", **_method_grid(p)}
        run.params(self._logged)

    def log_result(self, result) -> None:
        """Params chosen by the sweep, val/test/zero-shot metrics, the report files, the head and its model."""
        r, store = self.run, self.store
        chosen = {}  # what the fit chose; a name already logged from the config with another value gets 'fit_'
        for k, v in result.params.items():
            if k in self._logged and str(self._logged[k]) == str(v) or k == "fewshot":
                continue
            chosen[f"fit_{k}" if k in self._logged else k] = v
        chosen["chosen_value"] = next((result.params[k] for k in ("C", "weight_decay", "alpha")
                                       if k in result.params), None)
        r.params({**chosen, **store_params(store)})
        if store is not None:
            r.tags({"eval_split": "test", "split_digest": split_digest(store.paths[store.split_indices("test")])})
        scalars = result.scalar_metrics()
        r.metrics(scalars)
        r.evaluation(result.metrics["test"])
        # plain names are the test numbers, as accuracy is, so `clipkit compare --metric ece` ranks both kinds
        r.metrics({k: scalars[f"test_{k}"] for k in ("ece", "nll", "brier") if f"test_{k}" in scalars})
        if result.report_dir is not None and Path(result.report_dir).is_dir():  # None: no report was written
            r.folder(Path(result.report_dir))
        with tempfile.TemporaryDirectory(prefix="clipkit-head-") as tmp:
            head_dir = result.head.save(Path(tmp) / "head")
            r.folder(head_dir, "head")
            self._log_model(head_dir, Path(tmp), result.head.classes_)

    def _log_model(self, head_dir: Path, tmp: Path, classes: list[str]) -> None:
        """The head plus what rebuilds its extractor, as a pyfunc model from code; registered by name."""
        r, mcfg, tcfg = self.run, self.run.cfg.model, self.run.cfg.tracking
        artifacts = {"head": str(head_dir)}
        name, pretrained = Path(mcfg.name), Path(mcfg.pretrained or "")
        if mcfg.name.endswith(".json") and name.is_file():
            artifacts["model_config"] = str(name)
        if pretrained.is_file() and pretrained.stat().st_size < SMALL_CHECKPOINT:
            artifacts["checkpoint"] = str(pretrained)
        extractor = {**mcfg.model_dump(mode="json"), "device": "auto", "num_workers": 0}
        (tmp / "extractor.json").write_text(json.dumps(extractor, indent=2))
        artifacts["extractor"] = str(tmp / "extractor.json")
        registered = None
        if tcfg.register_head:
            registered = tcfg.registered_model or f"{r.experiment}-head"
        info = r.pyfunc_model(MODEL_CODE, artifacts, list(classes), _requirements(), registered)
        self.model_uri, self.registered_uri = info["run_model_uri"], info["registered_uri"]
        r.tags({"model_uri": info["model_uri"], "registered_model": self.registered_uri})


def _method_grid(p) -> dict[str, Any]:
    """The searched grids of a probe config's method (auto: its candidates and how it chooses)."""
    c_grid = p.c_grid or f"logspace({p.c_min:g}, {p.c_max:g}, {p.c_steps}) + refinement"
    linear = {"weight_decay_grid": p.weight_decays, "lr": p.lr, "max_epochs": p.max_epochs, "patience": p.patience,
              "batch_size": p.batch_size}
    cache = {"cache_alphas": p.cache_alphas, "cache_betas": p.cache_betas, "finetune": p.finetune}
    if p.finetune:
        cache.update(cache_lr=p.cache_lr, cache_epochs=p.cache_epochs, patience=p.patience)
    grids = {"logreg": {"c_grid": c_grid, "max_iter": p.max_iter}, "linear": linear, "cache": cache,
             "blend": {"blend_alphas": p.blend_alphas, "blend_base": p.blend_base},
             "auto": {"auto_candidates": p.auto_candidates, "auto_min_val_per_class": p.auto_min_val_per_class,
                      "auto_folds": p.auto_folds}}
    return grids[p.method]


def _requirements() -> list[str]:
    """Pinned requirements of the logged model (written out, so MLflow needn't load the model to infer them)."""
    out = []
    for dist in ("clipkit", "open_clip_torch", "torch", "torchvision", "safetensors", "numpy", "pillow",
                 "pandas", "pydantic", "pyyaml", "mlflow"):
        try:
            out.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            out.append(dist)
    return out


@contextmanager
def prompt_run(cfg, dataset_name: str, prompt_set, store=None) -> Iterator[Any]:
    """A run tagged kind=prompt, named 'prompt:<set>', for a PromptSet scored on a FeatureStore.

    Yields an object with `log_result(PromptEval)`; an exception ends the run FAILED.
    """
    if not cfg.tracking.enabled:
        yield tracking.NoRun()
        return
    with tracking.tracked_run(cfg, dataset_name, "prompt", f"prompt:{prompt_set.name}",
                              {"prompt_set": prompt_set.name}) as run:
        yield PromptRun(run, prompt_set, store)


@contextmanager
def probe_run(cfg, dataset_name: str, run_name: Optional[str] = None, store: Any = None) -> Iterator[Any]:
    """A run tagged kind=probe on the feature `store` the probe is trained from (its identity and split are
    logged). Yields an object with `log_result(result)`; an exception ends it FAILED."""
    if not cfg.tracking.enabled:
        yield tracking.NoRun()
        return
    method = cfg.probe.method + ("-f" if cfg.probe.finetune else "")  # cache-f: Tip-Adapter-F
    with tracking.tracked_run(cfg, dataset_name, "probe", run_name or f"probe:{method}",
                              {"method": cfg.probe.method}) as run:
        yield ProbeRun(run, store)
