"""Damaged feature stores get one line, not a traceback: meta.json checked against its schema, features checked
finite and unit-norm before training, a sha256 of features.npy checked before `extract` reuses a store, and a
lock file that refuses a second concurrent writer (real `clipkit extract` subprocesses where it matters)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from test_data import make_folder
from toolkit.cli import main
from toolkit.data.datasets import load_dataset
from toolkit.errors import DataError
from toolkit.data.extraction import extract_store, writing
from toolkit.data.store import LOCK, FeatureStore, features_sha256, write_store

CLIPKIT = str(Path(sys.executable).with_name("clipkit"))
IDENTITY = {"model": "synthetic", "pretrained": None, "embed_dim": 8, "image_size": [32, 32]}


def _unit_rows(n: int, d: int = 8, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture()
def synthetic(tmp_path) -> FeatureStore:
    """A complete 12-row store written from arrays (no model)."""
    labels = ["a", "b", "c"] * 4
    splits = ["train"] * 6 + ["val"] * 3 + ["test"] * 3
    return write_store(tmp_path / "st", _unit_rows(12), labels, splits, IDENTITY)


def _meta(store_dir: Path) -> dict:
    return json.loads((store_dir / "meta.json").read_text())


def _set_meta(store_dir: Path, doc) -> None:
    (store_dir / "meta.json").write_text(json.dumps(doc))


def _damage(store_dir: Path, rows: slice, value) -> None:
    feats = np.load(store_dir / "features.npy", mmap_mode="r+")
    feats[rows] = value
    feats.flush()
    del feats


# ---------------------------------------------------------------- meta.json schema

@pytest.mark.parametrize("doc, fragment", [
    ([1, 2, 3], "holds a list, not an object"),
    ("a string", "holds a str, not an object"),
])
def test_meta_that_is_not_an_object_is_one_line(synthetic, doc, fragment):
    _set_meta(synthetic.path, doc)
    with pytest.raises(DataError, match=fragment) as e:
        FeatureStore.open(synthetic.path)
    assert str(synthetic.path) in e.value.message and "\n" not in e.value.message


@pytest.mark.parametrize("key, value, fragment", [
    ("count", "12", "'count' should be int, got str"),
    ("count", True, "'count' should be int, got bool"),
    ("dim", None, "'dim' should be int, got NoneType"),
    ("identity", ["model"], "'identity' should be dict, got list"),
    ("classes", "abc", "'classes' should be list, got str"),
    ("skipped", {}, "'skipped' should be list, got dict"),
    ("features_sha256", 5, "'features_sha256' should be str, got int"),
    ("format", "something-else", "is not a clipkit feature store"),
])
def test_meta_key_of_the_wrong_type_is_named(synthetic, key, value, fragment):
    doc = _meta(synthetic.path)
    doc[key] = value
    _set_meta(synthetic.path, doc)
    with pytest.raises(DataError, match=fragment) as e:
        FeatureStore.open(synthetic.path)
    assert "\n" not in e.value.message and "extract again" in e.value.message


def test_meta_missing_a_required_key_is_named(synthetic):
    doc = _meta(synthetic.path)
    del doc["identity"]
    _set_meta(synthetic.path, doc)
    with pytest.raises(DataError, match="key 'identity' is missing"):
        FeatureStore.open(synthetic.path)


def test_classes_must_be_strings(synthetic):
    doc = _meta(synthetic.path)
    doc["classes"] = ["a", 2, "c"]
    _set_meta(synthetic.path, doc)
    with pytest.raises(DataError, match="'classes' should list strings"):
        FeatureStore.open(synthetic.path)


# ---------------------------------------------------------------- rows finite and unit-norm

def test_intact_rows_pass(synthetic):
    synthetic.check_rows()
    synthetic.check_rows(chunk=5)  # chunk boundaries don't matter


@pytest.mark.parametrize("rows, value, n_bad, first", [
    (slice(None), np.nan, 12, 0),               # features.npy full of NaN
    (slice(7, 9), np.inf, 2, 7),                # a couple of infinite rows
    (slice(4, 5), 3.0, 1, 4),                   # finite garbage: the right size, the wrong length
    (slice(10, 12), 0.0, 2, 10),                # zero rows
])
def test_damaged_rows_are_counted_and_named(synthetic, rows, value, n_bad, first):
    _damage(synthetic.path, rows, value)
    store = FeatureStore.open(synthetic.path)  # opening stays cheap: rows are checked on demand
    with pytest.raises(DataError) as e:
        store.check_rows(chunk=5)
    msg = e.value.message
    assert f"has {n_bad} of 12 row(s)" in msg and f"first: row {first}" in msg
    assert str(synthetic.path) in msg and "extract again" in msg and "\n" not in msg


def test_garbage_of_the_right_size_is_caught(synthetic):
    """Random finite values, not normalized: each row's length is far from 1."""
    _damage(synthetic.path, slice(None), np.random.default_rng(1).normal(size=(12, 8)).astype(np.float32))
    with pytest.raises(DataError, match="has 12 of 12 row"):
        FeatureStore.open(synthetic.path).check_rows()


