"""The fast path of `clipkit predict` (encoder/fast.py): ONNX Runtime graphs, numpy preprocessing and a
torch-free tokenizer give the torch path's answers; the entry is built once and rebuilt when the model's files
change; prompt embeddings persist; `clipkit predict` on it and `clipkit --help` import neither torch nor
open_clip (real subprocesses)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from toolkit.config import ModelConfig
from toolkit.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5  # max |fast - torch| on embeddings and probabilities (measured ~1e-7)
PROMPTS = ["a photo of a dog.", "", "x", "Ünïcödé café &amp; naïve", "  two\tspaces\nand lines ", "I'm 12.5 m; can't!",
           "emoji 🏋️ squat", "a person: 'jumping' (jack) #1 & co", "word " * 40, "ＦＵＬＬ width ﬁ ligature", "<b>tag</b>"]


def _cfg(tiny_model, **kw) -> ModelConfig:
    return ModelConfig(name=tiny_model["config"], pretrained=tiny_model["checkpoint"], device="cpu", batch_size=4,
                       num_workers=0, **kw)


@pytest.fixture(scope="session")
def fast(tiny_model, tmp_path_factory):
    """The tiny model's fast path prepared in a clipkit cache of its own ($XDG_CACHE_HOME = `xdg`):
    {torch, onnx, root, xdg, lines}."""
    from toolkit.encoder.fast import OnnxExtractor, open_extractor
    from toolkit.runtime import cache_root

    xdg = tmp_path_factory.mktemp("xdg")
    root = cache_root({"XDG_CACHE_HOME": str(xdg)})
    lines: list[str] = []
    first = open_extractor(_cfg(tiny_model), root, notify=lines.append)  # prepares, then runs it already
    onnx_ex = open_extractor(_cfg(tiny_model), root, notify=lines.append)
    torch_ex = open_extractor(_cfg(tiny_model, engine="torch"), root, notify=lines.append)
    assert isinstance(first, OnnxExtractor) and first.folder == onnx_ex.folder and isinstance(onnx_ex, OnnxExtractor)
    assert not isinstance(torch_ex, OnnxExtractor)
    return {"torch": torch_ex, "onnx": onnx_ex, "root": root, "xdg": str(xdg), "lines": lines}


def _photos(n=5):
    rng = np.random.default_rng(1)
    sizes = [(48, 40), (40, 48), (32, 32), (17, 90), (200, 31)][:n]  # landscape, portrait, exact, upsampled, thin
    return [Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8")) for w, h in sizes]


# ---------------------------------------------------------------- the parts, against torch

def test_tokenizer_matches_open_clip():
    from open_clip.tokenizer import SimpleTokenizer, default_bpe

    from toolkit.encoder.bpe import BpeTokenizer

    for context in (77, 16):
        want = SimpleTokenizer(context_length=context)(PROMPTS).numpy()
        np.testing.assert_array_equal(BpeTokenizer(default_bpe(), context)(PROMPTS), want)


def test_numpy_preprocessing_equals_the_torch_transform(tiny_extractor):
    import open_clip
    from toolkit.encoder.preprocess import preprocess, spec_from_transform

    transforms = [tiny_extractor.preprocess,
                  open_clip.image_transform(32, is_train=False, resize_mode="squash", interpolation="bilinear")]
    for transform in transforms:
        spec = spec_from_transform(transform)
        assert spec is not None
        want = np.stack([transform(im).numpy() for im in _photos()])
        np.testing.assert_array_equal(preprocess(_photos(), spec), want)
    longest = open_clip.image_transform(32, is_train=False, resize_mode="longest")  # pads: not covered
    assert spec_from_transform(longest) is None


def test_fast_path_gives_the_torch_answers(fast, image_dir):
    from toolkit.heads.zeroshot import ZeroShotHead
    from toolkit.predictor import Predictor

    paths = sorted(str(p) for p in image_dir.rglob("*.*")) + [str(image_dir / "missing.png")]
    (want, want_err), (got, got_err) = (ex.encode_paths(paths) for ex in (fast["torch"], fast["onnx"]))
    assert got_err == want_err and list(got_err) == [len(paths) - 1]
    np.testing.assert_allclose(got, want, atol=TOLERANCE)  # the NaN row of the missing file included
    np.testing.assert_allclose(fast["onnx"].encode_texts(PROMPTS), fast["torch"].encode_texts(PROMPTS), atol=TOLERANCE)
    labels, templates = ["a red square", "a blue circle", "noise"], ["{}", "a photo of {}."]
    rows = []
    for ex in (fast["torch"], fast["onnx"]):
        pred = Predictor(ex, ZeroShotHead.from_extractor(ex, labels, templates))
        rows.append(pred.predict_paths(paths, top_k=2))
    for a, b in zip(*rows):
        assert a.keys() == b.keys() and a.get("label") == b.get("label")
        if "scores" in a:
            np.testing.assert_allclose([b["scores"][k] for k in labels], [a["scores"][k] for k in labels], atol=TOLERANCE)


def test_first_batch_is_one_image(fast, image_dir):
    paths = sorted(str(p) for p in image_dir.rglob("*.*"))
    sizes = [len(idx) for idx, _, _ in fast["onnx"].iter_path_batches(paths, batch_size=4)]
    assert sizes == [1, 4, 1]


# ---------------------------------------------------------------- the entry: built once, rebuilt on change

def test_prepared_once_and_said_so(fast):
    lines = fast["lines"]
    assert len(lines) == 4  # what it does, a progress line per tower, ready
    assert lines[0].startswith("preparing the fast path for tiny-rn / tiny-rn.safetensors (once)")
    assert [line.split(":")[0].strip() for line in lines[1:3]] == ["image tower", "text tower"]
    assert "checked against torch" in lines[1] and "is ready" in lines[3]
    entry = fast["onnx"].folder
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["parity"]["image"] < 1e-4 and meta["parity"]["text"] < 1e-4
    names = {p.name for p in entry.iterdir()}
    assert names >= {"image.onnx", "image.data", "text.onnx", "text.data", "meta.json", "bpe_merges.txt"}
    assert not any(name.endswith(".raw.onnx") for name in names)  # the unoptimized exports are gone


def test_entry_holds_optimized_graphs(fast):
    """The saved graphs are ONNX Runtime's optimized ones, weights beside them and the identity kept, run as they
    are (their answers against torch: test_fast_path_gives_the_torch_answers)."""
    import onnx

    from toolkit.encoder.onnx import OnnxImageEncoder

    entry = fast["onnx"].folder
    for tower in ("image", "text"):
        graph = onnx.load(str(entry / f"{tower}.onnx"), load_external_data=False)
        assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.graph.initializer)
        assert (entry / f"{tower}.onnx").stat().st_size < (entry / f"{tower}.data").stat().st_size
        assert any(node.domain == "com.microsoft" for node in graph.graph.node)  # ORT's fused kernels
    session = OnnxImageEncoder(entry / "image.onnx", optimized=True)
    assert session.identity == fast["onnx"].identity.to_dict()
    assert session.session.get_session_options().graph_optimization_level.name == "ORT_DISABLE_ALL"


def test_changed_weights_rebuild_the_entry(tiny_model, fast):
    from toolkit.encoder.fast import config_key, lookup

    index = fast["root"] / "fast" / "index" / f"{config_key(_cfg(tiny_model))}.json"
    assert lookup(index) == fast["onnx"].folder
    st = os.stat(tiny_model["checkpoint"])
    try:
        os.utime(tiny_model["checkpoint"], ns=(1, 1))  # same bytes, another mtime: the file may have been replaced
        assert lookup(index) is None  # open_extractor then prepares it again (the fixture's first call)
    finally:
        os.utime(tiny_model["checkpoint"], ns=(st.st_atime_ns, st.st_mtime_ns))
    assert lookup(index) == fast["onnx"].folder


def test_prompt_embeddings_persist_without_the_text_tower(fast, tmp_path):
    from toolkit.encoder.fast import OnnxExtractor

    prompts = ["a persisted prompt", "another one"]
    want = fast["onnx"].encode_texts(prompts)
    entry = tmp_path / "entry"
    shutil.copytree(fast["onnx"].folder, entry)
    (entry / "text.onnx").unlink()  # a label set seen before must not need it
    cold = OnnxExtractor(entry, fast["onnx"].cfg)
    np.testing.assert_array_equal(cold.encode_texts(prompts[::-1]), want[::-1])
    with pytest.raises(Exception, match="text.onnx"):
        cold.encode_texts(["never seen"])


def test_engine_choice(tiny_model, fast):
    from toolkit.encoder.fast import blocker, open_extractor

    assert blocker(_cfg(tiny_model)) is None
    assert "precision is bf16" in blocker(_cfg(tiny_model, precision="bf16"))
    assert blocker(_cfg(tiny_model, engine="torch")) == "engine is torch"
    assert type(open_extractor(_cfg(tiny_model, engine="torch"), fast["root"])).__name__ == "FeatureExtractor"
    with pytest.raises(ConfigError, match="engine onnx can't run this model: it runs in fp32 and precision is fp16"):
        open_extractor(_cfg(tiny_model, engine="onnx", precision="fp16"), fast["root"])


# ---------------------------------------------------------------- the CLI, in real processes

def _clipkit(args: list[str], xdg: str | None = None) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run `clipkit ARGS` in a fresh interpreter; return it and the torch/open_clip/sklearn modules it imported."""
    code = ("import sys\nfrom toolkit.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'open_clip', 'sklearn'))\n"
            "print('HEAVY=' + ','.join(heavy), file=sys.stderr)\nsys.exit(code)\n")
    env = {**os.environ, **({"XDG_CACHE_HOME": xdg} if xdg else {})}
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env=env)
    heavy = proc.stderr.rsplit("HEAVY=", 1)[1].strip()
    return proc, [m for m in heavy.split(",") if m]


