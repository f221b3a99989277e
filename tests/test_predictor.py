"""Predictor, the narrow waist: proba, identity, result rows and documents, the serving head resolver, and
the rule that nothing on the prediction path imports MLflow."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from toolkit.config import load_config
from toolkit.errors import ConfigError, HeadError
from toolkit.predictor import Predictor, build_predictor, image_document, result_row, serving_head
from toolkit.heads.linear import LinearProbe
from toolkit.heads.zeroshot import ZeroShotHead

LABELS = ["a red square", "a green square", "a blue square"]


@pytest.fixture(scope="module")
def zs_predictor(tiny_extractor):
    return Predictor(tiny_extractor, ZeroShotHead.from_extractor(tiny_extractor, LABELS, ["{}"]))


@pytest.fixture(scope="module")
def feats(tiny_extractor):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, tiny_extractor.embed_dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_proba_gives_the_heads_classes_and_rows_that_sum_to_one(zs_predictor, feats):
    classes, probs = zs_predictor.proba(feats)
    assert classes == LABELS and probs.shape == (5, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(probs, zs_predictor.head.predict_proba(feats), atol=1e-7)
    assert zs_predictor.identity == zs_predictor.extractor.identity


def test_proba_with_other_labels_builds_and_caches_a_zero_shot_head(zs_predictor, feats):
    classes, probs = zs_predictor.proba(feats, ["a cat", "a dog"])
    assert classes == ["a cat", "a dog"] and probs.shape == (5, 2)
    assert zs_predictor.head_for(["a cat", "a dog"]) is zs_predictor.head_for(["a cat", "a dog"])
    with pytest.raises(ConfigError, match="duplicate"):
        zs_predictor.proba(feats, ["a cat", "A CAT"])


def test_proba_of_no_features_is_an_empty_table(zs_predictor, tiny_extractor):
    classes, probs = zs_predictor.proba(np.zeros((0, tiny_extractor.embed_dim), np.float32))
    assert classes == LABELS and probs.shape == (0, 3)


def test_a_probe_predictor_has_fixed_classes(tiny_extractor, feats):
    rng = np.random.default_rng(0)
    head = LinearProbe(["x", "y"], rng.normal(size=(2, tiny_extractor.embed_dim)), identity=tiny_extractor.identity)
    p = Predictor(tiny_extractor, head)
    assert p.mode == "probe" and p.proba(feats)[0] == ["x", "y"]
    with pytest.raises(ConfigError, match="only work in zero-shot mode"):
        p.proba(feats, ["a", "b"])


def test_a_head_of_another_extractor_is_refused(tiny_extractor):
    from dataclasses import replace

    other = replace(tiny_extractor.identity, model="another-model")
    head = LinearProbe(["x", "y"], np.ones((2, tiny_extractor.embed_dim)), identity=other)
    with pytest.raises(HeadError, match="another-model"):
        Predictor(tiny_extractor, head)


def test_result_rows_and_the_image_document(zs_predictor, feats):
    row = result_row(["a", "b", "c"], np.array([0.2, 0.5, 0.3]), top_k=2)
    assert row["label"] == "b" and row["score"] == 0.5 and list(row["scores"]) == ["a", "b", "c"]
    assert [t["label"] for t in row["top_k"]] == ["b", "c"]
    rows = zs_predictor.predict_features(feats, top_k=1)
    doc = image_document(zs_predictor, rows)
    assert set(doc) == {"model", "pretrained", "mode", "labels", "reject_below", "unfamiliar", "results"}
    assert doc["reject_below"] is None and not any(r["rejected"] for r in rows)
    assert doc["labels"] == LABELS and doc["mode"] == "zeroshot" and len(doc["results"]) == 5
    assert image_document(zs_predictor, [], ["a cat", "a dog"])["labels"] == ["a cat", "a dog"]


def test_build_predictor_takes_a_loaded_head_or_a_local_folder(tiny_model, tiny_extractor, tmp_path, feats):
    head = LinearProbe(["x", "y"], np.eye(2, tiny_extractor.embed_dim), identity=tiny_extractor.identity)
    folder = head.save(tmp_path / "head")
    cfg = load_config(None, {"model.name": tiny_model["config"], "model.pretrained": tiny_model["checkpoint"]})
    for given in (head, folder, str(folder)):
        p = build_predictor(cfg, head=given, extractor=tiny_extractor)
        np.testing.assert_allclose(p.proba(feats)[1], head.predict_proba(feats), atol=1e-6)


def test_build_predictor_refuses_an_mlflow_uri(tiny_model, tiny_extractor):
    """URIs are resolved at the edges (tracking.fetch_head); the centre only takes folders."""
    cfg = load_config(None, {"model.name": tiny_model["config"], "model.pretrained": tiny_model["checkpoint"]})
    with pytest.raises(ValueError, match="fetch_head"):
        build_predictor(cfg, head="runs:/abc/head", extractor=tiny_extractor)


@pytest.mark.parametrize("serve,head,mode,expected", [
    ({}, None, None, None),
    ({}, "h", None, "h"),
    ({"serve.mode": "probe", "serve.head": "cfg-head"}, None, None, "cfg-head"),
    ({"serve.mode": "probe", "serve.head": "cfg-head"}, "flag-head", None, "flag-head"),
    ({"serve.head": "cfg-head"}, None, None, None),  # zero-shot mode: the configured head is not served
    ({"serve.mode": "probe", "serve.head": "cfg-head"}, None, "zeroshot", None),
])
def test_serving_head(serve, head, mode, expected):
    assert serving_head(load_config(None, serve), head, mode) == expected


def test_serving_head_conflicts():
    with pytest.raises(ConfigError, match="conflicts"):
        serving_head(load_config(None), "h", "zeroshot")
    with pytest.raises(ConfigError, match="needs a head"):
        serving_head(load_config(None, {"serve.mode": "probe"}))


PREDICTION_MODULES = ["toolkit.predictor", "toolkit.encoder.features", "toolkit.video.pipeline", "toolkit.heads.zeroshot",
                      "toolkit.fitting.probe", "toolkit.heads.base", "toolkit.serve", "toolkit.serve.app",
                      "toolkit.serve.routes_predict", "toolkit.serve.routes_video", "toolkit.serve.deps",
                      "toolkit.serve.batcher", "toolkit.serve.server", "toolkit.serve.middleware"]


def test_prediction_modules_do_not_import_mlflow():
    code = ("import importlib, sys\n"
            f"for m in {PREDICTION_MODULES!r}: importlib.import_module(m)\n"
            "print('mlflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_the_video_path_does_not_import_mlflow(tiny_model, tmp_path):
    from toolkit.demo.video import write_video

    clip = tmp_path / "clip.mp4"
    write_video(clip, [("standing", 0.5), ("squat", 1, 1.0)], seed=1, size=(48, 48), fps=8)
    code = ("import sys, json\n"
            "from toolkit.config import load_config\n"
            "from toolkit.predictor import build_predictor\n"
            "from toolkit.video.pipeline import predict_video\n"
            f"cfg = load_config(None, {{'model.name': {tiny_model['config']!r}, "
            f"'model.pretrained': {tiny_model['checkpoint']!r}, 'model.device': 'cpu'}})\n"
            f"doc = predict_video(build_predictor(cfg), {str(clip)!r}, cfg.video)\n"
            "print(json.dumps([len(doc['frames']), 'mlflow' in sys.modules, 'lightning' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    n_frames, mlflow_in, lightning_in = json.loads(out.strip().splitlines()[-1])
    assert n_frames > 0 and not mlflow_in and not lightning_in
