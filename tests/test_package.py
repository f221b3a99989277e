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


# ---------------------------------------------------------------- the architecture: imports run downward only

import ast  # noqa: E402
import functools  # noqa: E402
from pathlib import Path  # noqa: E402

PACKAGE = Path(toolkit.__file__).parent
# Each part (a subpackage, or a top-level module) and its rank: a part imports only parts of a lower rank (and
# itself). Read bottom up: cli/serve -> predictor, fitting, tracking, video -> heads, encoder, data -> models, config.
LAYERS = {
    "errors": 0, "labels": 0,
    "runtime": 1, "fsio": 1,
    "identity": 2,
    "config": 3,
    "models": 4,
    "encoder": 5,
    "data": 6, "heads": 6, "evaluation": 6, "demo": 6,
    "predictor": 7, "fitting": 7,
    "tracking": 8, "video": 8, "labeling": 8,
    "serve": 9,
    "cli": 10,
}
# Each heavy dependency and the only modules that may import it (a folder: every module in it)
HOMES = {
    "open_clip": ("models/", "encoder/features.py"),
    "mlflow": ("tracking/adapter.py", "tracking/logged_model.py"),
    "lightning": ("fitting/trainer.py", "data/distributed.py"),
    "fastapi": ("serve/",),
    "matplotlib": ("evaluation/plots.py",),
}


@functools.lru_cache(maxsize=None)
def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted name) of every import in a module, at any depth: lazy imports inside functions, and
    `if TYPE_CHECKING` ones, count too."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out += [(node.lineno, node.module)] + [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
        elif isinstance(node, ast.ImportFrom):  # relative: the house style is absolute imports
            out.append((node.lineno, "." * node.level + (node.module or "")))
    return out


def _part(rel: Path) -> str:
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] != "__init__.py")


def test_the_layer_table_names_every_part_of_the_package():
    parts = {_part(p.relative_to(PACKAGE)) for p in _modules()}
    assert parts - set(LAYERS) == set(), "a new part of toolkit/: give it a rank in LAYERS"


def test_imports_run_downward_only():
    """Every toolkit import (lazy ones too) goes to the same part or one of a lower rank; none is relative."""
    bad = []
    for path in _modules():
        rel = path.relative_to(PACKAGE)
        part = _part(rel)
        for line, name in _imports(path):
            if name.startswith("."):
                bad.append(f"{rel}:{line} relative import {name!r}")
                continue
            if not name.startswith("toolkit.") or name.count(".") < 1:
                continue
            target = name.split(".")[1]
            if target in LAYERS and target != part and LAYERS[target] >= LAYERS[part]:
                bad.append(f"{rel}:{line} {part} (rank {LAYERS[part]}) imports {name} (rank {LAYERS[target]})")
    assert bad == []


def test_each_heavy_dependency_is_imported_only_in_its_home():
    bad = []
    for path in _modules():
        rel = path.relative_to(PACKAGE).as_posix()
        for line, name in _imports(path):
            dep = name.split(".")[0]
            if dep in HOMES and not any(rel == h or (h.endswith("/") and rel.startswith(h)) for h in HOMES[dep]):
                bad.append(f"{rel}:{line} imports {name}; its home is {', '.join(HOMES[dep])}")
    assert bad == []


def test_the_import_walk_sees_lazy_and_upward_imports(tmp_path):
    """The checks above could pass by seeing nothing: the walker finds a lazy import inside a function."""
    module = tmp_path / "m.py"
    module.write_text("import numpy\n\ndef f():\n    from toolkit.cli.common import flag_name\n    import mlflow\n")
    names = [n for _, n in _imports(module)]
    assert "toolkit.cli.common" in names and "mlflow" in names and "numpy" in names


def test_builtin_openai_templates_are_open_clips():
    """heads/ keeps OpenAI's ImageNet templates as data (no open_clip import); they must stay open_clip's."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    from toolkit.heads.prompts import builtin_templates

    assert builtin_templates("openai_imagenet") == [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]
