"""A Hugging Face transformers CLIP folder loaded with --model DIR: converted to open_clip in memory, its image and
text embeddings equal to transformers' own (cosine >= 0.9999, fp32). Tiny CLIPConfig models with random weights,
saved with save_pretrained; the tokenizer is CLIP's BPE (open_clip's vocabulary) with one added token, whose id is
above the EOS id, so pooling at the highest id (open_clip's default) and at the first EOS (transformers) differ."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from toolkit.config import ModelConfig, load_config  # noqa: E402
from toolkit.errors import ModelError  # noqa: E402
from toolkit.encoder.features import FeatureExtractor  # noqa: E402
from toolkit.identity import file_sha256, model_overrides  # noqa: E402

CONTEXT = 24
TEXTS = ["a photo of a <concept>", "a person doing a squat", "hi"]
PLAIN_TEXTS = TEXTS[1:]  # no added token: open_clip's own CLIP tokenizer gives the same ids


def _load(name, **kw) -> FeatureExtractor:
    return FeatureExtractor.from_config(ModelConfig(name=name, device="cpu", precision="fp32", batch_size=2,
                                                    num_workers=0, **kw))


@pytest.fixture(scope="module")
def hf_tokenizer():
    """transformers' CLIPTokenizer over CLIP's BPE (as open_clip ships it) plus one added token, '<concept>'."""
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer

    st = SimpleTokenizer()
    special = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {special.get(t, t): i for t, i in st.encoder.items()}
    tok = CLIPTokenizer(vocab=vocab, merges=sorted(st.bpe_ranks, key=st.bpe_ranks.get))
    tok.add_tokens(["<concept>"])
    assert tok.convert_tokens_to_ids("<concept>") == 49408 > tok.eos_token_id == 49407
    return tok


def _hf_model(act: str, eos: int):
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(
        text_config=dict(vocab_size=49409, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=CONTEXT, hidden_act=act, eos_token_id=eos),
        vision_config=dict(hidden_size=32, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8, hidden_act=act),
        projection_dim=16)
    torch.manual_seed(0)
    model = CLIPModel(cfg).eval()
    with torch.no_grad():  # every weight random (layer norms too), so a wrongly mapped tensor shows
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if p.ndim == 1 else 0.0))
    return model


def _save(model, folder: Path, tokenizer=None, weights="safetensors") -> Path:
    model.save_pretrained(folder, safe_serialization=weights == "safetensors")
    if weights == "bin" and not (folder / "pytorch_model.bin").is_file():  # transformers 5 always writes safetensors
        from safetensors.torch import load_file

        torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
        (folder / "model.safetensors").unlink()
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25], "resample": 3}))
    return folder


def _hf_image(model, pixels):
    out = model.get_image_features(pixel_values=pixels)
    return torch.nn.functional.normalize(getattr(out, "pooler_output", out), dim=-1).numpy()


def _hf_text(model, ids):
    out = model.get_text_features(input_ids=ids)
    return torch.nn.functional.normalize(getattr(out, "pooler_output", out), dim=-1).numpy()


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("act,weights,eos", [("quick_gelu", "safetensors", 49407), ("gelu", "bin", 49407),
                                             ("quick_gelu", "safetensors", 2)])
def test_transformers_folder_matches_transformers(hf_tokenizer, tmp_path, act, weights, eos):
    """eos 2: a config from before transformers PR #24773, which pools at the highest token id instead."""
    hf = _hf_model(act, eos)
    folder = _save(hf, tmp_path / "my-hf-clip", hf_tokenizer, weights)
    ex = _load(str(folder))
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ids = hf_tokenizer(TEXTS, padding="max_length", max_length=CONTEXT, truncation=True, return_tensors="pt").input_ids
    first_eos, highest = (ids == 49407).int().argmax(-1), ids.argmax(-1)
    assert first_eos[0] != highest[0]  # the added token: the two pooling rules pick different positions
    with torch.inference_mode():
        want_img, want_txt = _hf_image(hf, pixels), _hf_text(hf, ids)
    assert _cosines(ex.encode_batch(pixels), want_img).min() >= 0.9999
    assert _cosines(ex.encode_texts(TEXTS), want_txt).min() >= 0.9999
    ident = ex.identity
    assert (ident.format, ident.model, ident.quick_gelu) == ("transformers-dir", "my-hf-clip", act == "quick_gelu")
    assert ident.mean == [0.5, 0.5, 0.5] and ident.std == [0.25, 0.25, 0.25]  # preprocessor_config.json
    assert ident.checkpoint_sha256 == file_sha256(ident.checkpoint)
    overrides = model_overrides(ident)
    assert overrides == {"model.name": str(folder), "model.pretrained": "none", "model.quick_gelu": act == "quick_gelu"}
    again = FeatureExtractor.from_config(load_config(None, {**overrides, "model.device": "cpu"}).model)
    assert again.identity == ident


