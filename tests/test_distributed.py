"""`clipkit extract --devices 2`: two CPU processes (Lightning DDP, gloo) fill one store, equal to one process's."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from toolkit.config import ModelConfig
from toolkit.data.datasets import load_dataset
from toolkit.encoder.features import FeatureExtractor
from toolkit.data.store import FeatureStore
from toolkit.data.extraction import extract_store

CLIPKIT = str(Path(sys.executable).parent / "clipkit")


@pytest.fixture()
def labelled_dir(tmp_path) -> Path:
    """2 classes x 7 JPEGs plus one corrupt file: 4 store batches of 4 rows, one of them holding the failure."""
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(7):
            Image.fromarray((rng.random((40, 50, 3)) * 255).astype("uint8")).save(tmp_path / "data" / c / f"{i}.jpg")
    (tmp_path / "data" / "a" / "bad.jpg").write_bytes(b"not a jpeg")
    return tmp_path / "data"


@pytest.mark.slow
def test_two_process_ddp_extraction_equals_single_process(tiny_model, labelled_dir, tmp_path):
    model = ["--model", tiny_model["config"], "--pretrained", tiny_model["checkpoint"], "--device", "cpu",
             "--batch-size", "4", "--seed", "0", "--no-progress"]
    ex = FeatureExtractor.from_config(ModelConfig(name=tiny_model["config"], pretrained=tiny_model["checkpoint"],
                                                  device="cpu", batch_size=4, num_workers=0))
    single = extract_store(ex, load_dataset(str(labelled_dir), 0, 0.15, 0.15), tmp_path / "single")

    run = subprocess.run([CLIPKIT, "extract", str(labelled_dir), "--out", str(tmp_path / "ddp"), *model,
                          "--devices", "2", "--strategy", "ddp"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("store ") == 1  # only global rank 0 reports
    ddp = FeatureStore.open(tmp_path / "ddp")
    assert ddp.meta["extraction"] == {"devices": 2, "num_nodes": 1, "strategy": "ddp", "world_size": 2}

    assert (tmp_path / "ddp" / "index.csv").read_text() == (tmp_path / "single" / "index.csv").read_text()
    assert ddp.meta["skipped"] == single.meta["skipped"] and len(ddp.meta["skipped"]) == 1
    assert ddp.meta["identity"] == single.meta["identity"]
    # each process runs torch with 1 thread instead of 2: float32 sums may round differently in the last bit
    np.testing.assert_allclose(np.asarray(ddp.features), np.asarray(single.features), rtol=0, atol=1e-6)
    assert not (tmp_path / "ddp" / "progress").exists() and not (tmp_path / "ddp" / "extract.json").exists()

    again = subprocess.run([CLIPKIT, "extract", str(labelled_dir), "--out", str(tmp_path / "ddp"), *model,
                            "--devices", "2"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "reused" in again.stdout, again.stderr[-2000:]
    assert json.loads((tmp_path / "ddp" / "meta.json").read_text())["created"] == ddp.meta["created"]
