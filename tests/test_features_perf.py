"""The extractor's speed paths give the same answers: bf16, truncated text, JPEG draft decoding, compile, ONNX."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from toolkit.encoder.accel import CausalTextTower
from toolkit.config import ModelConfig
from toolkit.errors import InputError
from toolkit.encoder.features import FeatureExtractor
from toolkit.encoder.images import load_image

SMALL_VIT = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
TEXTS = ["a person standing", "a photo of a person repeating a jumping jack in a gym", "squat",
         "a blurry photo of a person performing a plank on the floor, seen from the side, in bad light"]


def _model_json(tmp_path, name, cfg):
    p = tmp_path / f"{name}.json"
    p.write_text(json.dumps(cfg))
    return str(p)


def _extractor(name, pretrained=None, **kw):
    torch.manual_seed(0)  # the same random weights for every precision
    return FeatureExtractor.from_config(ModelConfig(name=name, pretrained=pretrained, device="cpu",
                                                    num_workers=0, **{"batch_size": 4, "precision": "fp32", **kw}))


def _images(n=6, seed=0, size=(48, 40)):
    rng = np.random.default_rng(seed)
    return [Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype("uint8")) for _ in range(n)]


def _cosines(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


# ---------------------------------------------------------------- precision

@pytest.mark.parametrize("which", ["tiny_rn", "small_vit"])
def test_bf16_embeddings_match_fp32(which, tiny_model, tmp_path):
    if which == "tiny_rn":
        args = (tiny_model["config"], tiny_model["checkpoint"])
    else:
        args = (_model_json(tmp_path, "small-vit", SMALL_VIT), None)
    f32, b16 = _extractor(*args), _extractor(*args, precision="bf16")
    assert b16.dtype == torch.bfloat16 and f32.dtype == torch.float32
    imgs = _images()
    assert _cosines(f32.encode_images(imgs), b16.encode_images(imgs)).min() >= 0.999
    assert _cosines(f32.encode_texts(TEXTS), b16.encode_texts(TEXTS)).min() >= 0.999
    assert b16.encode_images(imgs).dtype == np.float32  # callers always get float32


def test_auto_precision_follows_the_hardware(tiny_model):
    from toolkit.encoder.accel import cpu_has_native_bf16

    ex = _extractor(tiny_model["config"], tiny_model["checkpoint"], precision="auto")
    assert ex.dtype == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)


# ---------------------------------------------------------------- text truncation

def _full_length(ex, texts):
    with torch.inference_mode():
        f = ex.model.encode_text(ex.tokenizer(texts)).float()
    return torch.nn.functional.normalize(f, dim=-1).numpy()


def test_truncated_text_equals_full_context(tiny_extractor):
    tower = tiny_extractor._text_tower
    assert tower is not None  # the tiny CLIP has a causal text tower, so truncation is on
    tokens = tiny_extractor.tokenizer(TEXTS[:3])
    assert tower.used_length(tokens) < tokens.shape[1]  # there was padding to drop
    fresh = FeatureExtractor(tiny_extractor.model, tiny_extractor.preprocess, tiny_extractor.tokenizer,
                             tiny_extractor.identity, tiny_extractor.cfg)
    np.testing.assert_allclose(fresh.encode_texts(TEXTS, batch_size=2), _full_length(fresh, TEXTS), atol=1e-5)


def test_text_longer_than_the_context_and_single_texts(tiny_extractor):
    fresh = FeatureExtractor(tiny_extractor.model, tiny_extractor.preprocess, tiny_extractor.tokenizer,
                             tiny_extractor.identity, tiny_extractor.cfg)
    texts = [TEXTS[3], "a"]  # the first fills the 16-token context, the second is 3 tokens with SOT/EOT
    for t in texts:
        np.testing.assert_allclose(fresh.encode_texts([t]), _full_length(fresh, [t]), atol=1e-5)


def test_bidirectional_text_tower_is_not_truncated(tmp_path):
    cfg = json.loads(json.dumps(SMALL_VIT))
    cfg["text_cfg"]["no_causal_mask"] = True
    cfg["text_cfg"]["pool_type"] = "last"
    ex = _extractor(_model_json(tmp_path, "bidir-vit", cfg))
    assert CausalTextTower.find(ex.model) is None
    np.testing.assert_allclose(ex.encode_texts(TEXTS), _full_length(ex, TEXTS), atol=1e-6)


# ---------------------------------------------------------------- JPEG draft decoding

def test_draft_decodes_jpeg_smaller_but_preprocesses_to_the_same_size(tmp_path, tiny_extractor):
    p = tmp_path / "big.jpg"
    _images(1, size=(640, 480))[0].save(p, quality=90)
    full, small = load_image(p), load_image(p, min_side=100)
    assert full.size == (640, 480)
    assert small.size == (160, 120)  # 1/4 scale: the smallest whose shorter side stays >= 100
    assert load_image(p, min_side=240).size == (320, 240)
    assert load_image(p, min_side=300).size == (640, 480)  # 1/2 would go below 300: decode in full
    assert tiny_extractor.preprocess(small).shape == tiny_extractor.preprocess(full).shape
    png = tmp_path / "big.png"
    full.save(png)
    assert load_image(png, min_side=100).size == (640, 480)  # only JPEG decoders can draft


def test_draft_decode_extraction_stays_close(tmp_path, tiny_model):
    rng = np.random.default_rng(3)
    paths = []
    for i in range(4):  # smooth images, like photos: mostly low frequencies
        base = rng.random((6, 8, 3)) * 255
        im = Image.fromarray(base.astype("uint8")).resize((640, 480), Image.BICUBIC)
        paths.append(str(tmp_path / f"im{i}.jpg"))
        im.save(paths[-1], quality=90)
    plain = _extractor(tiny_model["config"], tiny_model["checkpoint"])
    draft = _extractor(tiny_model["config"], tiny_model["checkpoint"], draft_decode=True)
    assert plain.min_decode_side is None and draft.min_decode_side == 32
    a, errs_a = plain.encode_paths(paths)
    b, errs_b = draft.encode_paths(paths)
    assert not errs_a and not errs_b
    assert _cosines(a, b).min() > 0.99


# ---------------------------------------------------------------- torch.compile

def test_eager_encoder_runs_each_batch_at_its_own_size(tiny_model):
    """Only a compiled encoder pads to a fixed batch; eager must not (a batch of 1 padded to 32 is 32x the work)."""
    ex = _extractor(tiny_model["config"], tiny_model["checkpoint"], batch_size=32)
    seen = []
    ex.model.visual.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[0]))
    ex.encode_images(_images(1))
    ex.encode_images(_images(5), batch_size=2)
    assert seen == [1, 2, 2, 1]

def test_sdpa_self_attention_matches_multihead_attention(tmp_path):
    """The attention that compile traces gives nn.MultiheadAttention's outputs, with and without the causal mask."""
    from toolkit.encoder.accel import use_sdpa_self_attention

    ex = _extractor(_model_json(tmp_path, "small-vit", SMALL_VIT), None)
    imgs = _images()
    before_img, before_txt = ex.encode_images(imgs), ex._encode_tokens(ex.tokenizer(TEXTS))
    assert use_sdpa_self_attention(ex.model.visual) == 2
    assert use_sdpa_self_attention(ex.model.transformer) == 2  # the text tower: causal float mask
    np.testing.assert_allclose(ex.encode_images(imgs), before_img, atol=1e-5)
    np.testing.assert_allclose(ex._encode_tokens(ex.tokenizer(TEXTS)), before_txt, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["tiny_rn", "small_vit"])
