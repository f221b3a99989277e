"""Heads and feature stores remember their model: used with no model flags, they rebuild it; given flags that
disagree, they are refused; a checkpoint that moved gives one line naming the file and its sha256."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from toolkit.cli import main
from toolkit.predictor import Predictor
from toolkit.heads.linear import LinearProbe

from tracking_fixtures import color_dataset


@pytest.fixture()
def moved_model(tiny_model, tmp_path):
    """A private copy of the tiny model (so moving it can't disturb other tests)."""
    d = tmp_path / "model"
    d.mkdir()
    cfg = Path(shutil.copy(tiny_model["config"], d / "tiny-rn.json"))
    ckpt = Path(shutil.copy(tiny_model["checkpoint"], d / "tiny-rn.safetensors"))
    return cfg, ckpt


def _extractor(cfg_path, ckpt):
    from toolkit.config import ModelConfig
    from toolkit.encoder.features import FeatureExtractor

    return FeatureExtractor.from_config(ModelConfig(name=str(cfg_path), pretrained=str(ckpt), device="cpu",
                                                    precision="fp32", num_workers=0))


def test_a_head_folder_rebuilds_its_model_with_no_flags(moved_model, image_dir, tmp_path, other_tiny_config):
    cfg_path, ckpt = moved_model
    ex = _extractor(cfg_path, ckpt)
    rng = np.random.default_rng(0)
    head = LinearProbe(["x", "y", "z"], rng.normal(size=(3, ex.embed_dim)), identity=ex.identity)
    folder = head.save(tmp_path / "head")
    paths = sorted(str(p) for p in image_dir.rglob("*.png"))
    res = CliRunner().invoke(main, ["predict", *paths, "--head", str(folder), "--precision", "fp32",
                                    "--format", "json", "--no-progress"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["mode"] == "probe" and doc["model"] == "tiny-rn"
    assert [r["label"] for r in doc["results"]] == [r["label"] for r in Predictor(ex, head).predict_paths(paths)]
    # flags naming another model are refused, not silently replaced
    res = CliRunner().invoke(main, ["predict", paths[0], "--head", str(folder), "--model", other_tiny_config,
                                    "--pretrained", "none"])
    assert res.exit_code != 0 and "head was trained on features of tiny-rn" in res.output
    # the checkpoint moved: one line naming the file and its sha256
    ckpt.rename(ckpt.with_name("elsewhere.safetensors"))
    res = CliRunner().invoke(main, ["predict", paths[0], "--head", str(folder)])
    assert res.exit_code == 3, res.output
    line = res.output.strip()
    assert "\n" not in line and str(ckpt) in line and ex.identity.checkpoint_sha256 in line


def test_train_probe_and_eval_prompts_on_a_store_need_no_model_flags(moved_model, tmp_path):
    cfg_path, ckpt = moved_model
    data = color_dataset(tmp_path / "colors")
    res = CliRunner().invoke(main, ["extract", str(data), "--out", str(tmp_path / "store"), "--model",
                                    str(cfg_path), "--pretrained", str(ckpt), "--device", "cpu", "--no-progress"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["train-probe", str(tmp_path / "store"), "--out", str(tmp_path / "head"),
                                    "--no-track", "--c-grid", "1,10", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "head" / "head.json").is_file()
    res = CliRunner().invoke(main, ["eval-prompts", str(tmp_path / "store"), "--no-track", "--format", "json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["results"][0]["metrics"]["accuracy"] is not None
