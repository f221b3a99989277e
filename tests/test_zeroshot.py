"""Zero-shot head: parity with open_clip's own builder, probabilities, validation."""
import numpy as np
import pytest
import torch
from PIL import Image

from toolkit.errors import ConfigError
from toolkit.heads.prompts import load_templates
from toolkit.heads.zeroshot import ZeroShotHead

LABELS = ["a person standing", "a person repeating a squat", "a person repeating a jumping jack"]


@pytest.mark.parametrize("templates", ["people", "openai_imagenet", "none"])
def test_class_weights_match_open_clip_builder(tiny_extractor, templates):
    from open_clip import build_zero_shot_classifier

    tpl = load_templates(templates)
    head = ZeroShotHead.from_extractor(tiny_extractor, LABELS, tpl)
    with torch.inference_mode():
        ref = build_zero_shot_classifier(tiny_extractor.model, tiny_extractor.tokenizer, LABELS, tpl,
                                         num_classes_per_batch=2, device="cpu")
    np.testing.assert_allclose(head.coef_, ref.T.numpy(), atol=1e-5)


def test_probabilities_match_open_clip_forward(tiny_extractor):
    from open_clip import build_zero_shot_classifier

    tpl = load_templates("people")
    head = ZeroShotHead.from_extractor(tiny_extractor, LABELS, tpl)
    rng = np.random.default_rng(0)
    imgs = [Image.fromarray((rng.random((40, 40, 3)) * 255).astype("uint8")) for _ in range(4)]
    probs = head.predict_proba(tiny_extractor.encode_images(imgs))
    with torch.inference_mode():
        model = tiny_extractor.model
        w = build_zero_shot_classifier(model, tiny_extractor.tokenizer, LABELS, tpl, device="cpu")
        x = torch.stack([tiny_extractor.preprocess(im) for im in imgs])
        f = model.encode_image(x, normalize=True)
        ref = (model.logit_scale.exp() * f @ w).softmax(dim=-1).numpy()
    np.testing.assert_allclose(probs, ref, atol=1e-5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert head.predict(tiny_extractor.encode_images(imgs[:1]))[0] == LABELS[int(ref[0].argmax())]


def test_label_validation(tiny_extractor):
    with pytest.raises(ConfigError, match="duplicate"):
        ZeroShotHead.from_extractor(tiny_extractor, ["a", "a"], ["{}"])
    with pytest.raises(ConfigError, match="at least two labels"):
        ZeroShotHead.from_extractor(tiny_extractor, ["only one"], ["{}"])
    with pytest.raises(ConfigError, match="no labels"):
        ZeroShotHead.from_extractor(tiny_extractor, [], ["{}"])


def test_predictor_per_request_labels_are_cached(tiny_extractor):
    from toolkit.predictor import Predictor

    head = ZeroShotHead.from_extractor(tiny_extractor, LABELS, ["{}"])
    pred = Predictor(tiny_extractor, head)
    img = [Image.new("RGB", (32, 32), (10, 200, 30))]
    r1 = pred.predict_images(img, labels=["a cat", "a dog"])[0]
    assert set(r1["scores"]) == {"a cat", "a dog"}
    assert pred.head_for(["a cat", "a dog"]) is pred.head_for(["a cat", "a dog"])
    assert pred.predict_images(img)[0]["label"] in LABELS