def test_compiled_encoder_matches_eager_and_pads_the_last_batch(which, tiny_model, tmp_path):
    if which == "tiny_rn":
        args = (tiny_model["config"], tiny_model["checkpoint"])
    else:  # attention blocks: compiled through sdpa_self_attention
        args = (_model_json(tmp_path, "small-vit", SMALL_VIT), None)
    eager = _extractor(*args)
    comp = _extractor(*args, compile=True)
    imgs = _images(7)
    out = comp.encode_images(imgs, batch_size=4)  # batches of 4 and 3: the 3 is padded to the compiled 4
    assert out.shape == (7, 32) and comp._compiled_batch == 4
    np.testing.assert_allclose(out, eager.encode_images(imgs, batch_size=4), atol=1e-4)


# ---------------------------------------------------------------- ONNX

def test_onnx_export_matches_eager(tmp_path, tiny_extractor):
    from toolkit.encoder.onnx import OnnxImageEncoder, export_image_encoder, parity

    path = export_image_encoder(tiny_extractor, tmp_path / "tiny.onnx")
    enc = OnnxImageEncoder(path)
    assert enc.identity == tiny_extractor.identity.to_dict()
    assert parity(tiny_extractor, enc, n=5) < 1e-4
    x = torch.stack([tiny_extractor.preprocess(im) for im in _images(3)])  # a batch size not seen at export
    np.testing.assert_allclose(enc.encode_batch(x), tiny_extractor.encode_batch(x), atol=1e-4)
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.onnx"]  # no temporary file left beside it


