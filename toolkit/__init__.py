"""clipkit: zero-shot CLIP and linear-probe classifiers for your own labels.

The public API, re-exported lazily so `import toolkit` (and the CLI's start-up) doesn't pay for
open_clip, Lightning or MLflow until a name that needs them is used.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Config": "config", "load_config": "config",
    "ToolkitError": "errors", "ConfigError": "errors", "ModelError": "errors", "InputError": "errors",
    "HeadError": "errors", "DataError": "errors", "TrackingError": "errors",
    "FeatureExtractor": "encoder.features", "ExtractorIdentity": "identity", "load_extractor": "encoder.features",
    "ZeroShotHead": "heads.zeroshot",
    "LinearProbe": "heads.linear", "train_probe": "fitting.probe",
    "estimator_for": "fitting.fewshot", "FitResult": "fitting.result", "write_report": "evaluation.report",
    "Predictor": "predictor", "build_predictor": "predictor", "load_head": "predictor",
    "LabelledDataset": "data.datasets", "load_dataset": "data.datasets",
    "FeatureStore": "data.store", "extract_store": "data.extraction",
    "predict_video": "video.pipeline",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'toolkit' has no attribute {name!r}")