def test_help_imports_neither_torch_nor_open_clip():
    proc, heavy = _clipkit(["--help"])
    assert proc.returncode == 0 and "predict" in proc.stdout
    assert heavy == []


def test_cli_fast_path_output_equals_the_torch_path(fast, tiny_model, image_dir):
    args = ["predict", str(image_dir), "--model", tiny_model["config"], "--pretrained", tiny_model["checkpoint"],
            "--device", "cpu", "--label", "a red square", "--label", "a blue circle", "--format", "json"]
    proc, heavy = _clipkit(args, xdg=fast["xdg"])
    assert proc.returncode == 0, proc.stderr
    assert heavy == [] and "preparing" not in proc.stderr
    torch_run = CliRunner().invoke(__import__("toolkit.cli", fromlist=["main"]).main, [*args, "--engine", "torch"])
    assert torch_run.exit_code == 0, torch_run.output
    got, want = json.loads(proc.stdout), json.loads(torch_run.stdout)
    assert [r["path"] for r in got["results"]] == [r["path"] for r in want["results"]]
    assert [r["label"] for r in got["results"]] == [r["label"] for r in want["results"]]
    for g, w in zip(got["results"], want["results"]):
        assert abs(g["score"] - w["score"]) < TOLERANCE
    assert {k: v for k, v in got.items() if k != "results"} == {k: v for k, v in want.items() if k != "results"}


