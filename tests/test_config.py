"""Config loading: sections, overrides, unknown keys, relative paths."""
from pathlib import Path

import pytest

from toolkit.config import load_config
from toolkit.errors import ConfigError


def test_defaults_and_overrides():
    cfg = load_config(None, {"model.name": "RN50", "model.batch_size": None, "serve.port": 9000})
    assert cfg.model.name == "RN50"
    assert cfg.model.batch_size == 32  # None means "not given"
    assert cfg.serve.port == 9000


@pytest.mark.parametrize("yaml_text, message", [
    ("model:\n  nmae: RN50\n", r"unknown config key 'model.nmae'.*did you mean 'name'"),  # with a suggestion
    ("modle:\n  name: RN50\n", "unknown config key 'modle'"),                              # unknown section
    ("model:\n  device: tpu\n", r"model.device.*'tpu'"),                                   # names key and value
])
def test_bad_config_is_an_error_naming_what_is_wrong(tmp_path, yaml_text, message):
    p = tmp_path / "c.yaml"
    p.write_text(yaml_text)
    with pytest.raises(ConfigError, match=message):
        load_config(p)


def test_relative_paths_resolve_against_config_folder(tmp_path):
    (tmp_path / "conf").mkdir()
    (tmp_path / "labels.txt").write_text("a\nb\n")
    p = tmp_path / "conf" / "c.yaml"
    p.write_text("prompts:\n  labels_file: ../labels.txt\nmodel:\n  name: ViT-B-32\n")
    cfg = load_config(p)
    assert Path(cfg.prompts.labels_file) == (tmp_path / "labels.txt").resolve()
    assert cfg.model.name == "ViT-B-32"  # architecture names are not paths


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_shipped_configs_load():
    root = Path(__file__).resolve().parents[1]
    for path in sorted((root / "configs").glob("*.yaml")):
        if path.name.startswith("prompt_sets"):  # prompt sets for eval-prompts, not configs
            continue
        load_config(path)
