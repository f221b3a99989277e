"""Fitting the multi-label cache head (toolkit.heads.multilabel_cache): the keys are the training features,
the values their +-1 labels; beta (one for the cache) and alpha (one per class) are chosen on val by grid
search: for each beta, each class keeps the alpha of its best val average precision (ties within 0.001 to the
lower val log loss), and the beta whose classes reach the best mean AP (val mAP) wins, ties to the smaller.
The base is the zero-shot head's linear form, or (`base`, an estimator such as MultiLabelBlend) a trained head
fitted first on the same data: its C / alpha choices come along in the params and the sweep.

Follows heads/base.py's estimator contract, like fitting.multilabel: `fit(X, Y, X_val, Y_val, classes,
zeroshot=..., identity=...)` returns the head and sets `result_` (a MultiLabelFit). numpy only.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from toolkit.errors import ConfigError
from toolkit.fitting.multilabel import MultiLabelFit, _best, _val_scores
from toolkit.heads.multilabel_cache import MultiLabelCacheHead, cache_vote, sign_values

DEFAULT_ALPHAS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)  # logit units: the vote is in [-1, 1]
DEFAULT_BETAS = (1.0, 3.0, 5.5, 10.0, 20.0, 40.0)  # Tip-Adapter's sharpness; 40: close to nearest neighbours


class MultiLabelCache:
    """Base scores plus a per-class weighted vote of the training images; see the module docstring."""

    def __init__(self, alphas: Sequence[float] = DEFAULT_ALPHAS, betas: Sequence[float] = DEFAULT_BETAS,
                 base: Any = None):
        self.alphas, self.betas, self.base = alphas, betas, base

    def _base(self, X, Y, X_val, Y_val, classes, zeroshot, identity) -> tuple[np.ndarray, np.ndarray, dict, list]:
        """(coef (C, D), intercept (C,), params, sweep) of the base scorer."""
        if self.base is None:
            if zeroshot is None:
                raise ConfigError("the cache head builds on the zero-shot head; give prompts for the class names",
                                  field="method")
            coef, icpt = zeroshot.linear_form()
            return coef, icpt, {"base": "zeroshot"}, []
        head = self.base.fit(X, Y, X_val, Y_val, classes, zeroshot=zeroshot, identity=identity)
        return head.coef_, head.intercept_, {**self.base.result_.params, "base": head.method}, self.base.result_.sweep

    def fit(self, X, Y, X_val, Y_val, classes: Sequence[str], zeroshot=None, identity=None,
            **_: Any) -> MultiLabelCacheHead:
        alphas, betas = sorted({float(a) for a in self.alphas}), sorted({float(b) for b in self.betas})
        if not alphas or alphas[0] < 0 or not betas or betas[0] < 0:
            raise ConfigError(f"cache alphas {alphas} and betas {betas} must be non-empty and >= 0", field="method")
        coef, icpt, params, sweep = self._base(X, Y, X_val, Y_val, classes, zeroshot, identity)
        X, X_val, Y_val = np.asarray(X, np.float32), np.asarray(X_val, np.float32), np.asarray(Y_val)
        keys, values = X, sign_values(Y)
        base_val = X_val @ coef.T + icpt
        affinity = X_val @ keys.T
        best = None  # (val mAP, -beta, beta, per-class alphas)
        for beta in betas:
            vote = cache_vote(affinity, beta, values)
            scores = [_val_scores(base_val + a * vote, Y_val) for a in alphas]
            ap = np.nan_to_num(np.asarray([s[0] for s in scores]), nan=0.0)  # (n_alpha, C)
            loss = np.asarray([s[1] for s in scores])
            pick = [_best(ap[:, k], loss[:, k]) for k in range(len(classes))]
            val_map = float(np.mean([ap[i, k] for k, i in enumerate(pick)]))
            sweep.append({"param": "beta", "value": beta, "val_mAP": val_map,
                          "alpha_mean": float(np.mean([alphas[i] for i in pick]))})
            if best is None or val_map > best[0] + 1e-9:
                best = (val_map, beta, np.asarray([alphas[i] for i in pick]))
        _, beta, alpha = best
        params = {**params, "beta": beta, "alpha": alpha.tolist(), "n_keys": int(len(keys)),
                  "cache_alphas": alphas, "cache_betas": betas}
        head = MultiLabelCacheHead(list(classes), coef, icpt, keys, values, alpha, beta, identity=identity,
                                   method="cache", params=params)
        self.result_ = MultiLabelFit(head, params, sweep, head.decision_function(X_val))
        return head