def test_predict_video_fast_path_equals_the_torch_path(fast, tiny_model, tmp_path, monkeypatch):
    """`clipkit predict-video` scores frames through the fast path by default: same document as --engine torch
    (probabilities within the parity tolerance), and its prompts land in the fast path's cache."""
    from toolkit.cli import main
    from toolkit.demo.video import write_video
    from toolkit.encoder.text_cache import TextEmbeddingCache

    clip = tmp_path / "clip.mp4"
    write_video(clip, [("standing", 0.5), ("squat", 1, 1.0)], seed=2, size=(48, 48), fps=8)
    monkeypatch.setenv("XDG_CACHE_HOME", fast["xdg"])  # the fixture's prepared entry: nothing is exported here
    labels = ["a person doing a video squat", "a person standing in a video"]
    args = ["predict-video", str(clip), "--model", tiny_model["config"], "--pretrained", tiny_model["checkpoint"],
            "--device", "cpu", "--batch-size", "4", "--no-progress", "--format", "json",
            "--label", labels[0], "--label", labels[1], "--templates", "none"]
    docs = {}
    for engine in ("auto", "torch"):
        run = CliRunner().invoke(main, [*args, "--engine", engine])
        assert run.exit_code == 0, run.output
        docs[engine] = json.loads(run.stdout)
    assert "preparing" not in run.stderr
    got, want = docs["auto"], docs["torch"]
    assert len(got["frames"]) == len(want["frames"]) >= 10
    for g, w in zip(got["frames"], want["frames"]):
        assert g["raw_label"] == w["raw_label"]
        np.testing.assert_allclose([g["scores"][c] for c in labels], [w["scores"][c] for c in labels], atol=TOLERANCE)
    assert [s["label"] for s in got["segments"]] == [s["label"] for s in want["segments"]]
    assert TextEmbeddingCache(fast["onnx"].folder / "texts.safetensors").lookup(labels).keys() == set(labels)


