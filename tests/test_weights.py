"""Weights in every format clipkit takes, the activation a tag was trained with, the offline cache, the model spec
that rebuilds an extractor, and model configs too big to build. Tiny real open_clip models, random weights in the
real file layouts (a Hugging Face cache, open_clip folders, TorchScript archives); no network."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import open_clip
from toolkit.config import ModelConfig, load_config
from toolkit.errors import ModelError
from toolkit.encoder.features import FeatureExtractor
from toolkit.identity import ExtractorIdentity, file_sha256, model_overrides
from toolkit.models.model_size import check_fits, estimate
from toolkit.models.weights import official_openai

TINY_VIT = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
ARCH = "clipkit-tiny-vit"
IMAGES = [Image.new("RGB", (40, 30), (200, 10, 10)), Image.new("RGB", (30, 50), (10, 90, 200))]
TEXTS = ["a photo of a dog", "a person doing a squat"]


def _load(name, pretrained=None, **kw):
    return FeatureExtractor.from_config(ModelConfig(name=name, pretrained=pretrained, device="cpu", precision="fp32",
                                                    batch_size=2, num_workers=0, **kw))


def _same_model(a: FeatureExtractor, b: FeatureExtractor, atol=1e-6, same_preprocessing=True) -> None:
    """Same embeddings for the same images (preprocessed by each) or, with other preprocessing, the same pixels."""
    if same_preprocessing:
        np.testing.assert_allclose(a.encode_images(IMAGES), b.encode_images(IMAGES), atol=atol)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(a.encode_batch(pixels), b.encode_batch(pixels), atol=atol)
    np.testing.assert_allclose(a.encode_texts(TEXTS), b.encode_texts(TEXTS), atol=atol)


def _uses_quick_gelu(ex: FeatureExtractor) -> bool:
    return any(isinstance(m, open_clip.transformer.QuickGELU) for m in ex.model.modules())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """A tiny ViT CLIP registered with open_clip: its config JSON, weights (safetensors) and the model."""
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("tiny_vit")
    (d / f"{ARCH}.json").write_text(json.dumps(TINY_VIT))
    open_clip.add_model_config(d / f"{ARCH}.json")
    torch.manual_seed(0)
    model = open_clip.create_model(ARCH)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(d / "tiny.safetensors"))
    return {"dir": d, "config": str(d / f"{ARCH}.json"), "weights": str(d / "tiny.safetensors"), "state_dict": sd}


@pytest.fixture()
def no_network(monkeypatch) -> list:
    """Every attempt to open a connection is recorded and refused; HF_HUB_OFFLINE is unset (the user didn't set it)."""
    calls: list = []

    def refuse(*args, **kwargs):
        calls.append(args[:1])
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return calls


def put_in_hf_cache(cache: Path, repo: str, files: dict[str, Path]) -> Path:
    """Files laid out as huggingface_hub stores them: blobs/<sha>, snapshots/<commit>/<name> -> blob, refs/main."""
    base = cache / f"models--{repo.replace('/', '--')}"
    commit = hashlib.sha1(repo.encode()).hexdigest()
    snap = base / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    (base / "blobs").mkdir(exist_ok=True)
    (base / "refs").mkdir(exist_ok=True)
    (base / "refs" / "main").write_text(commit)
    for name, src in files.items():
        blob = base / "blobs" / file_sha256(src)
        shutil.copyfile(src, blob)
        (snap / name).symlink_to(os.path.relpath(blob, snap))
    return snap


@pytest.fixture()
def tiny_tag(tiny, monkeypatch, tmp_path) -> dict:
    """An 'openai'-like tag for the tiny model (trained with QuickGELU, its own mean/std), weights in an HF cache."""
    from open_clip.pretrained import _PRETRAINED, _pcfg

    repo = "clipkit-test/tiny-vit.openai"
    monkeypatch.setitem(_PRETRAINED, ARCH, {"openai": _pcfg(hf_hub=f"{repo}/", quick_gelu=True,
                                                            mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))})
    cache = tmp_path / "hf-cache"
    put_in_hf_cache(cache, repo, {"open_clip_model.safetensors": Path(tiny["weights"])})
    return {"cache": str(cache), "repo": repo}


