"""A clipkit probe head as an MLflow pyfunc model, "from code": MLflow copies this file into the logged model
and runs it at load time, so nothing is pickled. It imports mlflow because it has to (the toolkit's other
mlflow code is in tracking/adapter.py); the work is done by toolkit's own classes.

The model's artifacts (see toolkit/tracking/records.py): `head` (head.json + head.safetensors), `extractor` (the
ModelConfig as JSON) and, for local models, `model_config` (open_clip JSON) and `checkpoint` (weights).

    model = mlflow.pyfunc.load_model("models:/clipkit-demo-head/1")
    model.predict(pd.DataFrame({"image": ["photo.jpg", base64_string, raw_bytes]}))
    # -> DataFrame: label (null when rejected), score, rejected (below the head's "none of these" threshold),
    #    reason ("unfamiliar": the out-of-set detector; "low_confidence": under the threshold; null if accepted),
    #    then one probability column per class (rows sum to 1)
    # A multi-label head adds "labels" after "label": the list of every class at or above its own threshold
    # (possibly empty; "label" is the best of them, null when none); its class columns are independent
    # probabilities (rows need not sum to 1).
"""
import base64
import binascii
import io
import json
import os

import mlflow
import pandas as pd


def _image(value, row: int):
    """A PIL image from a file path, a base64 string (optionally a data: URL) or raw bytes."""
    from PIL import Image

    from toolkit.errors import InputError
    from toolkit.encoder.images import load_image

    if isinstance(value, str) and os.path.isfile(value):
        return load_image(value)
    data = value
    if isinstance(value, str):
        try:
            data = base64.b64decode(value.split(",", 1)[-1] if value.startswith("data:") else value, validate=True)
        except (binascii.Error, ValueError):
            raise InputError(f"row {row} of 'image' is neither an existing file nor base64 image data") from None
    try:
        with Image.open(io.BytesIO(bytes(data))) as im:
            return im.convert("RGB")
    except Exception as e:
        raise InputError(f"row {row} of 'image' is not a readable image ({e.__class__.__name__})") from None


class ClipkitHead(mlflow.pyfunc.PythonModel):
    """Images in (a DataFrame column 'image', else the first column), per-class probabilities out."""

    def load_context(self, context):
        from toolkit.config import ModelConfig
        from toolkit.encoder.features import FeatureExtractor
        from toolkit.heads.base import load_head
        from toolkit.predictor import Predictor

        art = context.artifacts
        with open(art["extractor"], encoding="utf-8") as f:
            cfg = json.load(f)
        if "model_config" in art:
            cfg["name"] = art["model_config"]
        if "checkpoint" in art:
            cfg["pretrained"] = art["checkpoint"]
        self.predictor = Predictor(FeatureExtractor.from_config(ModelConfig(**cfg)), load_head(art["head"]))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        column = model_input["image"] if "image" in model_input.columns else model_input.iloc[:, 0]
        images = [_image(v, i) for i, v in enumerate(column)]
        rows = self.predictor.predict_images(images)  # through Predictor.proba, as the CLI and the server
        classes = self.predictor.labels
        multi = getattr(self.predictor.head, "multi_label", False)  # + "labels": every class over its threshold
        extra = ["labels"] if multi else []
        return pd.DataFrame([{"label": r["label"], **({"labels": list(r["labels"])} if multi else {}),
                              "score": r["score"], "rejected": bool(r["rejected"]), "reason": r.get("reason"),
                              **{c: r["scores"][c] for c in classes}} for r in rows],
                            columns=["label", *extra, "score", "rejected", "reason", *classes])


mlflow.models.set_model(ClipkitHead())
