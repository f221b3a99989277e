"""Helpers for the tracking tests: a migrated empty SQLite store to copy, a tiny colour dataset, a config."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

COLORS = {"a red square": (220, 30, 30), "a green square": (30, 200, 30), "a blue square": (30, 30, 220)}
SPLIT_SIZES = {"train": 8, "val": 4, "test": 4}


def empty_store(folder: Path) -> Path:
    """A fresh MLflow SQLite database (schema migrations take seconds: do it once, then copy the file)."""
    import mlflow

    db = folder / "template.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


def new_store(template: Path, folder: Path) -> str:
    """Copy the template database into `folder`; return its sqlite:/// URI."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(template, folder / "mlflow.db")
    return f"sqlite:///{folder / 'mlflow.db'}"


def color_dataset(root: Path, seed: int = 0) -> Path:
    """ROOT/{train,val,test}/<colour class>/*.png: noisy solid squares, 32 px, 3 classes."""
    rng = np.random.default_rng(seed)
    for split, n in SPLIT_SIZES.items():
        for cls, rgb in COLORS.items():
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                arr = np.clip(np.array(rgb) + rng.normal(0, 25, (32, 32, 3)), 0, 255).astype("uint8")
                Image.fromarray(arr).save(d / f"{i}.png")
    return root


def write_config(path: Path, tiny_model: dict, uri: str, artifacts: Path, **tracking) -> Path:
    """A clipkit YAML config: the tiny model on CPU, tracking into `uri` with artifacts in `artifacts`."""
    doc = {"model": {"name": tiny_model["config"], "pretrained": tiny_model["checkpoint"], "device": "cpu",
                     "batch_size": 8, "num_workers": 0},
           "probe": {"c_steps": 4},
           "tracking": {"uri": uri, "artifact_location": str(artifacts), **tracking}}
    path.write_text(yaml.safe_dump(doc))
    return path


PROMPT_SETS = """
prompt_sets:
  bare:
    templates: none
  described:
    templates: ["a photo of {}.", "a picture of {}."]
    labels:
      a red square: a red patch
      a green square: a green patch
      a blue square: a blue patch
"""
