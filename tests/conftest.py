"""Shared fixtures: a tiny real open_clip model (config JSON + safetensors checkpoint) and sample images."""
from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# No test may reach the network: the hub is "offline" for huggingface_hub and for our fail-fast check.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# clipkit's cache (the fast path's ONNX graphs, train-probe's stores) goes to a folder of this test session, never
# the user's ~/.cache; subprocesses started by tests inherit it.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="clipkit-tests-cache-")
atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], True)

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = ROOT / "configs" / "demo.yaml"

TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "patch_size": None},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> dict:
    """A tiny ModifiedResNet CLIP: {'config': path.json, 'checkpoint': path.safetensors}. Random weights, fixed seed."""
    import torch
    from safetensors.torch import save_file

    import open_clip

    d = tmp_path_factory.mktemp("tiny_model")
    cfg_path = d / "tiny-rn.json"
    cfg_path.write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(cfg_path)
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-rn", pretrained=None)
    ckpt = d / "tiny-rn.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    return {"config": str(cfg_path), "checkpoint": str(ckpt)}


@pytest.fixture(scope="session")
def tiny_extractor(tiny_model):
    from toolkit.config import ModelConfig
    from toolkit.encoder.features import FeatureExtractor

    # fp32: the reference numerics that parity tests compare against open_clip (the default, auto, may pick bf16)
    return FeatureExtractor.from_config(ModelConfig(name=tiny_model["config"], pretrained=tiny_model["checkpoint"],
                                                    device="cpu", precision="fp32", batch_size=4, num_workers=0))


@pytest.fixture()
def image_dir(tmp_path) -> Path:
    """Six small distinct PNG/JPEG images in a folder with a subfolder."""
    rng = np.random.default_rng(0)
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    for i in range(6):
        arr = (rng.random((40 + i, 50, 3)) * 255).astype("uint8")
        folder = tmp_path / "imgs" / ("sub" if i >= 4 else "")
        Image.fromarray(arr).save(folder / f"img{i}.{'jpg' if i % 2 else 'png'}")
    return tmp_path / "imgs"


@pytest.fixture(scope="session")
def mlflow_template_db(tmp_path_factory) -> Path:
    """An empty MLflow SQLite database, made once per session (its migrations take seconds): copy it with
    tracking_fixtures.new_store(template, folder) for a fresh store."""
    from tracking_fixtures import empty_store

    return empty_store(tmp_path_factory.mktemp("mlflow-template-db"))


@pytest.fixture(scope="session")
def other_tiny_config(tmp_path_factory) -> str:
    """A model-config JSON of another tiny architecture name ('tiny-other'), for "not the store's / head's model"
    refusals with --pretrained none: built in a second, where a full random RN50 takes tens of seconds."""
    path = tmp_path_factory.mktemp("other_model") / "tiny-other.json"
    path.write_text(json.dumps(TINY_CFG))
    return str(path)
