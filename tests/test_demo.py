"""The shipped demo model end to end: it loads like any model and recognises generated exercises."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from toolkit.demo import EXERCISES, MAIN_CLASSES
from toolkit.demo.figures import example_rng, render_example

ROOT = Path(__file__).resolve().parents[1]
MODEL_JSON = ROOT / "data/models/clipkit-demo.json"
CHECKPOINT = ROOT / "data/models/clipkit-demo.safetensors"
DEMO_CONFIG = ROOT / "configs/demo.yaml"
LABELS = [EXERCISES[k] for k in MAIN_CLASSES]
EVAL_SEED = 31337  # any seed: training draws from a different stream


@pytest.fixture(scope="module")
def demo_cfg():
    from toolkit.config import load_config

    cfg = load_config(DEMO_CONFIG, {"model.device": "cpu", "model.num_workers": 0})
    return cfg


@pytest.fixture(scope="module")
def demo_head(demo_cfg):
    from toolkit.encoder.features import FeatureExtractor
    from toolkit.heads.prompts import load_templates
    from toolkit.heads.zeroshot import ZeroShotHead

    extractor = FeatureExtractor.from_config(demo_cfg.model)
    return extractor, ZeroShotHead.from_extractor(extractor, LABELS, load_templates(demo_cfg.prompts.templates))


def test_checkpoint_is_small_fp16_and_loads_strictly_with_open_clip():
    import open_clip
    from safetensors.torch import load_file

    assert CHECKPOINT.stat().st_size < 20 * 2**20
    state = load_file(str(CHECKPOINT))
    assert {v.dtype for v in state.values()} == {__import__("torch").float16}
    open_clip.add_model_config(MODEL_JSON)
    model, _, preprocess = open_clip.create_model_and_transforms("clipkit-demo", pretrained=str(CHECKPOINT))
    assert set(state) == set(model.state_dict())  # nothing missing, nothing extra (strict load)
    assert json.loads(MODEL_JSON.read_text())["vision_cfg"]["layers"] == [1, 1, 1, 1]


def test_demo_config_points_at_the_shipped_model(demo_cfg):
    from toolkit.heads.prompts import resolve_labels

    assert Path(demo_cfg.model.name) == MODEL_JSON.resolve()
    assert Path(demo_cfg.model.pretrained) == CHECKPOINT.resolve()
    assert resolve_labels(demo_cfg.prompts) == LABELS


@pytest.mark.parametrize("key", MAIN_CLASSES)
def test_a_generated_image_is_recognised(demo_head, key):
    extractor, head = demo_head
    images = [render_example(key, example_rng(EVAL_SEED, list(EXERCISES).index(key), i), 224)[0]
              for i in range(5)]  # fmt: skip
    predicted = head.predict(extractor.encode_images(images))
    assert predicted.count(EXERCISES[key]) >= 4, predicted


def test_four_class_accuracy_on_fifty_images(demo_head):
    extractor, head = demo_head
    keys = [MAIN_CLASSES[i % 4] for i in range(52)]
    images = [render_example(k, example_rng(EVAL_SEED + 1, list(EXERCISES).index(k), i), 224)[0]
              for i, k in enumerate(keys)]  # fmt: skip
    proba = head.predict_proba(extractor.encode_images(images))
    assert proba.shape == (52, 4) and np.allclose(proba.sum(axis=1), 1, atol=1e-5)
    accuracy = np.mean([head.classes_[j] == EXERCISES[k] for j, k in zip(proba.argmax(axis=1), keys)])
    assert accuracy > 0.8


def test_text_tower_ranks_paraphrases_with_their_pose(demo_head):
    extractor, _ = demo_head
    squat, jack = render_example("squat", example_rng(EVAL_SEED, 1, 0), 224)[0], \
        render_example("jumping_jack", example_rng(EVAL_SEED, 2, 0), 224)[0]
    img = extractor.encode_images([squat, jack])
    txt = extractor.encode_texts(["a woman doing squats", "someone doing jumping jacks"])
    sim = img @ txt.T
    assert sim[0, 0] > sim[0, 1] and sim[1, 1] > sim[1, 0]


def test_make_demo_predicts_the_shipped_samples():
    from toolkit.cli import main

    samples = ROOT / "data/samples"
    result = CliRunner().invoke(main, ["predict", "--config", str(DEMO_CONFIG), "--device", "cpu",
                                       "--format", "json", "--no-progress", str(samples)])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    predicted = {Path(r["path"]).stem: r["label"] for r in doc["results"]}
    assert predicted == {k: EXERCISES[k] for k in MAIN_CLASSES}