# ---------------------------------------------------------------- a tag: its activation, from the cache, offline

def test_tag_from_cache_builds_quickgelu_offline_without_hf_hub_offline(tiny, tiny_tag, no_network):
    ex = _load(tiny["config"], "openai", cache_dir=tiny_tag["cache"])
    assert no_network == []  # cached: not one connection attempted, HF_HUB_OFFLINE unset
    assert _uses_quick_gelu(ex) and ex.identity.quick_gelu is True
    assert ex.identity.pretrained == "openai" and ex.identity.checkpoint is None  # the tag, not its cache path
    assert ex.identity.mean == [0.5, 0.5, 0.5] and ex.identity.std == [0.25, 0.25, 0.25]  # the tag's preprocessing
    same = _load(tiny["config"], tiny["weights"], quick_gelu=True)  # same weights, same activation
    _same_model(ex, same, same_preprocessing=False)


def test_quick_gelu_false_overrides_the_tag(tiny, tiny_tag, no_network):
    gelu = _load(tiny["config"], "openai", cache_dir=tiny_tag["cache"], quick_gelu=False)
    quick = _load(tiny["config"], "openai", cache_dir=tiny_tag["cache"])
    assert not _uses_quick_gelu(gelu) and gelu.identity.quick_gelu is False
    assert not np.allclose(gelu.encode_texts(TEXTS), quick.encode_texts(TEXTS), atol=1e-4)
    assert "quick_gelu" in quick.identity.mismatch(gelu.identity)


def test_uncached_tag_with_no_network_fails_fast_in_one_line(tiny, tiny_tag, no_network, tmp_path):
    with pytest.raises(ModelError, match=r"not in the local cache and huggingface.co can't be reached") as e:
        _load(tiny["config"], "openai", cache_dir=str(tmp_path / "empty-cache"))
    assert "\n" not in str(e.value) and len(no_network) == 1  # one probe, no retries


def test_local_checkpoint_defaults_to_the_configs_activation(tiny):
    ex = _load(tiny["config"], tiny["weights"])
    assert not _uses_quick_gelu(ex) and ex.identity.quick_gelu is False


def test_cached_hf_hub_model_loads_offline(tiny, no_network, tmp_path):
    cfg = tmp_path / "open_clip_config.json"
    cfg.write_text(json.dumps({"model_cfg": TINY_VIT, "preprocess_cfg": {"mean": [0.4, 0.4, 0.4]}}))
    put_in_hf_cache(tmp_path / "cache", "org/tiny-clip", {"open_clip_config.json": cfg,
                                                          "open_clip_model.safetensors": Path(tiny["weights"])})
    ex = _load("hf-hub:org/tiny-clip", cache_dir=str(tmp_path / "cache"))
    assert no_network == []
    assert ex.identity.model == "hf-hub:org/tiny-clip" and ex.identity.format == "hf-hub"
    assert ex.identity.mean == [0.4, 0.4, 0.4]
    _same_model(ex, _load(tiny["config"], tiny["weights"]), same_preprocessing=False)
    assert model_overrides(ex.identity)["model.name"] == "hf-hub:org/tiny-clip"


