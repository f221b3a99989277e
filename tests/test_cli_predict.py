"""`clipkit predict` and `clipkit models` through click's CliRunner, on a tiny real model."""
import csv
import io
import json
import shutil

import pytest
from click.testing import CliRunner

from toolkit.cli import main


@pytest.fixture()
def run(tiny_model):
    def _run(*args, model=True):
        extra = ["--model", tiny_model["config"], "--pretrained", tiny_model["checkpoint"], "--device", "cpu"] \
            if model else []
        return CliRunner().invoke(main, [*args, *extra], catch_exceptions=False)
    return _run


def test_json_output_shape(run, image_dir):
    r = run("predict", str(image_dir), "--format", "json", "--top-k", "2")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["mode"] == "zeroshot" and doc["model"] == "tiny-rn" and doc["pretrained"] == "tiny-rn.safetensors"
    assert len(doc["labels"]) == 4
    assert len(doc["results"]) == 6  # folders are searched recursively
    for res in doc["results"]:
        assert set(res) >= {"path", "label", "score", "scores"}
        assert abs(sum(res["scores"].values()) - 1) < 1e-5
        assert res["label"] == max(res["scores"], key=res["scores"].get)
        assert len(res["top_k"]) == 2


def test_glob_and_labels_flags(run, image_dir):
    r = run("predict", str(image_dir / "**" / "*.jpg"), "--label", "a cat", "--label", "a dog", "--format", "json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["labels"] == ["a cat", "a dog"]
    assert [p["path"].endswith(".jpg") for p in doc["results"]] == [True] * 3


def test_csv_output(run, image_dir, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("a red thing\na blue thing\na green thing\n")
    r = run("predict", str(image_dir), "--labels", str(labels), "--format", "csv")
    assert r.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert len(rows) == 6 and set(rows[0]) == {"path", "label", "score", "rejected", "error", "reason",
                                                "a red thing", "a blue thing", "a green thing"}
    # zero-shot on labels: no probability threshold, only the default out-of-set one (MCM), so a rejection is
    # always "unfamiliar" and an accepted row carries its label
    for row in rows:
        assert (row["rejected"], row["reason"]) in {("false", ""), ("true", "unfamiliar")}, row
        assert row["label"] in ({"a red thing", "a blue thing", "a green thing"} if row["rejected"] == "false"
                                else {""})


def test_table_output(run, image_dir):
    r = run("predict", str(image_dir / "img0.png"))
    assert r.exit_code == 0
    lines = r.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["path", "label", "score"] and "img0.png" in lines[1]


def test_corrupt_image_in_batch_gets_error_entry(run, image_dir):
    (image_dir / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    (image_dir / "notes.txt").write_text("hello")
    r = run("predict", str(image_dir), str(image_dir / "notes.txt"), "--format", "json")
    assert r.exit_code == 1
    doc = json.loads(r.stdout)
    errors = {res["path"].rsplit("/", 1)[-1]: res["error"] for res in doc["results"] if "error" in res}
    assert set(errors) == {"corrupt.jpg", "notes.txt"}
    assert sum("label" in res for res in doc["results"]) == 6  # the others were still classified
    assert "2 of 8 inputs failed" in r.stderr


def test_bad_inputs_exit_nonzero_with_one_line(run, tmp_path, image_dir):
    cases = [
        (("predict", str(tmp_path / "missing.png")), "does not exist", True),
        (("predict", str(tmp_path / "*.nothing")), "matches no files", True),
        (("predict", str(image_dir), "--model", "ViT-B-23"), "did you mean 'ViT-B-32'", False),
    ]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    cases.append((("predict", str(image_dir), "--labels", str(empty)), "no labels", True))
    dup = tmp_path / "dup.txt"
    dup.write_text("a\nb\na\n")
    cases.append((("predict", str(image_dir), "--labels", str(dup)), "duplicate label 'a'", True))
    (tmp_path / "emptydir").mkdir()
    cases.append((("predict", str(tmp_path / "emptydir")), "contains no images", True))
    for args, msg, with_model in cases:
        r = run(*args, model=with_model)
        assert r.exit_code in (2, 3), (args, r.output)
        assert msg in r.stderr, (args, r.stderr)
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ")
        assert r.stdout == ""


def test_config_file_and_flag_override(run, image_dir, tiny_model, tmp_path):
    cfg = tmp_path / "c.yaml"
    shutil.copy(tiny_model["config"], tmp_path / "m.json")
    shutil.copy(tiny_model["checkpoint"], tmp_path / "m.safetensors")
    cfg.write_text("model:\n  name: m.json\n  pretrained: m.safetensors\n  device: cpu\n"
                   "prompts:\n  labels: [a cat, a dog]\n  templates: none\n")
    r = run("predict", str(image_dir), "--config", str(cfg), "--format", "json", model=False)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["labels"] == ["a cat", "a dog"]
    r = run("predict", str(image_dir), "--config", str(cfg), "--label", "x", "--label", "y", "--format", "json",
            model=False)
    assert json.loads(r.stdout)["labels"] == ["x", "y"]
    cfg.write_text("model:\n  name: m.json\n  colour: red\n")
    r = run("predict", str(image_dir), "--config", str(cfg), model=False)
    assert r.exit_code == 2 and "unknown config key 'model.colour'" in r.stderr


def test_models_lists_architectures_and_tags():
    r = CliRunner().invoke(main, ["models", "--filter", "ViT-B-32"])
    assert r.exit_code == 0
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("ViT-B-32 "))
    assert "openai" in line and "laion2b_s34b_b79k" in line


def test_every_command_has_help():
    runner = CliRunner()
    r = runner.invoke(main, ["--help"])
    assert r.exit_code == 0
    for name, cmd in main.commands.items():
        h = runner.invoke(main, [name, "--help"])
        assert h.exit_code == 0 and len(cmd.help or "") > 40, name