def test_entries_of_an_older_format_are_removed_when_a_new_one_is_written(tmp_path):
    from toolkit.encoder.fast import FAST_FORMAT, _drop_old_formats

    for name, fmt in (("old", FAST_FORMAT - 1), ("current", FAST_FORMAT), (".current.tmp-x", FAST_FORMAT - 1)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "meta.json").write_text(json.dumps({"format": fmt}))
    (tmp_path / "index").mkdir()
    (tmp_path / "unreadable").mkdir()  # no meta.json: not ours to judge
    said = []
    _drop_old_formats(tmp_path, said.append)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".current.tmp-x", "current", "index", "unreadable"]
    assert len(said) == 1 and "old" in said[0]


# ---------------------------------------------------------------- extraction on the fast path

def test_extract_on_the_fast_path_gives_the_torch_store(fast, tiny_model, tmp_path, monkeypatch):
    """`clipkit extract` in one CPU process runs ONNX Runtime: no torch, open_clip or scikit-learn import (the
    split is datasets.stratified_split), and the store of --engine torch: same rows, splits, labels and skipped
    file, features within the parity tolerance; each engine then reuses the other's store."""
    from test_data import make_folder
    from toolkit.cli import main
    from toolkit.data.store import FeatureStore

    data = make_folder(tmp_path / "ds", {"a": 7, "b": 6, "c": 6})
    (data / "b" / "broken.png").write_bytes(b"not an image")
    base = ["extract", str(data), "--model", tiny_model["config"], "--pretrained", tiny_model["checkpoint"],
            "--device", "cpu", "--batch-size", "4", "--no-progress", "--out"]
    proc, heavy = _clipkit([*base, str(tmp_path / "fast")], xdg=fast["xdg"])
    assert proc.returncode == 0, proc.stderr
    assert heavy == [] and "preparing" not in proc.stderr and "extracted" in proc.stdout
    monkeypatch.setenv("XDG_CACHE_HOME", fast["xdg"])
    run = CliRunner().invoke(main, [*base, str(tmp_path / "torch"), "--engine", "torch"])
    assert run.exit_code == 0, run.output
    got, want = FeatureStore.open(tmp_path / "fast"), FeatureStore.open(tmp_path / "torch")
    assert got.index == want.index and len(got) == 19
    assert [s["path"] for s in got.meta["skipped"]] == [s["path"] for s in want.meta["skipped"]] != []
    for key in ("class_counts", "split_counts", "identity", "fingerprint"):
        assert got.meta[key] == want.meta[key], key
    np.testing.assert_allclose(got.features, want.features, atol=TOLERANCE)
    for engine, store in (("auto", "torch"), ("torch", "fast")):
        run = CliRunner().invoke(main, [*base, str(tmp_path / store), "--engine", engine])
        assert run.exit_code == 0 and "reused" in run.output, run.output


