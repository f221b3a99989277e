"""`clipkit extract`, `clipkit train-probe` and `clipkit predict --head` through CliRunner, on a tiny real model."""
from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from toolkit.cli import main


def _model_args(model: dict) -> list[str]:
    return ["--model", model["config"], "--pretrained", model["checkpoint"], "--device", "cpu"]


@pytest.fixture(scope="module")
def other_model(tiny_model, tmp_path_factory):
    """The same tiny architecture with other weights: its features are not the tiny model's."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(1)
    model = open_clip.create_model("tiny-rn", pretrained=None)
    ckpt = tmp_path_factory.mktemp("other") / "tiny-rn-other.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    return {"config": tiny_model["config"], "checkpoint": str(ckpt)}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Three classes of 8 images each: a dominant colour per class plus noise."""
    root = tmp_path_factory.mktemp("ds") / "colours"
    rng = np.random.default_rng(0)
    for c, rgb in {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}.items():
        (root / c).mkdir(parents=True)
        for i in range(8):
            arr = np.clip(np.array(rgb) + rng.normal(0, 40, (24, 24, 3)), 0, 255).astype("uint8")
            Image.fromarray(arr).save(root / c / f"{i}.png")
    return root


@pytest.fixture()
def run(tiny_model):
    def _run(*args, model=None):
        r = CliRunner().invoke(main, [*args, *_model_args(model or tiny_model)], catch_exceptions=False)
        return r
    return _run


