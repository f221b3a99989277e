"""Errors the user can act on. Every message names the bad value and the fix, in one line."""
from __future__ import annotations

import re
from typing import Callable, Optional


class ToolkitError(Exception):
    """Base class: the CLI prints ``error: <message>`` and exits with ``exit_code``.

    `field` names the config field or request parameter at fault (e.g. "target_precision"); a message that
    names it writes it as ``{field}`` (another field as ``{field:mode}``), and each edge fills in its own
    spelling (`phrased`): the CLI its flag (``--target-precision``), the server the parameter
    (``target_precision``). The library never names flags.
    """

    exit_code = 2
    http_status = 400

    def __init__(self, message: str, field: Optional[str] = None):
        super().__init__(message)
        self.template, self.field = message, field

    @property
    def message(self) -> str:
        """The message with the field as the library names it (``target_precision``)."""
        return self.phrased(lambda f: f)

    def phrased(self, name: Callable[[str], str]) -> str:
        """The message with ``{field}`` written as `name(field)`, e.g. ``lambda f: "--" + f.replace("_", "-")``."""
        return re.sub(r"\{field(?::(\w+))?\}", lambda m: name(m.group(1) or self.field or "?"), self.template)

    def __str__(self) -> str:
        return self.message


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


class DiskFullError(ToolkitError):
    """The disk (or a file size limit) has no room for what is being written; the work done so far is kept."""

    exit_code = 5
    http_status = 507