@pytest.mark.slow
def test_vit_b_32_openai_equals_open_clips_quickgelu_model(tmp_path, no_network):
    """--model ViT-B-32 --pretrained openai gives exactly open_clip's ViT-B-32-quickgelu with the same weights."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    ref = open_clip.create_model("ViT-B-32-quickgelu").eval()
    weights = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(weights))
    put_in_hf_cache(tmp_path / "cache", "timm/vit_base_patch32_clip_224.openai", {weights.name: weights})
    weights.unlink()
    ex = FeatureExtractor.from_config(ModelConfig(name="ViT-B-32", pretrained="openai", device="cpu",
                                                  precision="fp32", cache_dir=str(tmp_path / "cache")))
    assert no_network == [] and _uses_quick_gelu(ex) and ex.identity.quick_gelu is True
    x = torch.stack([ex.preprocess(IMAGES[0])])
    tokens = ex.tokenizer(TEXTS[:1])
    with torch.inference_mode():
        want_img = torch.nn.functional.normalize(ref.encode_image(x), dim=-1).numpy()
        want_txt = torch.nn.functional.normalize(ref.encode_text(tokens), dim=-1).numpy()
    np.testing.assert_array_equal(ex.encode_batch(x), want_img)
    np.testing.assert_allclose(ex.encode_texts(TEXTS[:1]), want_txt, atol=1e-6)  # text cut to its length: ~1 ulp


# ---------------------------------------------------------------- folders

def _open_clip_folder(tmp_path: Path, tiny: dict, weights_name="open_clip_model.safetensors") -> Path:
    d = tmp_path / "my-openclip"
    d.mkdir()
    (d / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_VIT, "preprocess_cfg": {}}))
    if weights_name.endswith(".bin"):
        torch.save(tiny["state_dict"], d / weights_name)
    else:
        shutil.copyfile(tiny["weights"], d / weights_name)
    return d


@pytest.mark.parametrize("weights_name", ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"])
def test_open_clip_folder_and_local_dir(tiny, tmp_path, weights_name):
    folder = _open_clip_folder(tmp_path, tiny, weights_name)
    ref = _load(tiny["config"], tiny["weights"])
    for name in (str(folder), f"local-dir:{folder}"):
        ex = _load(name, "openai")  # the config's default tag is ignored: a folder brings its weights
        _same_model(ex, ref)
        ident = ex.identity
        assert (ident.format, ident.model, ident.pretrained) == ("open_clip-dir", "my-openclip", weights_name)
        assert ident.checkpoint_sha256 == file_sha256(folder / weights_name)
        assert model_overrides(ident) == {"model.name": str(folder), "model.pretrained": "none",
                                          "model.quick_gelu": False}


def test_open_clip_folder_problems_are_one_line(tiny, tmp_path):
    folder = _open_clip_folder(tmp_path, tiny)
    (folder / "open_clip_model.safetensors").unlink()
    with pytest.raises(ModelError, match=r"open_clip folder '.*my-openclip' has open_clip_config.json but no weights"):
        _load(str(folder))
    (folder / "open_clip_config.json").write_text(json.dumps(TINY_VIT))  # a bare model config, no model_cfg
    with pytest.raises(ModelError, match=r"open_clip_config.json lacks model_cfg"):
        _load(f"local-dir:{folder}")
    with pytest.raises(ModelError, match=r"neither an open_clip folder .* nor a transformers CLIP folder"):
        _load(str(tmp_path))
    with pytest.raises(ModelError, match=r"brings its own weights; drop --pretrained"):
        _load(str(folder), tiny["weights"])
    with pytest.raises(ModelError, match=r"'.*/gone' not found; pass an existing model folder"):
        _load(str(tmp_path / "gone"))
    with pytest.raises(ModelError, match=r"is a folder; a model folder brings its architecture too"):
        _load(tiny["config"], str(folder))


# ---------------------------------------------------------------- checkpoints that need code

def _torchscript_archive(tiny: dict, path: Path) -> Path:
    model = open_clip.create_model(ARCH)
    model.load_state_dict(tiny["state_dict"])
    torch.jit.script(model).save(str(path))
    return path


def test_torchscript_archive_is_refused_unless_official(tiny, tmp_path, monkeypatch):
    archive = _torchscript_archive(tiny, tmp_path / "ViT-B-32.pt")
    loads = []
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: loads.append(a) or pytest.fail("TorchScript was loaded"))
    with pytest.raises(ModelError) as e:
        _load(tiny["config"], str(archive))
    msg = str(e.value)
    assert "TorchScript archive" in msg and file_sha256(archive) in msg and "convert it to .safetensors" in msg
    assert "\n" not in msg and loads == []


def test_official_openai_archive_loads_with_quickgelu(tiny, tmp_path, monkeypatch):
    """An archive whose sha256 is in open_clip's registry of OpenAI releases loads, built with QuickGELU."""
    from open_clip.pretrained import _PRETRAINED, _pcfg

    archive = _torchscript_archive(tiny, tmp_path / "tiny.pt")
    url = f"https://openaipublic.azureedge.net/clip/models/{file_sha256(archive)}/tiny.pt"
    monkeypatch.setitem(_PRETRAINED, ARCH, {"openai": _pcfg(url=url, quick_gelu=True)})
    official_openai.cache_clear()
    try:
        ex = _load(ARCH, str(archive))
        bare = _load(str(archive))  # --model FILE: the registry says which architecture it is
    finally:
        official_openai.cache_clear()
    assert _uses_quick_gelu(ex) and ex.identity.quick_gelu is True
    assert ex.identity.checkpoint_sha256 == file_sha256(archive) and bare.identity.model == ARCH
    _same_model(ex, _load(tiny["config"], tiny["weights"], quick_gelu=True))


