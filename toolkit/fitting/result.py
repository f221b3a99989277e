"""What a fit learned, one type for every fitting method (the array-level fitters and the estimators alike)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Optional

import numpy as np


@dataclass(frozen=True)
class FitResult:
    """One fit: what it learned, the hyper-parameters it chose (and how), its sweep, its val probabilities.

    `learned` names the learned arrays and numbers as the head attribute they become (`coef_`, `intercept_`,
    `keys_`, `values_`, `alpha_`, `beta_`); `head` is the fitted head once an estimator has built one
    (None from the array-level fitters: logreg.sweep_c, trainer.fit_linear, tip_adapter.fit_cache)."""

    learned: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)  # chosen hyper-parameters and how they were chosen
    sweep: list[dict[str, Any]] = field(default_factory=list)  # {param, value, val_accuracy, val_loss, ...}
    val_proba: Optional[np.ndarray] = None  # (n_val, C) of the model picked on val (before any refit)
    head: Any = None  # the fitted head (toolkit.heads.base.SavedHead), set by an estimator
    selection: Optional[dict[str, Any]] = None  # auto: how the winner was chosen, every candidate's score
    fit_s: Optional[float] = None  # wall time of the fit, when the caller timed it

    @property
    def coef(self) -> np.ndarray:
        """(C, D) weights of a linear fit."""
        return self.learned["coef_"]

    @property
    def intercept(self) -> np.ndarray:
        """(C,) intercepts of a linear fit."""
        return self.learned["intercept_"]

    def with_head(self, head, **changes: Any) -> "FitResult":
        return replace(self, head=head, **changes)
