"""ExtractorIdentity: what makes two extractors' features comparable. Plain data, no torch.

Heads and feature stores carry it, so this module is cheap to import from anything that only reads them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional


@dataclass(frozen=True)
class ExtractorIdentity:
    """What makes two extractors' features comparable. Heads and feature stores carry this."""

    model: str  # architecture name (a config JSON's stem), or the hf-hub name
    pretrained: Optional[str]  # tag, checkpoint file name, or None (random init)
    weights_sha256: Optional[str]  # first 16 hex digits of a local checkpoint's sha256; None for tags
    embed_dim: int
    image_size: list[int]
    mean: list[float]
    std: list[float]
    interpolation: str
    resize_mode: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ExtractorIdentity":
        return cls(**d)

    def mismatch(self, other: "ExtractorIdentity") -> Optional[str]:
        """A human-readable reason why features of `other` can't be used where ours are, or None."""
        for key in ("model", "pretrained", "weights_sha256", "embed_dim"):
            mine, theirs = getattr(self, key), getattr(other, key)
            if mine != theirs:
                return f"{key} differs ({theirs!r} vs {mine!r})"
        return None

    @property
    def label(self) -> str:
        return f"{self.model} / {self.pretrained or 'random-init'}"
