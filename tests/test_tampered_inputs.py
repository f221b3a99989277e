"""Tampered head folders and absurd model configs get one line and the right exit code from a real `clipkit`
subprocess, before any model is built."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from toolkit.heads.base import load_head
from toolkit.errors import HeadError
from toolkit.heads.linear import LinearProbe

from conftest import TINY_CFG

CLIPKIT = str(Path(sys.executable).parent / "clipkit")
SAMPLE = str(Path(__file__).resolve().parents[1] / "data" / "samples" / "squat.png")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLIPKIT, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture()
def head_dir(tmp_path) -> Path:
    head = LinearProbe(["squat", "plank", "rest"], np.eye(3, 32, dtype=np.float32))
    return head.save(tmp_path / "head")


@pytest.mark.parametrize("tamper,fragment", [
    (lambda d: {**d, "classes": ["squat", "squat", "rest"]}, "appears twice"),
    (lambda d: {**d, "classes": "squat"}, "must be a list of strings"),
    (lambda d: {**d, "classes": [1, 2, 3]}, "non-empty strings"),
    (lambda d: {**d, "classes": ["squat", "plank"]}, "don't fit 2 classes"),
    (lambda d: {**d, "classes": ["squat", " ", "rest"]}, "non-empty strings"),
    (lambda d: [d], "not an object"),
    (lambda d: {**d, "type": "mystery"}, "unknown head type"),
])
def test_a_tampered_head_json_is_refused_in_one_line(head_dir, tamper, fragment):
    doc = json.loads((head_dir / "head.json").read_text())
    (head_dir / "head.json").write_text(json.dumps(tamper(doc)))
    with pytest.raises(HeadError, match=fragment):
        load_head(head_dir)
    res = _run("predict", SAMPLE, "--head", str(head_dir))
    assert res.returncode == 3, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: head folder") and fragment in lines[0]
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("section,key,value", [("text_cfg", "width", 131072), ("vision_cfg", "image_size", 100000),
                                               ("text_cfg", "layers", 1000000)])
def test_an_absurd_model_config_is_refused_by_the_cli(tmp_path, section, key, value):
    """Sizes past this machine's memory (24 GiB here; a text width of 131072 is ~200 GB of weights)."""
    cfg = json.loads(json.dumps(TINY_CFG))
    cfg[section][key] = value
    path = tmp_path / "absurd.json"
    path.write_text(json.dumps(cfg))
    res = _run("predict", SAMPLE, "--model", str(path), "--pretrained", "none", "--device", "cpu")
    assert res.returncode == 3, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{section}.{key}" in lines[0] and "Traceback" not in res.stderr
