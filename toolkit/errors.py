"""Errors the user can act on. Every message names the bad value and the fix, in one line."""
from __future__ import annotations


class ToolkitError(Exception):
    """Base class: the CLI prints ``error: <message>`` and exits with ``exit_code``."""

    exit_code = 2
    http_status = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ConfigError(ToolkitError):
    """A config file, flag or label/template set is invalid."""

    http_status = 422


class ModelError(ToolkitError):
    """A model name, pretrained tag or checkpoint can't be resolved or loaded."""

    exit_code = 3
    http_status = 500


class InputError(ToolkitError):
    """An input path, image or video is missing, unreadable or of the wrong kind."""

    http_status = 400


class HeadError(ToolkitError):
    """A trained head is missing, corrupt, or belongs to a different extractor."""

    exit_code = 3
    http_status = 500


class DataError(ToolkitError):
    """A labelled dataset or feature store is unusable (one class, empty split, ...)."""


class TrackingError(ToolkitError):
    """The MLflow tracking store can't be reached or a run can't be found."""

    exit_code = 4
    http_status = 502