def test_fast_path_extraction_resumes_an_interrupted_store(fast, tmp_path):
    """The fast path's batches (one image first, then full ones) straddle the store's: an interrupted run keeps
    every store batch that was complete, and the rerun encodes only the rest, into the same features."""
    from test_data import make_folder
    from test_store import Interrupting
    from toolkit.data.datasets import load_dataset
    from toolkit.data.extraction import extract_store

    dataset = load_dataset(make_folder(tmp_path / "ds", {"a": 6, "b": 6, "c": 6}), seed=0)
    stopped = Interrupting(fast["onnx"], stop_after=2)  # 1 + 4 images encoded: store batch 0 (4 rows) complete
    with pytest.raises(KeyboardInterrupt):
        extract_store(stopped, dataset, tmp_path / "st", batch_size=4)
    rest = Interrupting(fast["onnx"])
    store = extract_store(rest, dataset, tmp_path / "st", batch_size=4)
    assert rest.encoded == 18 - 4 and len(store) == 18
    whole = extract_store(fast["torch"], dataset, tmp_path / "whole", batch_size=4)
    np.testing.assert_allclose(store.features, whole.features, atol=TOLERANCE)


def test_int8_is_opt_in_on_the_fast_path_with_stores_of_its_own(fast, tiny_model, tmp_path):
    """precision int8: the image tower's int8 graph is built once beside the entry; its features are close to
    fp32's but not the same, so its identity says so and its store is never reused as (or mixed with) fp32's;
    the torch path refuses int8 in one line naming the field."""
    from test_data import make_folder
    from toolkit.data.datasets import load_dataset
    from toolkit.data.extraction import extract_store, fingerprint
    from toolkit.encoder.fast import OnnxExtractor, open_extractor

    lines: list[str] = []
    int8 = open_extractor(_cfg(tiny_model, precision="int8"), fast["root"], notify=lines.append)
    assert isinstance(int8, OnnxExtractor) and int8.identity.quantization == "int8"
    assert any("int8 image tower" in line for line in lines) and (int8.folder / "int8" / "image.onnx").is_file()
    again: list[str] = []
    open_extractor(_cfg(tiny_model, precision="int8"), fast["root"], notify=again.append)
    assert again == []  # built once
    x = np.stack([int8.prepare(im) for im in _photos()])
    a, b = int8.encode_arrays(x), fast["onnx"].encode_arrays(x)
    assert (a * b).sum(1).min() > 0.95 and np.abs(a - b).max() > 1e-5
    assert "quantization" not in fast["onnx"].identity.features_key()  # fp32 stores keep their fingerprints

    dataset = load_dataset(make_folder(tmp_path / "ds", {"a": 5, "b": 5}), seed=0)
    assert fingerprint(dataset, int8.identity) != fingerprint(dataset, fast["onnx"].identity)
    store = extract_store(int8, dataset, tmp_path / "st", batch_size=4)
    assert store.meta["identity"]["quantization"] == "int8"
    fp32 = extract_store(fast["onnx"], dataset, tmp_path / "st", batch_size=4)
    assert not fp32.reused and fp32.meta["identity"].get("quantization") is None
    with pytest.raises(ConfigError, match="precision int8 runs only on the fast path") as e:
        open_extractor(_cfg(tiny_model, precision="int8", engine="torch"), fast["root"])
    assert e.value.field == "precision"
    from toolkit.cli import main

    run = CliRunner().invoke(main, ["extract", str(tmp_path / "ds"), "--model", tiny_model["config"], "--pretrained",
                                    tiny_model["checkpoint"], "--precision", "int8", "--devices", "2", "--out",
                                    str(tmp_path / "st2")])
    assert run.exit_code == 2 and "precision int8 runs in one process" in run.output and "--precision" in run.output
