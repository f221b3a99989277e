"""Fitting Tip-Adapter's cache head (toolkit.heads.cache): alpha and beta by grid search on val, and
Tip-Adapter-F, which trains the keys by AdamW on the cross-entropy of the cache logits, with W, the values, alpha
and beta fixed, then searches alpha and beta again. With cached features (no augmented views), a training image
would find itself among the keys at affinity 1, so its own key is left out of its logits.

numpy, except the fine-tuning loop, which imports torch when it runs.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from toolkit.fitting.result import FitResult
from toolkit.heads.base import softmax
from toolkit.heads.cache import cache_votes, one_hot
from toolkit.runtime import torch_threads

# ---------------------------------------------------------------- choosing alpha and beta on val

def search_alpha_beta(zs_logits: np.ndarray, affinity: np.ndarray, values: np.ndarray, y: np.ndarray,
                      weight_per_alpha: float, alphas: Sequence[float], betas: Sequence[float]):
    """Grid search on val: (alpha, beta, sweep, val logits at the choice).

    zs_logits (n, C) and affinity (n, N) are the val features' zero-shot logits and cosine affinities to the
    keys; the cache term is alpha * weight_per_alpha * votes. Best val accuracy wins; ties go to the lower
    val log loss, then to the smaller alpha (closer to zero-shot).
    """
    a = np.asarray(sorted(alphas), np.float32)[:, None, None] * weight_per_alpha
    y = np.asarray(y, np.int64)
    scores = {}  # (alpha, beta) -> (accuracy, loss)
    for beta in betas:
        logits = zs_logits[None] + a * cache_votes(affinity, beta, values)[None]  # (n_alpha, n, C)
        z = logits - logits.max(axis=2, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=2, keepdims=True))
        loss = -logp[:, np.arange(len(y)), y].mean(axis=1)
        acc = (logits.argmax(axis=2) == y[None]).mean(axis=1)
        for i, alpha in enumerate(sorted(alphas)):
            scores[(float(alpha), float(beta))] = (float(acc[i]), float(loss[i]))
    alpha, beta = min(scores, key=lambda k: (-scores[k][0], scores[k][1], k[0]))
    sweep = [_best_row(scores, "alpha", v, 0) for v in sorted(alphas)] + \
        [_best_row(scores, "beta", v, 1) for v in betas]
    logits = zs_logits + alpha * weight_per_alpha * cache_votes(affinity, beta, values)
    return alpha, beta, sweep, logits


def _best_row(scores: dict, param: str, value: float, axis: int) -> dict[str, Any]:
    """The best (accuracy, then loss) grid point with `param` at `value`, as a sweep row."""
    key = min((k for k in scores if k[axis] == float(value)), key=lambda k: (-scores[k][0], scores[k][1]))
    other = ("beta", "alpha")[axis]
    return {"param": param, "value": float(value), "val_accuracy": scores[key][0], "val_loss": scores[key][1],
            other: key[1 - axis]}


def fit_cache(X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray, y_val: np.ndarray,
              zeroshot_coef: np.ndarray, logit_scale: float, cfg, finetune: bool = False) -> FitResult:
    """Tip-Adapter (keys = the training features) or, with `finetune`, Tip-Adapter-F; alpha and beta from
    cfg.cache_alphas x cfg.cache_betas on val. y are class indices 0..C-1, zeroshot_coef (C, D) in that order.
    Learned: keys_ (N, D), values_ (N, C), alpha_, beta_; the sweep holds the best val score per alpha and beta."""
    n_classes = zeroshot_coef.shape[0]
    keys, values = np.asarray(X_train, np.float32), one_hot(y_train, n_classes)
    weight = logit_scale / 100.0
    zs_val = logit_scale * (X_val @ zeroshot_coef.T)
    alpha, beta, sweep, logits = search_alpha_beta(zs_val, X_val @ keys.T, values, y_val, weight,
                                                   cfg.cache_alphas, cfg.cache_betas)
    params: dict[str, Any] = {"alpha": alpha, "beta": beta, "n_keys": int(len(keys)), "finetune": finetune}
    if finetune:
        keys, info = finetune_keys(keys, values, X_train, y_train, X_val, y_val, zeroshot_coef, logit_scale,
                                   alpha if alpha > 0 else 1.0, beta, cfg)
        params.update({f"search_{k}": v for k, v in (("alpha", alpha), ("beta", beta))}, **info)
        alpha, beta, sweep, logits = search_alpha_beta(zs_val, X_val @ keys.T, values, y_val, weight,
                                                       cfg.cache_alphas, cfg.cache_betas)
        params.update(alpha=alpha, beta=beta)
    return FitResult({"keys_": keys, "values_": values, "alpha_": alpha, "beta_": beta}, params, sweep,
                     softmax(logits))


# ---------------------------------------------------------------- Tip-Adapter-F: the keys fine-tuned

def finetune_keys(keys: np.ndarray, values: np.ndarray, X_train: np.ndarray, y_train: np.ndarray,
                  X_val: np.ndarray, y_val: np.ndarray, zeroshot_coef: np.ndarray, logit_scale: float,
                  alpha: float, beta: float, cfg) -> tuple[np.ndarray, dict[str, Any]]:
    """Train the keys (Tip-Adapter-F: AdamW, lr cfg.cache_lr, eps 1e-4, cosine schedule over cfg.cache_epochs,
    batches of cfg.batch_size) with alpha and beta fixed; keep the keys of the epoch with the best val
    accuracy (ties: lower val loss; the untrained keys included), stop after cfg.patience epochs without a
    better one. On one CPU thread: batches this small gain nothing from more. Returns (keys, what happened)."""
    import torch

    t = {k: torch.from_numpy(np.ascontiguousarray(v, np.float32)) for k, v in
         (("xt", X_train), ("xv", X_val), ("values", values), ("W", zeroshot_coef))}
    yt, yv = torch.from_numpy(np.asarray(y_train, np.int64)), torch.from_numpy(np.asarray(y_val, np.int64))
    zs_t, zs_v = logit_scale * t["xt"] @ t["W"].T, logit_scale * t["xv"] @ t["W"].T
    w = alpha * logit_scale / 100.0
    with torch_threads(1):
        torch.manual_seed(cfg.seed)
        param = torch.nn.Parameter(torch.from_numpy(np.array(keys, np.float32)))
        with torch.no_grad():
            start = _val_score(t["xv"], yv, zs_v, param, t["values"], w, beta)
        best, best_keys, epochs, since = start, param.detach().clone(), 0, 0
        for epochs, score in enumerate(_train_epochs(param, t, yt, zs_t, w, beta, cfg, yv, zs_v), 1):
            if (score[0], -score[1]) > (best[0], -best[1]):
                best, best_keys, since = score, param.detach().clone(), 0
            else:
                since += 1
                if since >= cfg.patience:
                    break
    return best_keys.numpy(), {"finetune_epochs": epochs, "finetune_best_val_accuracy": best[0],
                               "finetune_start_val_accuracy": start[0], "finetune_lr": cfg.cache_lr}


def _train_epochs(param, t: dict, yt, zs_t, w: float, beta: float, cfg, yv, zs_v):
    """Yield (val accuracy, val loss) after each epoch of training `param` (the keys) in place. A training row's
    own key is left out of its logits (it would match itself at affinity 1 and teach nothing)."""
    import torch
    from torch.nn import functional as F

    opt = torch.optim.AdamW([param], lr=cfg.cache_lr, eps=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.cache_epochs)
    n = len(yt)
    gen = torch.Generator().manual_seed(cfg.seed)
    for _ in range(cfg.cache_epochs):
        for rows in torch.randperm(n, generator=gen).split(min(cfg.batch_size, n)):
            votes = torch.exp(-beta * (1 - t["xt"][rows] @ param.T))
            votes = votes.index_put((torch.arange(len(rows)), rows), torch.zeros(len(rows)))
            loss = F.cross_entropy(zs_t[rows] + w * votes @ t["values"], yt[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        with torch.no_grad():
            yield _val_score(t["xv"], yv, zs_v, param, t["values"], w, beta)


def _val_score(xv, yv, zs_v, keys, values, w: float, beta: float) -> tuple[float, float]:
    """(accuracy, log loss) of the cache logits on val, in torch."""
    import torch
    from torch.nn import functional as F

    logits = zs_v + w * torch.exp(-beta * (1 - xv @ keys.T)) @ values
    return float((logits.argmax(1) == yv).float().mean()), float(F.cross_entropy(logits, yv))
