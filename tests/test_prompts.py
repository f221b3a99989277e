"""Labels and templates: built-in sets, files, validation."""
import pytest

from toolkit.config import PromptConfig
from toolkit.labels import DEFAULT_LABELS
from toolkit.errors import ConfigError
from toolkit.heads.prompts import expand, load_labels, load_templates, resolve_labels, validate_labels


def test_builtin_sets():
    assert load_templates("none") == ["{}"]
    people = load_templates("people")
    assert len(people) >= 3 and all(t.count("{}") == 1 for t in people)
    imagenet = load_templates("openai_imagenet")
    assert len(imagenet) == 80 and imagenet[0] == "a bad photo of a {}."


def test_template_file(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("# comment\na photo of {}.\n\n{} in a gym\n")
    assert load_templates(str(f)) == ["a photo of {}.", "{} in a gym"]


def test_template_without_placeholder_rejected(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("a photo of a thing\n")
    with pytest.raises(ConfigError, match=r"must contain '\{\}'"):
        load_templates(str(f))


def test_unknown_template_set_suggests(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'people'"):
        load_templates("peple")


def test_labels_file_and_validation(tmp_path):
    f = tmp_path / "labels.txt"
    f.write_text("a cat\n# skip\n a dog \n")
    assert load_labels(f) == ["a cat", "a dog"]
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    with pytest.raises(ConfigError, match="no labels"):
        load_labels(empty)
    with pytest.raises(ConfigError, match="duplicate label 'A Cat'"):
        validate_labels(["a cat", "A Cat"], "x")
    with pytest.raises(ConfigError, match="not found"):
        load_labels(tmp_path / "missing.txt")


def test_resolve_labels_precedence(tmp_path):
    f = tmp_path / "l.txt"
    f.write_text("x\ny\n")
    assert resolve_labels(PromptConfig()) == DEFAULT_LABELS
    assert resolve_labels(PromptConfig(labels_file=str(f))) == ["x", "y"]
    assert resolve_labels(PromptConfig(labels=["p", "q"], labels_file=str(f))) == ["p", "q"]


def test_expand_is_label_major():
    assert expand(["a", "b"], ["1 {}", "2 {}"]) == ["1 a", "2 a", "1 b", "2 b"]