@pytest.fixture(scope="module")
def trained(tiny_model, dataset, tmp_path_factory):
    """A store and a head trained on it with the tiny model (module-scoped: training once is enough)."""
    tmp = tmp_path_factory.mktemp("trained")
    args = ["train-probe", str(dataset), "--out", str(tmp / "head"), "--store", str(tmp / "store"), "--no-track",
            "--templates", "none", *_model_args(tiny_model)]
    r = CliRunner().invoke(main, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return {"head": tmp / "head", "store": tmp / "store", "output": r.stdout, "stderr": r.stderr}


def test_extract_creates_then_reuses_a_store(run, dataset, tmp_path):
    r = run("extract", str(dataset), "--out", str(tmp_path / "st"), "--seed", "3")
    assert r.exit_code == 0, r.output
    assert "24 x 32, extracted" in r.stdout and "red (8)" in r.stdout
    meta = json.loads((tmp_path / "st" / "meta.json").read_text())
    assert meta["count"] == 24 and meta["identity"]["model"] == "tiny-rn"
    again = run("extract", str(dataset), "--out", str(tmp_path / "st"), "--seed", "3")
    assert again.exit_code == 0 and "reused" in again.stdout


def test_train_probe_writes_head_report_and_summary(trained):
    head, out = trained["head"], trained["output"]
    assert {p.name for p in head.iterdir()} == {"head.json", "head.safetensors", "report"}
    doc = json.loads((head / "head.json").read_text())
    assert doc["classes"] == ["blue", "green", "red"] and doc["method"] == "logreg" and doc["params"]["C"] > 0
    assert doc["identity"]["pretrained"] == "tiny-rn.safetensors"
    assert {"test_accuracy", "zeroshot_test_accuracy", "gain_over_zeroshot"} <= set(doc["metrics"])
    for name in ("report.json", "confusion_matrix.png", "zeroshot_confusion_matrix.png", "sweep.png"):
        assert (head / "report" / name).is_file()
    assert "zero-shot" in out and "probe" in out and "accuracy points over zero-shot" in out
    report = json.loads((head / "report" / "report.json").read_text())
    gain = 100 * (report["metrics"]["test"]["accuracy"] - report["metrics"]["zeroshot_test"]["accuracy"])
    assert f"{gain:+.1f} accuracy points" in out
    # 24 images: val is a handful, and everything was chosen on it: said, on stderr
    assert f"warning: the val split has only {doc['params']['n_val']} images" in trained["stderr"]


def test_predict_with_head_in_every_format(run, trained, dataset):
    r = run("predict", "--head", str(trained["head"]), str(dataset / "red"), "--format", "json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["mode"] == "probe" and doc["labels"] == ["blue", "green", "red"] and len(doc["results"]) == 8
    for res in doc["results"]:
        assert set(res["scores"]) == {"blue", "green", "red"} and abs(sum(res["scores"].values()) - 1) < 1e-5
    r = run("predict", "--head", str(trained["head"]), str(dataset / "red" / "0.png"), "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert r.exit_code == 0 and list(rows[0])[:6] == ["path", "label", "score", "rejected", "error", "reason"] and list(rows[0])[6:] == ["blue", "green", "red"]
    r = run("predict", "--head", str(trained["head"]), str(dataset / "red" / "0.png"))
    assert r.exit_code == 0 and r.stdout.splitlines()[1].split()[1] in {"blue", "green", "red"}


def test_head_is_refused_with_another_model(run, trained, dataset, other_model):
    r = run("predict", "--head", str(trained["head"]), str(dataset / "red" / "0.png"), model=other_model)
    assert r.exit_code == 3
    assert "error: head was trained on features of tiny-rn / tiny-rn.safetensors" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_store_is_refused_with_another_model(run, trained, tmp_path, other_model):
    r = run("train-probe", str(trained["store"]), "--out", str(tmp_path / "h"), "--no-track", model=other_model)
    assert r.exit_code == 2 and "holds features of tiny-rn / tiny-rn.safetensors" in r.stderr


def test_train_probe_from_a_store_fewshot(run, trained, tmp_path):
    r = run("train-probe", str(trained["store"]), "--out", str(tmp_path / "h"), "--no-track", "--fewshot", "2",
            "--c-grid", "0.1,1,10", "--templates", "none")
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "h" / "head.json").read_text())
    assert doc["params"]["n_train"] == 6 and doc["params"]["fewshot"] == 2 and doc["params"]["refit"] == "none"
    assert "2 shots per class" in r.stdout


@pytest.mark.parametrize("corrupt", ["missing", "json", "weights"])
def test_missing_or_corrupt_head_is_a_one_line_error(run, trained, dataset, tmp_path, corrupt):
    import shutil

    head = tmp_path / "head"
    if corrupt != "missing":
        shutil.copytree(trained["head"], head)
        target = head / ("head.json" if corrupt == "json" else "head.safetensors")
        target.write_bytes(target.read_bytes()[: len(target.read_bytes()) // 2])
    r = run("predict", "--head", str(head), str(dataset / "red" / "0.png"))
    assert r.exit_code == 3 and r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
    assert ("not found" if corrupt == "missing" else "corrupt") in r.stderr


@pytest.mark.parametrize("layout, message", [("empty", "is empty"), ("one", "only one class")])
def test_unusable_datasets_fail_before_loading_the_model(run, tmp_path, layout, message):
    root = tmp_path / "ds"
    (root / "only").mkdir(parents=True)
    if layout == "one":
        for i in range(4):
            Image.new("RGB", (8, 8), (i, 0, 0)).save(root / "only" / f"{i}.png")
    else:
        (root / "only").rmdir()
    for cmd in ("extract", "train-probe"):
        r = run(cmd, str(root), "--out", str(tmp_path / "o"), "--no-track") if cmd == "train-probe" \
            else run(cmd, str(root), "--out", str(tmp_path / "o"))
        assert r.exit_code == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_bad_c_grid_and_zeroshot_init_with_logreg(run, trained, tmp_path):
    r = run("train-probe", str(trained["store"]), "--out", str(tmp_path / "h"), "--no-track", "--c-grid", "a,b")
    assert r.exit_code == 2 and "--c-grid 'a,b'" in r.stderr
    r = run("train-probe", str(trained["store"]), "--out", str(tmp_path / "h"), "--no-track", "--init", "zeroshot")
    assert r.exit_code == 2 and "--method linear" in r.stderr


@pytest.mark.slow
def test_linear_method_with_zeroshot_init(run, trained, tmp_path):
    r = run("train-probe", str(trained["store"]), "--out", str(tmp_path / "h"), "--no-track", "--method", "linear",
            "--init", "zeroshot", "--templates", "none")
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "h" / "head.json").read_text())
    assert doc["method"] == "linear" and doc["params"]["init"] == "zeroshot" and "weight_decay" in doc["params"]
