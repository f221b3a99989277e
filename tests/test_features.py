"""The shared feature extractor on a tiny real open_clip model: loading paths, identity, encoding, failures."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from toolkit.config import ModelConfig
from toolkit.errors import ModelError
from toolkit.encoder.features import FeatureExtractor
from toolkit.encoder.images import load_image


def _load(name, pretrained, **kw):
    return FeatureExtractor.from_config(ModelConfig(name=name, pretrained=pretrained, device="cpu", **kw))


def test_loads_config_json_and_checkpoint(tiny_extractor, tiny_model):
    ident = tiny_extractor.identity
    assert ident.model == "tiny-rn"
    assert ident.pretrained == "tiny-rn.safetensors"
    assert ident.embed_dim == 32 and ident.image_size == [32, 32]
    assert len(ident.weights_sha256) == 16
    # the weights really came from the checkpoint, not a fresh random init
    from safetensors.torch import load_file

    sd = load_file(tiny_model["checkpoint"])
    key = "visual.conv1.weight"
    assert torch.equal(tiny_extractor.model.state_dict()[key], sd[key])


def test_torch_checkpoint_loads_with_weights_only(tiny_model, tmp_path, tiny_extractor):
    from safetensors.torch import load_file

    pt = tmp_path / "tiny.pt"
    torch.save({"state_dict": load_file(tiny_model["checkpoint"])}, pt)
    ex = _load(tiny_model["config"], str(pt), precision="fp32")  # compared with the fp32 fixture
    img = [Image.new("RGB", (40, 30), (200, 10, 10))]
    np.testing.assert_allclose(ex.encode_images(img), tiny_extractor.encode_images(img), atol=1e-6)
    assert ex.identity.pretrained == "tiny.pt"
    assert ex.identity.mismatch(tiny_extractor.identity) is not None  # different file, different fingerprint


def test_image_embeddings_are_normalized_float32(tiny_extractor):
    imgs = [Image.new("RGB", (50, 40), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    f = tiny_extractor.encode_images(imgs)
    assert f.shape == (3, 32) and f.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(f[0], f[1])


def test_batching_does_not_change_embeddings(tiny_extractor):
    rng = np.random.default_rng(1)
    imgs = [Image.fromarray((rng.random((33, 47, 3)) * 255).astype("uint8")) for _ in range(5)]
    np.testing.assert_allclose(tiny_extractor.encode_images(imgs, batch_size=2),
                               tiny_extractor.encode_images(imgs, batch_size=5), atol=1e-5)


def test_encode_paths_keeps_going_past_a_corrupt_file(tiny_extractor, image_dir):
    paths = sorted(str(p) for p in image_dir.rglob("*.*"))
    bad = image_dir / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    paths.insert(2, str(bad))
    feats, errors = tiny_extractor.encode_paths(paths, batch_size=3, num_workers=0)
    assert list(errors) == [2] and "broken.png" in errors[2]
    assert np.isnan(feats[2]).all()
    ok = np.delete(feats, 2, axis=0)
    np.testing.assert_allclose(np.linalg.norm(ok, axis=1), 1.0, atol=1e-5)
    # same features as encoding the images in memory
    mem = tiny_extractor.encode_images([load_image(p) for p in np.delete(np.array(paths), 2)])
    np.testing.assert_allclose(ok, mem, atol=1e-5)


def test_encode_paths_with_worker_processes(tiny_extractor, image_dir):
    paths = sorted(str(p) for p in image_dir.rglob("*.*"))
    f0, _ = tiny_extractor.encode_paths(paths, batch_size=2, num_workers=0)
    f2, _ = tiny_extractor.encode_paths(paths, batch_size=2, num_workers=2)
    np.testing.assert_allclose(f0, f2, atol=1e-6)


def test_text_embeddings_are_cached(tiny_extractor):
    calls = []
    orig = tiny_extractor._encode_tokens
    tiny_extractor._encode_tokens = lambda t, *a, **k: calls.append(t.shape[0]) or orig(t, *a, **k)
    try:
        a = tiny_extractor.encode_texts(["a photo of a cat", "a photo of a dog"])
        b = tiny_extractor.encode_texts(["a photo of a dog", "a photo of a cat", "a photo of a bird"])
    finally:
        del tiny_extractor._encode_tokens
    assert calls == [2, 1]  # only the new text was encoded the second time
    np.testing.assert_allclose(a[0], b[1])
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)


def test_text_cache_keeps_only_the_most_recently_used(tiny_model, monkeypatch):
    import toolkit.encoder.features as features

    monkeypatch.setattr(features, "TEXT_CACHE_SIZE", 3)
    ex = _load(tiny_model["config"], tiny_model["checkpoint"], precision="fp32")
    first = ex.encode_texts(["a", "b", "c"])
    ex.encode_texts(["a"])  # 'a' is now the most recent, 'b' the oldest
    many = ex.encode_texts(["d", "e", "b", "c"])  # more distinct texts in one call than the cache holds
    assert len(ex._text_cache) == 3 and list(ex._text_cache) == ["e", "b", "c"]
    np.testing.assert_allclose(many[2:], first[1:], atol=1e-6)  # evicted and re-encoded: same embeddings


def test_unknown_architecture_suggests_close_names():
    with pytest.raises(ModelError, match=r"unknown model 'ViT-B-23'.*'ViT-B-32'"):
        _load("ViT-B-23", None)


def test_missing_and_bad_checkpoints(tiny_model, tmp_path):
    with pytest.raises(ModelError, match="checkpoint '.*nope.safetensors' not found"):
        _load(tiny_model["config"], str(tmp_path / "nope.safetensors"))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match="could not load model"):
        _load(tiny_model["config"], str(bad))
    with pytest.raises(ModelError, match="model config '.*missing.json' not found"):
        _load(str(tmp_path / "missing.json"), None)


def test_unknown_pretrained_tag_lists_known_tags():
    with pytest.raises(ModelError, match=r"unknown pretrained tag 'opneai'.*openai"):
        _load("ViT-B-32", "opneai")


@pytest.mark.parametrize("offline_env", ["1", None])
def test_uncached_weights_fail_fast_offline(monkeypatch, tmp_path, offline_env):
    """No hub: a clear ModelError naming model and tag (no 50 s retry loop, no traceback wall)."""
    if offline_env is None:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # rely on the reachability probe instead
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelError, match=r"'ViT-B-32' with pretrained tag 'openai'.*--pretrained"):
        _load("ViT-B-32", "openai", cache_dir=str(tmp_path / "cache"))


def test_hf_hub_name_offline_fails_clearly(tmp_path):
    with pytest.raises(ModelError, match="hf-hub:org/some-clip"):
        _load("hf-hub:org/some-clip", None, cache_dir=str(tmp_path))


def test_random_init_with_pretrained_none():
    ex = _load("RN50", "none", batch_size=1)
    assert ex.identity.pretrained is None and ex.identity.embed_dim == 1024


def test_cuda_requested_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ModelError, match="CUDA is not available"):
        FeatureExtractor.from_config(ModelConfig(name="RN50", pretrained=None, device="cuda"))


def test_model_config_json_must_be_a_clip_config(tmp_path):
    p = tmp_path / "weird.json"
    p.write_text(json.dumps({"embed_dim": 8}))
    with pytest.raises(ModelError, match="lacks vision_cfg/text_cfg"):
        _load(str(p), None)


def test_worker_batches_cross_to_the_main_process_as_numpy():
    """A DataLoader worker's batch is a numpy array, pickled through the worker's queue: a tensor would be shared
    through multiprocessing's resource sharer, whose thread printed a connection-reset traceback when the main
    process stopped during the handover. The main process turns it back into a tensor without a copy."""
    import pickle

    from toolkit.encoder.features import collate_images

    idx, batch, errors = collate_images([(0, torch.full((3, 4, 4), 7, dtype=torch.uint8), None), (1, None, "bad"),
                                         (2, torch.zeros((3, 4, 4), dtype=torch.uint8), None)])
    assert idx == [0, 2] and errors == {1: "bad"} and isinstance(batch, np.ndarray) and batch.shape == (2, 3, 4, 4)
    assert pickle.loads(pickle.dumps(batch))[0, 0, 0, 0] == 7