def test_pickle_that_needs_code_is_refused(tiny, tmp_path):
    pt = tmp_path / "trained.pt"
    torch.save({"state_dict": tiny["state_dict"], "args": argparse.Namespace(lr=0.1)}, pt)
    with pytest.raises(ModelError, match=r"is a pickle that needs code from the file .*convert it to .safetensors"):
        _load(tiny["config"], str(pt))


# ---------------------------------------------------------------- the model spec

def test_identity_round_trip_and_old_files(tiny):
    ident = _load(tiny["config"], tiny["weights"]).identity
    assert ExtractorIdentity.from_dict(json.loads(json.dumps(ident.to_dict()))) == ident
    assert ident.format == "open_clip-config" and ident.model_config == TINY_VIT
    assert ident.checkpoint == str(Path(tiny["weights"]).resolve())
    assert ident.checkpoint_sha256 == hashlib.sha256(Path(tiny["weights"]).read_bytes()).hexdigest()
    old = {k: v for k, v in ident.to_dict().items()
           if k not in ("format", "source", "checkpoint", "checkpoint_sha256", "quick_gelu", "model_config")}
    legacy = ExtractorIdentity.from_dict(old)  # a head.json / meta.json from before the spec
    assert legacy.format is None and legacy.mismatch(ident) is None and ident.mismatch(legacy) is None
    newer = ExtractorIdentity.from_dict({**ident.to_dict(), "future_field": 1})
    assert newer.extra["future_field"] == 1 and newer.mismatch(ident) is None


def test_identity_is_precision_independent(tiny):
    bf16 = FeatureExtractor.from_config(ModelConfig(name=tiny["config"], pretrained=tiny["weights"], device="cpu",
                                                    precision="bf16"))
    assert bf16.identity == _load(tiny["config"], tiny["weights"]).identity


def test_model_overrides_rebuild_the_same_extractor(tiny, tmp_path):
    config = tmp_path / f"{ARCH}.json"
    shutil.copyfile(tiny["config"], config)
    ex = _load(str(config), tiny["weights"])
    overrides = model_overrides(ex.identity, config_dir=tmp_path / "configs")
    assert overrides == {"model.name": str(config.resolve()), "model.pretrained": ex.identity.checkpoint,
                         "model.quick_gelu": False}
    again = FeatureExtractor.from_config(load_config(None, {**overrides, "model.device": "cpu",
                                                            "model.precision": "fp32"}).model)
    assert again.identity == ex.identity
    _same_model(again, ex)
    config.unlink()  # the config JSON is gone: rebuilt from the content the identity recorded
    overrides = model_overrides(ex.identity, config_dir=tmp_path / "configs")
    assert Path(overrides["model.name"]).name == f"{ARCH}.json" and str(tmp_path / "configs") in overrides["model.name"]
    assert json.loads(Path(overrides["model.name"]).read_text()) == TINY_VIT
    again = FeatureExtractor.from_config(load_config(None, {**overrides, "model.device": "cpu"}).model)
    assert again.identity.mismatch(ex.identity) is None


