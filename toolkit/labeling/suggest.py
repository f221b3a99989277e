"""What to label next: `pick(features, labelled, budget, strategy)` -> row indices, best first.

    random   uniform over the unlabelled rows (the baseline)
    typical  TypiClust (Hacohen et al., 2022): KMeans with |labelled| + budget clusters; from the largest clusters
             that hold no label yet, the member of highest typicality (inverse mean distance to its nearest
             neighbours in the cluster). The cold start: dense, diverse picks before any label exists.
    margin   the current head's smallest top-1 minus top-2 probability, kept diverse: the 3 x budget lowest
             margins are clustered into `budget` groups (KMeans) and each gives its lowest-margin row.
    auto     typical until every class has AUTO_SWITCH labels or there are AUTO_SWITCH labels per class in all,
             then margin (on frozen CLIP features centroid picks fix the cold start and margin is strong at low
             budgets: Gupte et al., TMLR 2024).

Features are (n, D) L2-normalized rows (a feature store's); `labelled` maps row -> class index.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

from toolkit.errors import ConfigError

STRATEGIES = ("auto", "typical", "margin", "random")
AUTO_SWITCH = 1  # auto: labels per class (on average) before margin takes over from typical
TYPICAL_NEIGHBOURS = 20  # neighbours of a row's typicality (TypiClust's k)
MAX_CLUSTERS = 500  # typical: more clusters than this are not worth their KMeans time; MiniBatchKMeans above 5000 rows
MARGIN_POOL = 3  # margin: the budget x this lowest margins are clustered for diversity (10 lost ~6 points at
# 72 labels on the novel suite: picks crowd into the few classes the head is least sure of; eval_labeling.py)


def pick(features: np.ndarray, labelled: Mapping[int, int], budget: int, strategy: str = "auto",
         proba: Optional[np.ndarray] = None, n_classes: Optional[int] = None, seed: int = 0,
         exclude: Sequence[int] = ()) -> list[int]:
    """Up to `budget` unlabelled row indices to label next, best first.

    `proba` is the current head's (n, C) probabilities over every row (margin and auto need it once labels
    exist; see labeling.model.current_proba). `n_classes` (auto) is the size of the label set. Rows in `exclude`
    (answered "none of these", skipped) are not picked."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy '{strategy}'; choose from {', '.join(STRATEGIES)}")
    if budget < 1:
        raise ConfigError(f"budget {budget} must be at least 1")
    X = np.asarray(features, np.float32)
    taken = np.fromiter(labelled.keys(), int, len(labelled))
    pool = np.setdiff1d(np.arange(len(X)), np.concatenate([taken, np.asarray(list(exclude), int)]))
    if len(pool) == 0:
        return []
    budget = min(budget, len(pool))
    if strategy == "auto":
        strategy = auto_strategy(labelled, n_classes or (proba.shape[1] if proba is not None else 0))
    if strategy == "random":
        return [int(i) for i in np.random.default_rng(seed).permutation(pool)[:budget]]
    if strategy == "margin":
        if proba is None:
            raise ConfigError("strategy 'margin' needs the current head's probabilities (labels or zero-shot)")
        return margin_picks(X, pool, np.asarray(proba), budget, seed)
    return typical_picks(X, taken, pool, budget, seed)


def auto_strategy(labelled: Mapping[int, int], n_classes: int) -> str:
    """'typical' while there are fewer than AUTO_SWITCH labels per class or under two classes labelled, else 'margin'."""
    classes = set(labelled.values())
    if len(classes) < 2 or len(labelled) < AUTO_SWITCH * max(n_classes, 2):
        return "typical"
    return "margin"


def margins(proba: np.ndarray) -> np.ndarray:
    """(n,) top-1 minus top-2 probability of (n, C) rows (0: a tie, 1: certain)."""
    top2 = np.sort(proba, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def margin_picks(X: np.ndarray, pool: np.ndarray, proba: np.ndarray, budget: int, seed: int) -> list[int]:
    """The lowest-margin rows of `pool`, one per KMeans cluster of the MARGIN_POOL x budget lowest."""
    m = margins(proba[pool])
    order = pool[np.argsort(m, kind="stable")]
    cand = order[:min(len(order), MARGIN_POOL * budget)]
    if len(cand) <= budget:
        return [int(i) for i in cand]
    groups = _kmeans(X[cand], budget, seed)
    rank = {int(r): k for k, r in enumerate(cand)}  # position in margin order
    best: dict[int, int] = {}
    for row, g in zip(cand, groups):
        if g not in best or rank[int(row)] < rank[best[g]]:
            best[g] = int(row)
    return sorted(best.values(), key=rank.__getitem__)


def typicality(X: np.ndarray, k: int = TYPICAL_NEIGHBOURS) -> np.ndarray:
    """(n,) 1 / mean Euclidean distance to each row's k nearest neighbours among the rows of X (higher: denser)."""
    from sklearn.neighbors import NearestNeighbors

    if len(X) < 2:
        return np.ones(len(X))
    k = min(k, len(X) - 1)
    dist, _ = NearestNeighbors(n_neighbors=k + 1).fit(X).kneighbors(X)
    return 1.0 / (dist[:, 1:].mean(axis=1) + 1e-8)


def typical_picks(X: np.ndarray, labelled: np.ndarray, pool: np.ndarray, budget: int, seed: int) -> list[int]:
    """TypiClust: cluster all rows into |labelled| + budget groups; the largest groups without a label (then
    those with the fewest labels) each give their most typical unlabelled row."""
    n_clusters = int(min(len(labelled) + budget, MAX_CLUSTERS, len(X)))
    groups = _kmeans(X, n_clusters, seed)
    members = [np.flatnonzero(groups == g) for g in range(n_clusters)]
    n_open = np.bincount(groups[pool], minlength=n_clusters)
    n_lab = np.bincount(groups[labelled], minlength=n_clusters) if len(labelled) else np.zeros(n_clusters, int)
    sizes = np.bincount(groups, minlength=n_clusters)
    typ: dict[int, np.ndarray] = {}  # group -> typicality of its members; -inf once taken or labelled
    picks: list[int] = []
    while len(picks) < budget and n_open.any():
        g = min(np.flatnonzero(n_open), key=lambda c: (n_lab[c], -sizes[c], c))
        if g not in typ:
            typ[g] = typicality(X[members[g]])
            typ[g][~np.isin(members[g], pool)] = -np.inf
        j = int(np.argmax(typ[g]))
        picks.append(int(members[g][j]))
        typ[g][j] = -np.inf
        n_open[g] -= 1
        n_lab[g] += 1
    return picks


def _kmeans(X: np.ndarray, k: int, seed: int) -> np.ndarray:
    """(n,) cluster index of each row: KMeans, MiniBatchKMeans over 5000 rows."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    k = max(1, min(k, len(X)))
    est = MiniBatchKMeans(k, random_state=seed, n_init=3, batch_size=2048) if len(X) > 5000 \
        else KMeans(k, random_state=seed, n_init=1)
    return est.fit_predict(np.asarray(X, np.float64))
