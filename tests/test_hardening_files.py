"""Files and names that break tools (issues 24 and 25): spreadsheet formulas in CSV cells, file names that are
not UTF-8 or hold CR/LF/commas/quotes, FIFOs among the inputs, a full disk during `extract`, a head file with a
huge unused tensor, feature stores of the wrong dtype, labels the model can't read whole, and locks where two
runs would collide. CLI cases run a real `clipkit` process."""
from __future__ import annotations

import csv
import io
import json
import os
import re
import resource
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from toolkit import fsio
from toolkit.cli import main
from toolkit.data.store import FeatureStore, write_store
from toolkit.errors import ConfigError, DataError, HeadError

CLIPKIT = str(Path(sys.executable).with_name("clipkit"))
PYTHON = sys.executable
IDENTITY = {"model": "synthetic", "pretrained": None, "embed_dim": 8, "image_size": [32, 32]}
BAD_BYTES = b"caf\xe9-\xff.png"  # latin-1, not UTF-8: Linux allows any bytes but / and NUL in a name


def _model_args(tiny_model) -> list[str]:
    return ["--model", tiny_model["config"], "--pretrained", tiny_model["checkpoint"], "--device", "cpu",
            "--precision", "fp32", "--no-progress"]


def _png(path: str | Path, seed: int) -> None:
    arr = (np.random.default_rng(seed).random((20, 24, 3)) * 255).astype("uint8")
    Image.fromarray(arr).save(path, format="PNG")


