"""`clipkit embed`: a feature store of unlabelled images (flat folders, single files, globs), reused when
unchanged; and classifying a store's rows without encoding again (`predictor.predict_store`)."""
from __future__ import annotations

import csv
import json

import numpy as np
from click.testing import CliRunner

from toolkit.cli import main
from toolkit.predictor import Predictor, predict_store
from toolkit.data.store import FeatureStore
from toolkit.heads.zeroshot import ZeroShotHead


def _args(tiny_model):
    return ["--model", tiny_model["config"], "--pretrained", tiny_model["checkpoint"], "--device", "cpu",
            "--precision", "fp32", "--batch-size", "4", "--no-progress"]


def test_embed_a_flat_folder_and_a_single_file(tiny_model, tiny_extractor, image_dir, tmp_path):
    (image_dir / "notes.txt").write_text("not an image")
    out = tmp_path / "emb"
    res = CliRunner().invoke(main, ["embed", str(image_dir), "--out", str(out), *_args(tiny_model)])
    assert res.exit_code == 0, res.output
    assert "skipped 1 file that is not an image (.txt)" in res.stderr and "written" in res.stdout
    store = FeatureStore.open(out)
    paths = sorted(str(p) for p in image_dir.rglob("img*"))
    assert sorted(store.paths) == paths and store.classes == []
    with open(out / "index.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["label"] for r in rows} == {""} and {r["split"] for r in rows} == {""}
    feats, _ = tiny_extractor.encode_paths(list(store.paths))
    np.testing.assert_allclose(np.asarray(store.features), feats, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(store.features, axis=1), 1.0, atol=1e-5)
    again = CliRunner().invoke(main, ["embed", str(image_dir), "--out", str(out), *_args(tiny_model)])
    assert again.exit_code == 0 and "reused" in again.stdout
    one = CliRunner().invoke(main, ["embed", paths[0], "--out", str(tmp_path / "one"), *_args(tiny_model)])
    assert one.exit_code == 0, one.output
    assert len(FeatureStore.open(tmp_path / "one")) == 1


def test_a_store_classifies_like_its_images(tiny_model, tiny_extractor, image_dir, tmp_path):
    out = tmp_path / "emb"
    assert CliRunner().invoke(main, ["embed", str(image_dir), "--out", str(out), *_args(tiny_model)]).exit_code == 0
    store = FeatureStore.open(out)
    p = Predictor(tiny_extractor, ZeroShotHead.from_extractor(tiny_extractor, ["a red square", "a blue sky"], ["{}"]))
    from_store = list(predict_store(p, store, chunk=4))  # several chunks
    from_images = p.predict_paths(list(store.paths))
    assert [r["path"] for r in from_store] == [r["path"] for r in from_images]
    for a, b in zip(from_store, from_images):
        assert a["label"] == b["label"]
        assert json.dumps(sorted(a["scores"])) == json.dumps(sorted(b["scores"]))
        np.testing.assert_allclose(list(a["scores"].values()), list(b["scores"].values()), atol=1e-5)


def test_predict_store_streams_the_same_results_as_the_images(tiny_model, tiny_extractor, image_dir, tmp_path,
                                                             other_tiny_config):
    out = tmp_path / "emb"
    assert CliRunner().invoke(main, ["embed", str(image_dir), "--out", str(out), *_args(tiny_model)]).exit_code == 0
    labels = ["--label", "a red square", "--label", "a blue sky"]
    # no model flags: the store's own model is built
    res = CliRunner().invoke(main, ["predict", "--store", str(out), *labels, "--precision", "fp32", "--format", "json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    store = FeatureStore.open(out)
    imgs = CliRunner().invoke(main, ["predict", *store.paths, *labels, *_args(tiny_model), "--format", "json"])
    ref = json.loads(imgs.stdout)
    assert doc["store"] == str(out) and doc["labels"] == ref["labels"] and doc["mode"] == "zeroshot"
    assert [r["path"] for r in doc["results"]] == [r["path"] for r in ref["results"]]
    assert [r["label"] for r in doc["results"]] == [r["label"] for r in ref["results"]]
    csv_out = CliRunner().invoke(main, ["predict", "--store", str(out), *labels, "--format", "csv"])
    rows = list(csv.DictReader(csv_out.stdout.splitlines()))
    assert csv_out.exit_code == 0 and [r["path"] for r in rows] == list(store.paths)
    table = CliRunner().invoke(main, ["predict", "--store", str(out), *labels])
    assert table.exit_code == 0 and len(table.stdout.strip().splitlines()) == len(store) + 1
    # a model that isn't the store's is refused; neither paths nor --store is a usage error
    other = CliRunner().invoke(main, ["predict", "--store", str(out), *labels, "--model", other_tiny_config,
                                      "--pretrained", "none", "--device", "cpu"])
    assert other.exit_code == 2 and "holds features of tiny-rn" in other.output
    assert CliRunner().invoke(main, ["predict"]).exit_code == 2