def test_moved_or_changed_checkpoint_is_one_line_naming_file_and_sha(tiny, tmp_path):
    weights = tmp_path / "w.safetensors"
    shutil.copyfile(tiny["weights"], weights)
    ident = _load(tiny["config"], str(weights)).identity
    sha = file_sha256(weights)
    weights.rename(tmp_path / "elsewhere.safetensors")
    with pytest.raises(ModelError) as e:
        model_overrides(ident, owner="head 'out/head'")
    assert f"'{weights}' (sha256 {sha})" in str(e.value) and "no longer there" in str(e.value)
    assert str(e.value).startswith("head 'out/head' was made with") and "\n" not in str(e.value)
    weights.write_bytes(b"other bytes")
    with pytest.raises(ModelError, match=f"sha256 {sha}.*now has sha256 {hashlib.sha256(b'other bytes').hexdigest()}"):
        model_overrides(ident)


def test_model_overrides_for_tags_and_old_identities(tiny, tiny_tag, no_network):
    ident = _load(tiny["config"], "openai", cache_dir=tiny_tag["cache"]).identity
    assert model_overrides(ident)["model.pretrained"] == "openai" and model_overrides(ident)["model.quick_gelu"] is True
    base = {k: v for k, v in ident.to_dict().items()
            if k not in ("format", "source", "checkpoint", "checkpoint_sha256", "quick_gelu", "model_config")}
    legacy_tag = ExtractorIdentity.from_dict({**base, "model": "ViT-B-32", "pretrained": "openai"})
    assert model_overrides(legacy_tag) == {"model.name": "ViT-B-32", "model.pretrained": "openai"}
    legacy_file = ExtractorIdentity.from_dict({**base, "pretrained": "w.safetensors", "weights_sha256": "ab" * 8})
    with pytest.raises(ModelError, match="did not record where the files were; pass model and pretrained"):
        model_overrides(legacy_file)


def test_quick_gelu_flag_reaches_the_config():
    from toolkit.cli.common import build_config

    assert build_config(None, quick_gelu="false").model.quick_gelu is False
    assert build_config(None, quick_gelu="true").model.quick_gelu is True
    assert build_config(None).model.quick_gelu == "auto"


# ---------------------------------------------------------------- model configs too big to build

def test_estimate_matches_open_clips_parameter_count(tiny):
    model = open_clip.create_model(ARCH)
    real = sum(p.numel() for p in model.parameters())
    params, need = estimate(TINY_VIT, batch_size=1)
    assert abs(params - real) / real < 0.02 and need > 4 * params


@pytest.mark.parametrize("section,key,value", [("text_cfg", "width", 16384), ("vision_cfg", "image_size", 100000),
                                               ("text_cfg", "layers", 1000000), ("vision_cfg", "layers", 1000000)])
def test_absurd_model_configs_are_refused_before_allocating(tmp_path, section, key, value):
    cfg = json.loads(json.dumps({**TINY_VIT, "vision_cfg": {**TINY_VIT["vision_cfg"], "width": 768, "patch_size": 32},
                                 "text_cfg": {**TINY_VIT["text_cfg"], "width": 512, "heads": 8, "layers": 12}}))
    cfg[section][key] = value
    path = tmp_path / "absurd.json"
    path.write_text(json.dumps(cfg))
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    with pytest.raises(ModelError) as e:
        _load(str(path))
    assert f"{section}.{key} {value}" in str(e.value) and "GB of memory available" in str(e.value)
    assert "\n" not in str(e.value)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 512 * 1024  # nothing big allocated


def test_check_fits_names_the_field_and_accepts_what_fits():
    check_fits(TINY_VIT, 32, "'tiny'", available=10**9)  # ~1 MB: fits
    with pytest.raises(ModelError, match=r"model config 'x': vision_cfg.image_size 4096 .* more than the 0.1 GB"):
        check_fits({**TINY_VIT, "vision_cfg": {**TINY_VIT["vision_cfg"], "image_size": 4096}}, 32, "'x'",
                   available=10**8)
    with pytest.raises(ModelError, match=r"text_cfg.width -5 must be a positive number"):
        check_fits({**TINY_VIT, "text_cfg": {**TINY_VIT["text_cfg"], "width": -5}}, 1, "'x'", available=10**9)