def _run(args: list, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    """A real clipkit process; stdout and stderr kept as bytes (their encoding is under test)."""
    return subprocess.run([CLIPKIT, *args], capture_output=True, timeout=timeout, **kw)


@pytest.fixture()
def hostile_folder(tmp_path) -> Path:
    """Images named like formulas, with CR / LF / comma / quote, one not UTF-8, and a symbolic link to a FIFO
    named like an image (opening it would wait forever for a writer)."""
    d = tmp_path / "hostile"
    d.mkdir()
    names = ['=HYPERLINK("evil","x").png', "line\rbreak.png", "new\nline.png", 'a,b "q".png', "plain.png"]
    for i, name in enumerate(names):
        _png(d / name, i)
    _png(os.fsdecode(os.path.join(os.fsencode(d), BAD_BYTES)), 9)
    os.mkfifo(tmp_path / "pipe")
    os.symlink(tmp_path / "pipe", d / "pipe.png")
    return d


# ---------------------------------------------------------------- CSV cells and names in output

def test_csv_safe_neutralises_formulas_but_not_numbers():
    cells = ["=1+1", "+cmd", "-2+3", "@SUM(A1)", "\tx", "\rx", "-0.25", "+3", "plain", 7, None]
    assert [fsio.csv_safe(c) for c in cells] == ["'=1+1", "'+cmd", "'-2+3", "'@SUM(A1)", "'\tx", "'\rx", "-0.25",
                                                 "+3", "plain", 7, None]
    assert fsio.printable(os.fsdecode(BAD_BYTES)) == "caf\\xe9-\\xff.png"
    assert fsio.printable("ok é") == "ok é"
    from toolkit.evaluation.metrics import confusion_csv

    text = confusion_csv([[1, 0], [0, 1]], ["=evil()", "-x"])
    assert next(csv.reader(io.StringIO(text))) == ["true\\predicted", "'=evil()", "'-x"]


@pytest.mark.slow
def test_predict_csv_and_json_are_valid_utf8_safe_and_absolute(tiny_model, hostile_folder, tmp_path):
    labels = ["--label", "=cmd|' /C calc'!A0", "--label", "a blue sky", "--label", "@red"]
    rel = os.path.relpath(hostile_folder, tmp_path)
    res = _run(["predict", rel, *labels, *_model_args(tiny_model), "--format", "csv", "--reject-below", "0"],
               cwd=tmp_path)
    assert res.returncode == 0, res.stderr.decode(errors="replace")[-2000:]
    rows = list(csv.reader(io.StringIO(res.stdout.decode("utf-8"), newline="")))  # strict: valid UTF-8
    assert rows[0] == ["path", "label", "score", "rejected", "error", "reason", "'=cmd|' /C calc'!A0", "a blue sky",
                       "'@red"]
    by_name = {Path(r[0]).name: r for r in rows[1:]}
    # the FIFO link was skipped, not opened; every other name came back whole, absolute, formulas neutralised
    assert len(rows) == 1 + 6 and "pipe.png" not in by_name
    assert all(Path(r[0]).is_absolute() for r in rows[1:])  # given relative, printed absolute
    assert "line\rbreak.png" in by_name and "new\nline.png" in by_name and 'a,b "q".png' in by_name
    assert '=HYPERLINK("evil","x").png' in by_name  # mid-path, behind a '/': harmless, kept as is
    assert "caf\\xe9-\\xff.png" in by_name
    assert {r[1] for r in rows[1:]} - {""} <= {"'=cmd|' /C calc'!A0", "a blue sky", "'@red"}  # "": rejected
    assert b"skipped 1 file" in res.stderr

    js = CliRunner().invoke(main, ["predict", str(hostile_folder), *labels, *_model_args(tiny_model),
                                   "--format", "json"])
    assert js.exit_code == 0, js.output
    doc = json.loads(js.stdout_bytes.decode("utf-8"))
    paths = [r["path"] for r in doc["results"]]
    assert all("\\ud" not in json.dumps(p) for p in paths)  # no lone surrogates
    assert str(hostile_folder / "caf\\xe9-\\xff.png") in paths
    assert doc["labels"] == ["=cmd|' /C calc'!A0", "a blue sky", "@red"]  # JSON: values as they are
    assert [list(r["scores"]) for r in doc["results"]] == [doc["labels"]] * 6  # one label order


def test_embed_keeps_hostile_names_and_predict_store_lines_up(tiny_model, hostile_folder, tmp_path):
    out = tmp_path / "emb"
    res = CliRunner().invoke(main, ["embed", str(hostile_folder), "--out", str(out), *_model_args(tiny_model)])
    assert res.exit_code == 0, res.output  # the symbolic link to a FIFO was skipped, not opened
    store = FeatureStore.open(out)  # CR, LF, commas, quotes and undecodable bytes round-trip the index
    names = sorted(os.fsencode(Path(p).name) for p in store.paths)
    assert names == sorted([BAD_BYTES] + [os.fsencode(n) for n in ['=HYPERLINK("evil","x").png',
                                                                   "line\rbreak.png", "new\nline.png",
                                                                   'a,b "q".png', "plain.png"]])
    assert all(os.path.isfile(p) for p in store.paths)  # the real names: the files can be opened again
    again = CliRunner().invoke(main, ["embed", str(hostile_folder), "--out", str(out), *_model_args(tiny_model)])
    assert again.exit_code == 0 and "reused" in again.stdout  # the fingerprint of bytes is stable
    pred = CliRunner().invoke(main, ["predict", "--store", str(out), "--label", "a", "--label", "b",
                                     "--format", "csv"])
    assert pred.exit_code == 0, pred.output
    rows = list(csv.DictReader(io.StringIO(pred.stdout, newline="")))
    assert [r["path"] for r in rows] == [fsio.printable(p) for p in store.paths]


# ---------------------------------------------------------------- inputs that are not files

def test_a_fifo_or_a_device_is_named_for_what_it_is(tmp_path):
    os.mkfifo(tmp_path / "in.jpg")
    res = _run(["predict", str(tmp_path / "in.jpg"), "--config", "configs/demo.yaml"], timeout=60,
               cwd=Path(__file__).resolve().parents[1])
    err = res.stderr.decode()
    assert res.returncode == 2 and "is a FIFO (named pipe), not an image file" in err and "does not exist" not in err
    dev = CliRunner().invoke(main, ["predict", "/dev/zero"])
    assert dev.exit_code == 2 and "'/dev/zero' is a character device, not an image file" in dev.output


def test_reject_below_nan_is_told_the_range():
    for value in ("nan", "inf", "1.5"):
        res = CliRunner().invoke(main, ["predict", "x.jpg", "--reject-below", value])
        assert res.exit_code == 2 and "should be a number between 0 and 1" in res.output


# ---------------------------------------------------------------- a full disk

def _limit_file_size(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.slow
def test_extract_into_a_full_disk_ends_in_one_line_and_resumes(tiny_model, tmp_path):
    from test_data import make_folder

    data = make_folder(tmp_path / "ds", {"a": 12, "b": 12})  # 24 rows x 32 float32: a 3 KB+ features file
    out = tmp_path / "store"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    args = ["extract", str(data), "--out", str(out), *_model_args(tiny_model)]
    full = _run(args, preexec_fn=_limit_file_size(2048), env=env)
    err = full.stderr.decode()
    assert full.returncode == 5, err[-2000:]
    assert err.startswith("error: not enough disk space in ") and str(out) in err
    assert re.search(r"the feature store \(24 x 32 float32\) needs 3\.\d KB", err), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (out / ".lock").exists() and not (out / "meta.json").exists()
    ok = CliRunner().invoke(main, args)  # space freed: the same command completes the store
    assert ok.exit_code == 0, ok.output
    assert len(FeatureStore.open(out)) == 24


# ---------------------------------------------------------------- what loaders read

def _sparse_head(folder: Path, classes: list[str], dim: int, junk_bytes: int) -> None:
    """A linear head whose head.safetensors also declares an unused tensor of `junk_bytes` (sparse on disk)."""
    from toolkit.heads.linear import LinearProbe

    LinearProbe(classes, np.eye(len(classes), dim, dtype=np.float32)).save(folder)
    coef = np.eye(len(classes), dim, dtype=np.float32).tobytes()
    intercept = np.zeros(len(classes), np.float32).tobytes()
    header = {"coef": {"dtype": "F32", "shape": [len(classes), dim], "data_offsets": [0, len(coef)]},
              "intercept": {"dtype": "F32", "shape": [len(classes)],
                            "data_offsets": [len(coef), len(coef) + len(intercept)]},
              "junk": {"dtype": "F32", "shape": [junk_bytes // 4],
                       "data_offsets": [len(coef) + len(intercept), len(coef) + len(intercept) + junk_bytes]}}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(folder / "head.safetensors", "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw + coef + intercept)
        f.truncate(8 + len(raw) + len(coef) + len(intercept) + junk_bytes)  # a hole, not written blocks


def test_a_head_with_a_huge_unused_tensor_loads_without_reading_it(tmp_path):
    head = tmp_path / "head"
    _sparse_head(head, ["a", "b", "c"], 8, 3 << 30)  # 3 GiB declared, a few KB on disk
    assert (head / "head.safetensors").stat().st_blocks * 512 < 1 << 20
    script = textwrap.dedent(f"""
        from toolkit.heads.base import load_head
        h = load_head({str(head)!r})
        peak = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:")][0].split()[1]
        print(h.classes_, h.coef_.shape, peak)  # VmHWM: this process's own peak (ru_maxrss keeps the parent's)
    """)
    res = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    rss_kb = int(res.stdout.split()[-1])
    assert "['a', 'b', 'c'] (3, 8)" in res.stdout and rss_kb < 1_000_000  # KB: the 3 GiB were never read


def test_a_head_whose_tensors_disagree_with_head_json_is_refused(tmp_path):
    from toolkit.heads.base import check_classes, load_head
    from toolkit.heads.linear import LinearProbe

    LinearProbe(["a", "b"], np.eye(2, 8, dtype=np.float32)).save(tmp_path / "h")
    doc = json.loads((tmp_path / "h" / "head.json").read_text())
    doc["classes"] = ["a", "b", "c"]  # three classes, but coef has two rows
    (tmp_path / "h" / "head.json").write_text(json.dumps(doc))
    with pytest.raises(HeadError, match=r"tensor 'coef' has shape \[2, 8\], but head.json implies \[3, 8\]: its "
                                        r"sizes don't fit 3 classes"):
        load_head(tmp_path / "h")
    many = [f"class {i}" for i in range(100_000)]
    assert check_classes(many) == many
    with pytest.raises(ValueError, match="'class 5' appears twice"):
        check_classes(many + ["class 5"])


@pytest.mark.parametrize("array, fragment", [
    (np.array(["a", "b"]).reshape(1, 2), "dtype <U1, but a store holds float32"),
    (np.ones((2, 8), np.complex64), "dtype complex64, but a store holds float32"),
    (np.ones((2, 8), np.float64), "dtype float64, but a store holds float32"),
])
def test_feature_stores_of_other_dtypes_are_refused(tmp_path, array, fragment):
    store = write_store(tmp_path / "st", np.eye(2, 8, dtype=np.float32), ["a", "b"], ["train", "val"], IDENTITY)
    np.save(store.path / "features.npy", array)
    with pytest.raises(DataError, match=fragment):
        FeatureStore.open(store.path)


def test_an_empty_features_file_is_one_line(tmp_path):
    store = write_store(tmp_path / "st", np.eye(2, 8, dtype=np.float32), ["a", "b"], ["train", "val"], IDENTITY)
    (store.path / "features.npy").write_bytes(b"")
    res = _run(["predict", "--store", str(store.path)], timeout=60)
    err = res.stderr.decode()
    assert res.returncode == 2 and err.startswith("error: feature store") and "features.npy is empty" in err
    assert "Aborted" not in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- labels the model can't read

def test_labels_past_the_text_context_or_invisible_are_refused(tiny_model, tiny_extractor, tmp_path):
    from toolkit.heads.zeroshot import ZeroShotHead

    long_a = "a person " + "very " * 20 + "slowly doing a squat"
    long_b = "a person " + "very " * 20 + "slowly doing a lunge"  # differs only past the 16-token context
    with pytest.raises(ConfigError, match=r"is 26 tokens, but the model reads 14 \(its text context is 16\)"):
        ZeroShotHead.from_extractor(tiny_extractor, [long_a, long_b], ["{}"])
    # each fits alone (11 tokens), but a long template cuts both before they differ: they would score alike
    near_a, near_b = "one two three four five six seven eight nine", "one two three four five six seven eight ten"
    tpl = ["{}", "a black and white photo of the {}."]
    with pytest.raises(ConfigError, match="read the same to the model: with template 'a black and white"):
        ZeroShotHead.from_extractor(tiny_extractor, [near_a, near_b], tpl)
    ZeroShotHead.from_extractor(tiny_extractor, [near_a, "a blue sky"], tpl)  # cut, but told apart: allowed
    _png(tmp_path / "x.png", 0)
    for bad in ("\u200b", "a\x00b", "tab\there", "\u202eevil"):
        res = CliRunner().invoke(main, ["predict", str(tmp_path / "x.png"), "--label", bad, "--label", "ok",
                                        *_model_args(tiny_model)])
        assert res.exit_code == 2 and "invisible character U+" in res.output, res.output


# ---------------------------------------------------------------- two runs at once

def test_a_second_train_probe_into_the_same_out_is_refused(tmp_path):
    out = tmp_path / "head"
    with fsio.held_lock(fsio.sibling_lock(out), f"head folder '{out}'"):  # a live process (this one) writes it
        res = _run(["train-probe", str(tmp_path / "data"), "--out", str(out), "--no-track"], timeout=60)
    err = res.stderr.decode()
    assert res.returncode == 2 and f"is being written by process {os.getpid()}" in err, err
    assert not fsio.sibling_lock(out).exists() and not out.exists()


@pytest.mark.slow
def test_runs_starting_together_on_a_fresh_tracking_database_both_start(tmp_path):
    """Two processes open a fresh mlflow.db at once: MLflow's table creation is serialised by our lock."""
    db = tmp_path / "mlflow.db"
    script = textwrap.dedent(f"""
        from toolkit.config import load_config
        from toolkit.tracking.adapter import tracked_run
        cfg = load_config(None, {{"tracking.uri": "sqlite:///{db}", "tracking.artifact_location": "{tmp_path / 'art'}"}})
        with tracked_run(cfg, "colors", "probe") as run:
            run.metrics({{"accuracy": 1.0}})
    """)
    procs = [subprocess.Popen([PYTHON, "-c", script], stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errs = [p.communicate(timeout=180)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    import sqlite3

    with sqlite3.connect(db) as con:
        assert con.execute("select count(*) from runs where status = 'FINISHED'").fetchone() == (2,)


# ---------------------------------------------------------------- demo-data's progress bar

def test_demo_data_draws_no_progress_bar_into_a_pipe(tmp_path):
    res = _run(["demo-data", str(tmp_path / "demo"), "--n-per-class", "3", "--size", "32"], timeout=120)
    assert res.returncode == 0, res.stderr.decode()[-2000:]
    assert b"\r" not in res.stderr and b"demo-data:" not in res.stderr