def test_transformers_folder_without_tokenizer_uses_clips_bpe(hf_tokenizer, tmp_path):
    hf = _hf_model("quick_gelu", 49407)
    folder = _save(hf, tmp_path / "no-tokenizer")
    ex = _load(str(folder))
    ids = hf_tokenizer(PLAIN_TEXTS, padding="max_length", max_length=CONTEXT, return_tensors="pt").input_ids
    np.testing.assert_array_equal(ex.tokenizer(PLAIN_TEXTS)[ids != 49407], ids[ids != 49407])  # pads differ: 0 / EOS
    with torch.inference_mode():
        want = _hf_text(hf, ids)
    assert _cosines(ex.encode_texts(PLAIN_TEXTS), want).min() >= 0.9999


def test_transformers_folder_problems_are_one_line(tmp_path):
    hf = _hf_model("quick_gelu", 49407)
    folder = _save(hf, tmp_path / "f")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "model_type": "siglip"}))
    with pytest.raises(ModelError, match=r"transformers folder of model_type 'siglip'; only 'clip' converts"):
        _load(str(folder))
    (folder / "config.json").write_text(json.dumps(cfg))
    shutil.move(folder / "model.safetensors", tmp_path / "model.safetensors")
    with pytest.raises(ModelError, match=r"transformers CLIP folder '.*f' has config.json but no weights"):
        _load(str(folder))
    (folder / "config.json").write_text(json.dumps({**cfg, "text_config": {**cfg["text_config"], "hidden_act": "relu"}}))
    shutil.move(tmp_path / "model.safetensors", folder / "model.safetensors")
    with pytest.raises(ModelError, match=r"'relu' activation has no open_clip equivalent"):
        _load(str(folder))


def test_transformers_weights_given_as_a_checkpoint_point_to_the_folder(tmp_path):
    folder = _save(_hf_model("quick_gelu", 49407), tmp_path / "f")
    arch_cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8},
                "text_cfg": {"context_length": CONTEXT, "vocab_size": 49409, "width": 32, "heads": 2, "layers": 2}}
    (tmp_path / "arch.json").write_text(json.dumps(arch_cfg))
    with pytest.raises(ModelError, match=r"transformers CLIP weights: pass their folder \(with config.json\)"):
        _load(str(tmp_path / "arch.json"), pretrained=str(folder / "model.safetensors"))


def test_sharded_transformers_folder_loads_and_records_every_shard(hf_tokenizer, tmp_path):
    from safetensors.torch import load_file, save_file

    hf = _hf_model("quick_gelu", 49407)
    whole = _load(str(_save(hf, tmp_path / "whole", hf_tokenizer)))
    folder = _save(hf, tmp_path / "sharded", hf_tokenizer)
    sd = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    keys = sorted(sd)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, part in shards.items():
        save_file({k: sd[k] for k in part}, str(folder / name))
    index = {"metadata": {}, "weight_map": {k: name for name, part in shards.items() for k in part}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    ex = _load(str(folder))
    np.testing.assert_allclose(ex.encode_texts(TEXTS), whole.encode_texts(TEXTS), atol=1e-6)
    assert ex.identity.checkpoint.endswith("model.safetensors.index.json")
    shard = folder / "model-00002-of-00002.safetensors"
    save_file({k: sd[k] + 1 for k in shards[shard.name]}, str(shard))  # one shard changed: the spec notices
    with pytest.raises(ModelError, match="now has sha256"):
        model_overrides(ex.identity)


def test_folder_tokenizer_without_transformers_says_how_to_install(hf_tokenizer, tmp_path, monkeypatch):
    import importlib.util

    folder = _save(_hf_model("quick_gelu", 49407), tmp_path / "f", hf_tokenizer)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "transformers"
                        else find_spec(name, *a))
    with pytest.raises(ModelError, match=r"brings its own tokenizer, which needs the transformers package: pip install"):
        _load(str(folder))
