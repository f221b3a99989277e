"""toolkit.labeling: what to label next, the audit, the labels.csv session rules, and `clipkit label|suggest|audit`
end to end (real tiny open_clip model, real files, a real `clipkit label` process killed with SIGKILL)."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from toolkit.errors import DataError
from toolkit.labeling import suggest
from toolkit.labeling.audit import audit, estimated_errors, label_issues, near_duplicates
from toolkit.labeling.model import choose_c
from toolkit.labeling.session import NONE, SKIP, LabelSession, SessionLocked

CLASSES = ["red", "green", "blue"]
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def blobs(n_per: int, centres: int, dim: int = 16, spread: float = 0.05, seed: int = 0):
    """Unit rows around `centres` random directions: (X, y)."""
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=(centres, dim))
    X = np.concatenate([m + spread * np.linalg.norm(m) * rng.normal(size=(n_per, dim)) for m in mu])
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32), np.repeat(np.arange(centres), n_per)


def colour_images(root: Path, n_per: int) -> dict[str, list[str]]:
    """{class: [paths]}: `n_per` small images per colour class in root/<class>/, each with its own noise and shape."""
    rng = np.random.default_rng(1)
    out = {}
    for c in CLASSES:
        (root / c).mkdir(parents=True)
        out[c] = []
        for i in range(n_per):
            arr = np.clip(np.array(COLOURS[c]) + rng.normal(0, 25, (40, 40, 3)), 0, 255).astype("uint8")
            arr[rng.integers(0, 30):, rng.integers(0, 30):] //= 2  # a darker corner somewhere
            p = root / c / f"{c}{i}.png"
            Image.fromarray(arr).save(p)
            out[c].append(str(p))
    return out


def embed(files: list[str], extractor, out: Path):
    from toolkit.data.datasets import unlabelled_dataset
    from toolkit.data.extraction import extract_store

    return extract_store(extractor, unlabelled_dataset(files), out)


def tiny_yaml(tiny_model, folder: Path) -> Path:
    cfg = folder / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"name": tiny_model["config"], "pretrained": tiny_model["checkpoint"],
                                             "device": "cpu", "num_workers": 0, "precision": "fp32"},
                                   "tracking": {"enabled": False}}))
    return cfg


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, list[str]]:
    return colour_images(tmp_path_factory.mktemp("label") / "imgs", 8)


@pytest.fixture(scope="module")
def store(images, tiny_extractor, tmp_path_factory):
    return embed([p for c in CLASSES for p in images[c]], tiny_extractor, tmp_path_factory.mktemp("store") / "emb")


@pytest.fixture(scope="module")
def model_yaml(tiny_model, tmp_path_factory) -> Path:
    return tiny_yaml(tiny_model, tmp_path_factory.mktemp("cfg"))


# ---------------------------------------------------------------- what to label next


def test_typical_picks_one_dense_member_per_cluster_before_any_label():
    X, y = blobs(20, 6)
    picks = suggest.pick(X, {}, 6, "typical", seed=0)
    assert sorted(y[picks]) == list(range(6))  # six clusters, one pick each
    for r in picks:  # the densest member: its mean distance to its cluster is below the cluster's median
        members = X[y == y[r]]
        d = np.linalg.norm(members - X[r], axis=1).mean()
        assert d <= np.median([np.linalg.norm(members - m, axis=1).mean() for m in members])


def test_typical_skips_clusters_that_already_have_labels():
    X, y = blobs(20, 4)
    labelled = {int(np.flatnonzero(y == 0)[0]): 0, int(np.flatnonzero(y == 1)[0]): 1}
    picks = suggest.pick(X, labelled, 2, "typical", seed=0)
    assert sorted(y[picks]) == [2, 3]


def test_margin_picks_the_least_sure_rows_and_keeps_them_diverse():
    X, y = blobs(30, 3)
    proba = np.tile([0.9, 0.05, 0.05], (len(X), 1))
    unsure = [5, 6, 35, 36]  # two near-ties in cluster 0, two in cluster 1
    proba[unsure] = [0.5, 0.49, 0.01]
    picks = suggest.pick(X, {0: 0, 30: 1}, 2, "margin", proba, seed=0)
    assert set(picks) <= set(unsure) and {int(y[p]) for p in picks} == {0, 1}  # one per cluster, not both from one


def test_margin_diversity_never_takes_a_sure_row_over_an_unsure_one():
    X, y = blobs(30, 3)
    proba = np.tile([0.9, 0.05, 0.05], (len(X), 1))
    proba[30:60] = [0.6, 0.4, 0.0]  # cluster 1: fairly sure throughout
    unsure = [5, 6, 7, 8, 9, 10]  # cluster 0: six near-ties
    proba[unsure] = [[0.5 - e, 0.5 + e, 0.0] for e in (0.005, 0.01, 0.015, 0.02, 0.025, 0.03)]
    picks = suggest.pick(X, {0: 0, 61: 2}, 2, "margin", proba, seed=0)
    assert set(picks) <= set(unsure)  # spread among the 3 x budget least sure rows, not into cluster 1


def test_auto_moves_from_typical_to_margin_and_random_is_seeded():
    X, y = blobs(10, 3)
    assert suggest.auto_strategy({}, 3) == "typical"
    assert suggest.auto_strategy({i: int(y[i]) for i in (0, 10, 20)}, 3) == "margin"
    a = suggest.pick(X, {}, 5, "random", seed=3)
    assert a == suggest.pick(X, {}, 5, "random", seed=3) and a != suggest.pick(X, {}, 5, "random", seed=4)
    assert suggest.pick(X, {i: 0 for i in range(30)}, 5, "random") == []  # nothing left to label
    with pytest.raises(Exception, match="unknown strategy 'best'; choose from auto"):
        suggest.pick(X, {}, 5, "best")


# ---------------------------------------------------------------- audit


def test_confident_learning_finds_planted_flips():
    X, y = blobs(30, 4, spread=0.2, seed=2)
    rng = np.random.default_rng(0)
    flipped = rng.choice(len(y), 12, replace=False)  # 10%
    noisy = y.copy()
    noisy[flipped] = (y[flipped] + rng.integers(1, 4, len(flipped))) % 4
    proba = choose_c(X, noisy, 4, grid=(0.3, 3.0, 30.0))[1]
    ranked, suggested, _ = label_issues(proba, noisy)
    hits = np.isin(ranked, flipped).sum()
    assert hits / len(ranked) >= 0.8 and hits / len(flipped) >= 0.8
    assert (suggested[flipped] == y[flipped]).mean() >= 0.8  # and says what the label should have been
    assert 9 <= estimated_errors(proba, noisy) <= 16  # confident learning's count of the 12 flips
    assert estimated_errors(np.eye(4)[noisy] * 0.9 + 0.025, noisy) == 0  # a head agreeing with every label


def test_near_duplicates_find_reencoded_resized_and_cropped_copies_and_no_false_pair(images, tiny_extractor,
                                                                                     tmp_path):
    from toolkit.demo.dataset import render_image

    originals = []
    for i, key in enumerate(["squat", "squat", "plank", "plank", "lunge", "standing"]):
        img, _ = render_image(key, np.random.default_rng(i), 96)
        originals.append(tmp_path / f"o{i}.png")
        img.save(originals[-1])
    copies = []
    for i, make in enumerate([lambda im: im, lambda im: im.resize((64, 64)),
                              lambda im: im.crop((5, 5, 96, 96))]):
        with Image.open(originals[i]) as im:
            copies.append(tmp_path / f"c{i}.jpg")
            make(im.convert("RGB")).save(copies[-1], quality=80)
    paths = [str(p) for p in originals + copies]
    X, _ = tiny_extractor.encode_paths(paths)
    found = {(d["a"], d["b"]) for d in near_duplicates(X, paths)}
    assert found == {(0, 6), (1, 7), (2, 8)}


def test_audit_report_ranks_flips_and_marks_leaks():
    X, y = blobs(20, 3, spread=0.2, seed=1)
    labels = [CLASSES[i] for i in y]
    labels[3], labels[25] = "blue", "red"  # two planted flips
    X = np.concatenate([X, X[[7]]])  # row 60: an exact copy of row 7, in test
    labels.append(labels[7])
    splits = ["train"] * 60 + ["test"]
    rep = audit(X, labels, CLASSES, [f"img{i}" for i in range(61)], splits)
    assert {r["row"] for r in rep.issues[:2]} == {3, 25}
    assert rep.issues[0]["suggested"] != rep.issues[0]["given"]
    leak = [d for d in rep.duplicates if {d["row_a"], d["row_b"]} == {7, 60}]
    assert leak and leak[0]["kind"] == "leak" and rep.summary["leaking_pairs"] >= 1  # unreadable files: features
    with pytest.raises(DataError, match="label 'purple' is not one of the classes"):
        audit(X, labels[:-1] + ["purple"], CLASSES, [f"img{i}" for i in range(61)], splits)


# ---------------------------------------------------------------- labels.csv rules


def _session(csv_path, images) -> LabelSession:
    return LabelSession(csv_path, [p for c in CLASSES for p in images[c]], CLASSES)


def _rows(csv_path) -> list[dict[str, str]]:
    with open(csv_path, newline="") as f:
        return list(csv.DictReader(f))


def test_answers_are_written_at_once_undo_and_resume(images, tmp_path):
    out = tmp_path / "labels.csv"
    red0, red1, blue0 = images["red"][0], images["red"][1], images["blue"][0]
    with _session(out, images) as s:
        s.answer(red0, "red")
        assert _rows(out) == [{"path": os.path.relpath(red0, tmp_path), "label": "red"}]  # before answer returns
        s.answer(red1, NONE)
        s.answer(blue0, SKIP)
        s.answer(red0, "green")  # changed its mind
        assert s.undo()["after"] == "green" and s.labels[red0] == "red"
    with _session(out, images) as s:  # resumed: labels from the CSV, the rest from the sidecar
        assert s.labels == {red0: "red"} and s.none == {red1} and s.skipped == [blue0]
        assert s.undo()["path"] == blue0 and s.undo()["path"] == red1 and s.undo()["path"] == red0
        assert s.undo() is None and _rows(out) == []


def test_a_second_session_on_the_same_csv_is_refused(images, tmp_path):
    with _session(tmp_path / "labels.csv", images):
        with pytest.raises(SessionLocked, match="already open in another labelling page .*pid"):
            _session(tmp_path / "labels.csv", images).open()
    _session(tmp_path / "labels.csv", images).open().close()  # free again once the first one closed


@pytest.mark.parametrize("text, match", [
    ("path,label\nnowhere.png,red\n", "line 2: 'nowhere.png' does not exist"),
    ("path,label\nimgs/red/red0.png,purple\n", "line 2: label 'purple' is not one of the labels"),
    ("path,label\nimgs/red/red0.png,red\nimgs/red/red0.png,blue\n", "lines 2 and 3 give 'imgs/red/red0.png' two"),
    ("file,class\nimgs/red/red0.png,red\n", "needs a header with 'path' and 'label'"),
])
def test_bad_csv_rows_get_one_line_naming_the_line(images, text, match):
    out = Path(images["red"][0]).parents[2] / "bad.csv"
    out.write_text(text)
    try:
        with pytest.raises(DataError, match=match):
            _session(out, images).open()
        assert out.read_text() == text  # nothing rewritten
    finally:
        out.unlink()


def test_duplicates_are_merged_foreign_rows_kept_and_formulas_defused(images, tmp_path):
    other = tmp_path / "elsewhere.png"
    Image.new("RGB", (8, 8)).save(other)
    out = tmp_path / "labels.csv"
    rel = os.path.relpath(images["red"][0], tmp_path)
    out.write_text(f"path,label\n{rel},red\n{rel},red\nelsewhere.png,=HYPERLINK(1)\n")
    with _session(out, images) as s:
        assert any("1 duplicate row(s) merged" in n for n in s.notes)
        assert any("outside the ones being labelled" in n for n in s.notes)
        s.answer(images["blue"][0], "blue")
    rows = _rows(out)
    assert [r["label"] for r in rows] == ["'=HYPERLINK(1)", "red", "blue"]  # kept, no formula, merged


def test_an_edit_while_the_page_runs_is_kept_and_a_broken_edit_refuses_the_answer(images, tmp_path):
    out = tmp_path / "labels.csv"
    with _session(out, images) as s:
        s.answer(images["red"][0], "red")
        time.sleep(0.01)  # a later mtime (the stamp is mtime + size)
        with open(out, "a") as f:
            f.write(f"{os.path.relpath(images['green'][0], tmp_path)},green\n")
        s.answer(images["blue"][0], "blue")
        assert {r["label"] for r in _rows(out)} == {"red", "green", "blue"}  # the edit survived
        out.write_text(out.read_text() + f"{os.path.relpath(images['green'][1], tmp_path)},teal\n")
        with pytest.raises(DataError, match="label 'teal' is not one of the labels"):
            s.answer(images["blue"][1], "blue")
        assert "teal" in out.read_text() and "blue1" not in out.read_text()


# ---------------------------------------------------------------- commands


def test_suggest_and_audit_commands(store, images, model_yaml, tmp_path):
    from toolkit.cli import main

    runner = CliRunner()
    labelled = tmp_path / "labels.csv"
    labelled.write_text("path,label\n" + "".join(f"{p},{c}\n" for c in CLASSES for p in images[c][:2]))
    args = ["--config", str(model_yaml), *sum((["--label", c] for c in CLASSES), [])]
    r = runner.invoke(main, ["suggest", str(store.path), "--budget", "4", "--labelled", str(labelled),
                             "--format", "json", *args])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["strategy"] == "margin" and doc["labelled"] == 6 and len(doc["results"]) == 4
    done = {p for c in CLASSES for p in images[c][:2]}
    assert not done & {x["path"] for x in doc["results"]}
    r = runner.invoke(main, ["suggest", str(store.path), "--strategy", "best", *args])
    assert r.exit_code == 2 and "'best' is not one of" in r.output

    manifest = tmp_path / "manifest.csv"
    rows = [(p, c, "train" if i < 5 else "test") for c in CLASSES for i, p in enumerate(images[c])]
    rows[0] = (rows[0][0], "blue", "train")  # one planted flip
    manifest.write_text("path,label,split\n" + "".join(f"{p},{c},{s}\n" for p, c, s in rows))
    sheet_dir = tmp_path / "audit"
    r = runner.invoke(main, ["audit", str(manifest), "--config", str(model_yaml), "--store", str(tmp_path / "st"),
                             "--out", str(sheet_dir), "--format", "json", "--no-track", "--folds", "3"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["summary"]["labelled"] == 24 and rep["summary"]["rows"] == 24
    assert isinstance(rep["summary"]["estimated_errors"], int)
    assert {"audit.json", "issues.csv", "duplicates.csv", "outliers.csv", "contact_sheet.png"} <= \
        {p.name for p in sheet_dir.iterdir()}
    assert Image.open(sheet_dir / "contact_sheet.png").size[0] > 100
    r = runner.invoke(main, ["audit", str(manifest), "--config", str(model_yaml), "--store", str(tmp_path / "st"),
                             "--no-track", "--folds", "3"])  # the table: the estimate beside the flagged count
    assert r.exit_code == 0 and f"estimates {rep['summary']['estimated_errors']} mislabelled rows" in r.output


def label_process(store, model_yaml, out: Path, port: int) -> subprocess.Popen:
    """`clipkit label STORE --out OUT --port PORT` with the three colour labels, as a real process."""
    args = [sys.executable, "-c", "from toolkit.cli import main; main()", "label", str(store.path), "--out", str(out), "--port", str(port),
            "--config", str(model_yaml), *sum((["--label", c] for c in CLASSES), [])]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_up(proc, url: str) -> None:
    import httpx

    for _ in range(1200):
        if proc.poll() is not None:
            raise AssertionError(f"clipkit label exited {proc.returncode}: {proc.stdout.read()}")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("clipkit label did not come up")


@pytest.mark.slow
def test_kill_9_between_answers_loses_nothing_and_a_second_page_is_refused(store, model_yaml, tmp_path):
    """A real `clipkit label` answering over HTTP, killed with SIGKILL right after its fifth answer."""
    import httpx

    from toolkit.serve.process import free_port

    out = tmp_path / "labels.csv"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = label_process(store, model_yaml, out, port)
    try:
        wait_up(proc, url)
        # DNS rebinding and cross-site posts: a foreign Host or another page's Origin is refused, nothing written
        row = httpx.get(url + "/api/state").json()["item"]["row"]
        assert httpx.get(url + "/api/state", headers={"Host": "evil.example"}).status_code == 400
        crossed = httpx.post(url + "/api/answer", json={"row": row, "answer": CLASSES[0]},
                             headers={"Origin": "http://evil.example"})
        assert crossed.status_code == 403 and "cors_origins" in crossed.json()["error"]["message"]
        assert not out.exists() or not _rows(out)
        second = label_process(store, model_yaml, out, free_port())
        assert second.wait(timeout=300) == 2
        assert "is already open in another labelling page" in second.stdout.read()
        given = {}
        for k in range(5):
            item = httpx.get(url + "/api/state").json()["item"]
            label = CLASSES[k % 3]
            assert httpx.post(url + "/api/answer", json={"row": item["row"], "answer": label}).status_code == 200
            given[item["path"]] = label
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    rows = {str((tmp_path / r["path"]).resolve()): r["label"] for r in _rows(out)}
    assert rows == {str(Path(p).resolve()): lb for p, lb in given.items()}
    with LabelSession(out, list(store.paths), CLASSES) as s:  # no stale lock after SIGKILL; all five answers there
        assert {str(Path(p).resolve()): lb for p, lb in s.labels.items()} == \
            {str(Path(p).resolve()): lb for p, lb in given.items()}