# ---------------------------------------------------------------- checksum

def test_checksum_is_recorded_and_matches(synthetic):
    assert synthetic.meta["features_sha256"] == features_sha256(synthetic.path / "features.npy")
    assert synthetic.checksum_mismatch() is None
    _damage(synthetic.path, slice(0, 1), _unit_rows(1, seed=5))  # still unit-norm: only the checksum can tell
    assert "differs from meta.json" in FeatureStore.open(synthetic.path).checksum_mismatch()


def test_old_store_without_checksum_still_opens(synthetic):
    doc = _meta(synthetic.path)
    del doc["features_sha256"]
    _set_meta(synthetic.path, doc)
    store = FeatureStore.open(synthetic.path)
    assert store.checksum_mismatch() is None and len(store) == 12


@pytest.fixture()
def dataset(tmp_path):
    return load_dataset(make_folder(tmp_path / "ds", {"a": 6, "b": 6, "c": 6}), seed=0)


def test_extract_reextracts_a_store_whose_features_changed(tiny_extractor, dataset, tmp_path):
    out = tmp_path / "st"
    first = extract_store(tiny_extractor, dataset, out, batch_size=4)
    good = np.array(first.features)
    assert first.note is None
    _damage(out, slice(None), np.random.default_rng(2).normal(size=good.shape).astype(np.float32))
    again = extract_store(tiny_extractor, dataset, out, batch_size=4)
    assert not again.reused and "extracted again" in again.note and "sha256" in again.note
    np.testing.assert_allclose(again.features, good, atol=1e-6)
    again.check_rows()
    third = extract_store(tiny_extractor, dataset, out, batch_size=4)
    assert third.reused and third.note is None


def test_extract_reuses_an_old_store_without_checksum(tiny_extractor, dataset, tmp_path):
    out = tmp_path / "st"
    extract_store(tiny_extractor, dataset, out, batch_size=4)
    doc = _meta(out)
    del doc["features_sha256"]
    _set_meta(out, doc)
    assert extract_store(tiny_extractor, dataset, out, batch_size=4).reused


def test_extract_replaces_a_store_with_a_damaged_meta(tiny_extractor, dataset, tmp_path):
    out = tmp_path / "st"
    extract_store(tiny_extractor, dataset, out, batch_size=4)
    _set_meta(out, ["not", "an", "object"])
    again = extract_store(tiny_extractor, dataset, out, batch_size=4)
    assert not again.reused and "damaged" in again.note and again.meta["count"] == 18


# ---------------------------------------------------------------- CLI: one line, no traceback

@pytest.fixture(scope="module")
def colors(tmp_path_factory) -> Path:
    from tracking_fixtures import color_dataset

    return color_dataset(tmp_path_factory.mktemp("colors") / "colors")


def _model_args(tiny_model) -> list[str]:
    return ["--model", tiny_model["config"], "--pretrained", tiny_model["checkpoint"], "--device", "cpu"]


