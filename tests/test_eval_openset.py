"""scripts/eval_openset.py's core on synthetic features: known classes around orthogonal means, unknowns either
on an axis of their own (separable) or drawn from a known class (indistinguishable)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import eval_openset  # noqa: E402

from toolkit.config import ProbeConfig  # noqa: E402
from toolkit.heads.zeroshot import ZeroShotHead  # noqa: E402

DIM, N_KNOWN = 16, 3
METHODS = ["zeroshot", "logreg", "cache", "blend", "auto"]  # linear and cache-f train with torch loops: slower


def cloud(rng, axis: int, n: int, noise: float = 1.6) -> np.ndarray:
    """n unit vectors around basis vector `axis`."""
    x = np.eye(DIM)[axis] + noise * rng.normal(size=(n, DIM)) / np.sqrt(DIM)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def known_splits(rng) -> dict:
    out = {}
    for split, n in (("train", 20), ("val", 30), ("test", 30)):
        out[split] = (np.concatenate([cloud(rng, c, n) for c in range(N_KNOWN)]), np.repeat(np.arange(N_KNOWN), n))
    assert 0 < (out["val"][0][:, :N_KNOWN].argmax(axis=1) != out["val"][1]).sum()  # some errors: T can be fitted
    return out


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    known = known_splits(rng)
    # an over-confident zero-shot head: the right directions, a logit scale far too large for this noise
    zs = ZeroShotHead([f"class {c}" for c in range(N_KNOWN)], ["{}"], np.eye(DIM)[:N_KNOWN], 60.0)
    separable = (np.concatenate([cloud(rng, 5, 40, 0.6), cloud(rng, 6, 40, 0.6)]), np.repeat(["five", "six"], 40))
    hidden = (cloud(rng, 0, 80), np.repeat(["like class 0"], 80))  # the same distribution as known class 0
    cfg = ProbeConfig(c_grid=[0.1, 1.0, 10.0], cache_alphas=[0.0, 1.0, 5.0], cache_betas=[1.0, 5.0])
    return known, separable, hidden, zs, cfg


def test_metrics_in_range_and_separable_unknowns_detected(problem):
    known, separable, _, zs, cfg = problem
    res = eval_openset.evaluate(METHODS, known, separable, zs, cfg, target_precision=0.9)
    assert list(res) == METHODS and res["auto"]["chosen"] in METHODS[:-1]
    for name, r in res.items():
        assert r["temperature"] > 0
        for when in ("before", "after"):
            m = r[when]
            assert 0 <= m["ece"] <= 1 and m["nll"] >= 0 and 0 <= m["brier"] <= 2, (name, when, m)
            for k in ("coverage", "unknown_rejected", "auroc", "threshold"):
                assert 0 <= m[k] <= 1, (name, when, k, m[k])
            assert m["accepted_accuracy"] is None or 0 <= m["accepted_accuracy"] <= 1
            assert m["auroc"] > 0.8, (name, when, m["auroc"])  # unknowns on their own axes: low top probability
            assert set(m["unknown_rejected_by_class"]) == {"five", "six"}
    zs_res = res["zeroshot"]
    assert zs_res["temperature"] > 1  # over-confident: T > 1 softens it ...
    assert zs_res["after"]["nll"] < zs_res["before"]["nll"]  # ... and held-out NLL falls


def test_unknowns_from_a_known_distribution_are_not_detected(problem):
    known, _, hidden, zs, cfg = problem
    res = eval_openset.evaluate(["zeroshot", "logreg"], known, hidden, zs, cfg, target_precision=0.9)
    for name, r in res.items():
        assert 0.3 < r["after"]["auroc"] < 0.7, (name, r["after"]["auroc"])  # chance: nothing tells them apart
        assert r["after"]["unknown_taken_as"]["like class 0"] == "class 0"


def test_split_known_keeps_unknowns_out_of_every_split():
    X = np.arange(12, dtype=np.float32).reshape(6, 2)
    data = {"train": (X[:4], ["a", "b", "c", "a"]), "test": (X[4:], ["c", "b"])}
    known, (ux, uk) = eval_openset.split_known(data, ["b", "a"])
    assert known["train"][1].tolist() == [1, 0, 1] and known["test"][1].tolist() == [0]
    assert uk.tolist() == ["c", "c"] and ux.tolist() == [[4.0, 5.0], [8.0, 9.0]]


def test_write_keeps_one_subsection_per_known_set_under_the_section(tmp_path):
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n\n## Other\n\ntext\n")
    eval_openset.write(doc, ["a", "b"], eval_openset.subsection(["a", "b"]) + "\n\nfirst ab\n")
    doc.write_text(doc.read_text() + "\n## Later\n\nlater\n")  # another script's section after ours
    eval_openset.write(doc, ["c", "d"], eval_openset.subsection(["c", "d"]) + "\n\ncd\n")
    eval_openset.write(doc, ["a", "b"], eval_openset.subsection(["a", "b"]) + "\n\nsecond ab\n")
    text = doc.read_text()
    assert text.count(eval_openset.SECTION) == 1 and text.count("### 2 known classes: a, b") == 1
    assert "first ab" not in text and "## Other\n\ntext" in text
    # the new known set lands after the first one, inside our section, before the later one
    assert text.index(eval_openset.SECTION) < text.index("second ab") < text.index("cd") < text.index("## Later")


def test_detectors_are_scored_per_head_with_the_heldout_pick(problem):
    """Issue 22: every out-of-set detector on known test vs unknown, and the held-out-class pick (a kNN setting)."""
    known, separable, _, zs, cfg = problem
    res = eval_openset.evaluate(["zeroshot", "logreg"], known, separable, zs, cfg, detectors=True)
    for name, r in res.items():
        d = r["detectors"]
        assert d["pick"].startswith(("knn(", "combined(", "combined_rel(")) and d["pick"] in d["test"] and d["pick_any"] in d["heldout"]
        assert set(d["test"]) == set(d["heldout"])  # the same candidates, held out and on test
        assert {n.split("(")[0] for n in d["test"]} >= {"knn", "combined", "mahalanobis", "energy", "mcm"}
        assert d["test"][d["pick"]]["auroc"] > 0.8, (name, d["test"][d["pick"]])  # unknowns on axes of their own
        op = d["operating"]
        assert 0.8 <= op["known_kept"] <= 1 and set(op["unknown_rejected_by_class"]) == {"five", "six"}
    # the head-independent figures recomputed without a head (--refresh-detectors): the same pick and feature /
    # text rows as with one, and refresh() keeps each head's own logit rows
    import _detectors
    from _tables import cells

    shared = _detectors.detector_eval(None, known, separable, zs.coef_, None, seed=cfg.seed, classes=zs.classes_)
    assert not any(n.split("(")[0] in _detectors.LOGIT_SCORES for n in shared["test"])
    for name, r in res.items():
        new = _detectors.refresh(r["detectors"], shared)
        assert new == r["detectors"]  # nothing changed in between, so nothing moves
    doc = {"runs": {"16": [res]}}
    assert [m for _, _, m in cells(doc, "detectors")] == ["zeroshot", "logreg"]
    assert "**2/2**" in _detectors.detectors_table(doc)  # a head-independent pick: one row, both heads' picks