def test_onnx_errors_name_the_file(tmp_path, tiny_extractor):
    from toolkit.encoder.onnx import OnnxImageEncoder, export_image_encoder

    with pytest.raises(InputError, match=r"'.*model.bin' should end in .onnx"):
        export_image_encoder(tiny_extractor, tmp_path / "model.bin")
    with pytest.raises(InputError, match="not found; create it with `clipkit export-onnx"):
        OnnxImageEncoder(tmp_path / "missing.onnx")


def test_export_onnx_cli(tmp_path, tiny_model):
    from toolkit.cli import main

    out = tmp_path / "m" / "tiny.onnx"
    res = CliRunner().invoke(main, ["export-onnx", "--model", tiny_model["config"], "--pretrained",
                                    tiny_model["checkpoint"], "--device", "cpu", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.is_file() and "check: max |onnxruntime - pytorch|" in res.output
    bad = CliRunner().invoke(main, ["export-onnx", "--model", tiny_model["config"], "--pretrained", "none",
                                    "--out", str(tmp_path / "x.txt")])
    assert bad.exit_code == 2 and "should end in .onnx" in bad.output


# ---------------------------------------------------------------- uint8 preprocessing

def test_uint8_preprocessing_is_exactly_the_transform(tmp_path, tiny_extractor):
    """PIL steps per image + batched ToTensor/Normalize give the very values of open_clip's whole transform."""
    ex = tiny_extractor
    imgs = _images(5, size=(70, 50)) + [Image.new("L", (40, 40), 128).convert("RGB")]
    u = torch.stack([ex.prepare(im) for im in imgs])
    f = torch.stack([ex.preprocess(im) for im in imgs])
    assert u.dtype == torch.uint8 and u.shape == f.shape
    assert torch.equal(ex._uint8.normalize(u), f)
    paths = []
    for i, im in enumerate(imgs):
        paths.append(str(tmp_path / f"{i}.png"))
        im.save(paths[-1])
    feats, errors = ex.encode_paths(paths, batch_size=4, num_workers=0)
    assert not errors  # the same batches (4 + 2) of the float transform give the very same features
    np.testing.assert_array_equal(feats, np.concatenate([ex.encode_batch(f[:4]), ex.encode_batch(f[4:])]))


def test_a_transform_that_does_not_split_runs_whole(tiny_model):
    ex = _extractor(tiny_model["config"], tiny_model["checkpoint"])
    whole = ex.preprocess
    ex2 = FeatureExtractor(ex.model, lambda im: whole(im), ex.tokenizer, ex.identity, ex.cfg)
    assert ex2.prepare is not ex2._uint8 and ex2._uint8 is None
    imgs = _images(3)
    np.testing.assert_array_equal(ex2.encode_images(imgs), ex.encode_images(imgs))
    with pytest.raises(ValueError, match="uint8"):
        ex2.encode_batch(torch.zeros((1, 3, 32, 32), dtype=torch.uint8))
