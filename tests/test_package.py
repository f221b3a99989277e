"""The package's public API and the import costs kept off the prediction path."""
import subprocess
import sys

import toolkit


def test_public_api_resolves():
    for name in toolkit.__all__:
        assert getattr(toolkit, name) is not None, name


def test_cli_import_does_not_pull_heavy_libraries():
    """`clipkit --help` must not import Lightning, MLflow or FastAPI (seconds of start-up each)."""
    code = ("import sys, toolkit.cli; "
            "print(','.join(m for m in ('lightning', 'mlflow', 'fastapi', 'open_clip') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_prediction_path_does_not_import_lightning_or_mlflow(tiny_model, image_dir):
    code = (
        "import sys, json\n"
        "from toolkit.config import load_config\n"
        "from toolkit.predictor import build_predictor\n"
        f"cfg = load_config(None, {{'model.name': {tiny_model['config']!r}, "
        f"'model.pretrained': {tiny_model['checkpoint']!r}, 'model.device': 'cpu'}})\n"
        f"p = build_predictor(cfg)\n"
        f"r = p.predict_paths([{str(image_dir / 'img0.png')!r}])\n"
        "assert 'label' in r[0]\n"
        "print(','.join(m for m in ('lightning', 'mlflow', 'fastapi') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