@pytest.mark.parametrize("command", ["train-probe", "eval-prompts"])
def test_cli_refuses_a_store_of_nan_in_one_line(tiny_model, colors, tmp_path, command):
    store = tmp_path / "st"
    res = CliRunner().invoke(main, ["extract", str(colors), "--out", str(store), *_model_args(tiny_model)])
    assert res.exit_code == 0, res.output
    _damage(store, slice(None), np.nan)
    extra = ["--out", str(tmp_path / "head")] if command == "train-probe" else []
    res = CliRunner().invoke(main, [command, str(store), *extra, *_model_args(tiny_model), "--no-track"])
    assert res.exit_code == 2, res.output
    assert res.output.count("\n") == 1 and "Traceback" not in res.output
    assert res.output.startswith(f"error: feature store '{store}' has 48 of 48 row(s)") and "extract again" in res.output
    assert not (tmp_path / "head").exists()


def test_cli_names_a_damaged_meta(tiny_model, synthetic, tmp_path):
    _set_meta(synthetic.path, 42)
    res = CliRunner().invoke(main, ["train-probe", str(synthetic.path), "--out", str(tmp_path / "h"),
                                    *_model_args(tiny_model), "--no-track"])
    assert res.exit_code == 2 and res.output.count("\n") == 1, res.output
    assert "has a damaged meta.json: it holds a int, not an object" in res.output


# ---------------------------------------------------------------- one writer at a time

def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_lock(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK).write_text(text)
    return folder / LOCK


def test_lock_is_held_while_writing_and_released_after(tmp_path):
    out = tmp_path / "st"
    with writing(out):
        assert (out / LOCK).read_text().split() == [str(os.getpid()), socket.gethostname()]
    assert not (out / LOCK).exists()
    with pytest.raises(RuntimeError), writing(out):
        raise RuntimeError("boom")
    assert not (out / LOCK).exists()


def test_lock_of_a_live_process_refuses_a_second_writer(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = _write_lock(tmp_path / "st", f"{sleeper.pid} {socket.gethostname()}\n")
        with pytest.raises(DataError) as e, writing(tmp_path / "st"):
            pass
        assert e.value.message == (f"store '{tmp_path / 'st'}' is being written by process {sleeper.pid}; wait for "
                                   f"it or remove {lock} if that process is gone")
        assert lock.exists()  # not ours to remove
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize("holder", ["dead", "self"])
def test_stale_lock_is_taken_over(tmp_path, holder):
    pid = _dead_pid() if holder == "dead" else os.getpid()  # own pid: left by an earlier process (a container)
    lock = _write_lock(tmp_path / "st", f"{pid} {socket.gethostname()}\n")
    with writing(tmp_path / "st"):
        assert lock.read_text().split()[0] == str(os.getpid())
    assert not lock.exists()


def test_lock_of_another_host_is_respected(tmp_path):
    _write_lock(tmp_path / "st", "12345 some-other-machine\n")
    with pytest.raises(DataError, match="process 12345 on some-other-machine"), writing(tmp_path / "st"):
        pass


def test_torn_lock_is_respected_while_young_then_taken_over(tmp_path):
    lock = _write_lock(tmp_path / "st", "")
    with pytest.raises(DataError, match="being written by process unknown"), writing(tmp_path / "st"):
        pass
    old = lock.stat().st_mtime - 60
    os.utime(lock, (old, old))
    with writing(tmp_path / "st"):
        pass


def test_second_extract_subprocess_is_refused_then_runs_once_the_writer_is_gone(tiny_model, colors, tmp_path):
    """A real `clipkit extract` into a folder held by a live process: one line naming it; once that process
    is gone, the same command takes the stale lock over and writes the store."""
    out = tmp_path / "st"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        _write_lock(out, f"{sleeper.pid} {socket.gethostname()}\n")
        cmd = [CLIPKIT, "extract", str(colors), "--out", str(out), *_model_args(tiny_model), "--no-progress"]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert run.returncode == 2, run.stderr
        errors = [ln for ln in run.stderr.splitlines() if ln.startswith("error:")]
        assert errors == [f"error: store '{out}' is being written by process {sleeper.pid}; wait for it or remove "
                          f"{out / LOCK} if that process is gone"], run.stderr
        assert "Traceback" not in run.stderr and not (out / "meta.json").exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    res = CliRunner().invoke(main, ["extract", str(colors), "--out", str(out), *_model_args(tiny_model)])
    assert res.exit_code == 0, res.output
    assert len(FeatureStore.open(out)) == 48 and not (out / LOCK).exists()
