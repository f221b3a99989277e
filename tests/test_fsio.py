"""toolkit.fsio: atomic writes whose files and folders others can read (the umask decides, not mkstemp's 0600)."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from toolkit import fsio
from toolkit.config import ProbeConfig
from toolkit.fitting.probe import train_probe
from toolkit.heads.linear import LinearProbe
from toolkit.data.store import write_store

IDENTITY = {"model": "synthetic", "pretrained": None, "weights_sha256": None, "embed_dim": 8, "image_size": [8, 8],
            "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic", "resize_mode": "shortest", "extra": {}}


@pytest.fixture()
def umask():
    """Set the process umask for one test: umask(0o022); the old one comes back afterwards."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def modes(root: Path) -> tuple[set[int], set[int]]:
    """({modes of root and every folder below}, {modes of every file below})."""
    dirs, files = {stat.S_IMODE(root.stat().st_mode)}, set()
    for p in root.rglob("*"):
        (dirs if p.is_dir() else files).add(stat.S_IMODE(p.stat().st_mode))
    return dirs, files


def synthetic_store(path: Path):
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 30)
    x = rng.normal(size=(60, 8)) + 2 * y[:, None]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    splits = np.tile(["train"] * 6 + ["val"] * 2 + ["test"] * 2, 6)
    return write_store(path, x, [f"c{i}" for i in y], splits, IDENTITY)


def test_umask_is_read_without_changing_it(umask):
    umask(0o027)
    assert fsio.current_umask() == 0o027 and fsio.current_umask() == 0o027
    assert fsio.file_mode() == 0o640 and fsio.dir_mode() == 0o750


def test_store_head_and_report_are_0644_files_in_0755_folders(umask, tmp_path):
    umask(0o022)
    store = synthetic_store(tmp_path / "store")
    result = train_probe(store, ProbeConfig(c_grid=[1.0]), report_dir=tmp_path / "report")
    result.head.save(tmp_path / "head")
    for name, expected_files in [("store", {"features.npy", "index.csv", "meta.json"}),
                                 ("head", {"head.json", "head.safetensors"}),
                                 ("report", {"report.json", "confusion_matrix.png", "predictions.csv"})]:
        assert expected_files <= {p.name for p in (tmp_path / name).iterdir()}, name
        assert modes(tmp_path / name) == ({0o755}, {0o644}), name


def test_a_stricter_umask_is_honoured_too(umask, tmp_path):
    umask(0o077)
    LinearProbe(["a", "b"], np.eye(2, 8)).save(tmp_path / "head")
    fsio.write_text(tmp_path / "note.txt", "x")
    assert modes(tmp_path / "head") == ({0o700}, {0o600})
    assert stat.S_IMODE((tmp_path / "note.txt").stat().st_mode) == 0o600


def test_generated_demo_data_is_readable_by_others(umask, tmp_path):
    from toolkit.demo import MAIN_CLASSES
    from toolkit.demo.dataset import write_imagefolder

    umask(0o022)
    write_imagefolder(tmp_path / "demo", n_per_class=4, seed=0, classes=list(MAIN_CLASSES)[:2], size=32)
    dirs, files = modes(tmp_path / "demo")
    assert dirs == {0o755} and files == {0o644}
    assert (tmp_path / "demo" / "manifest.csv").is_file()


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "meta.json"
    fsio.write_text(target, "old")

    def broken(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        fsio.save(target, broken)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["meta.json"]


def test_a_temporary_file_keeps_the_suffix_writers_go_by(tmp_path):
    seen = []
    fsio.save(tmp_path / "features.npy", lambda tmp: (seen.append(tmp.name), np.save(tmp, np.arange(3))))
    assert seen[0].endswith(".npy") and np.load(tmp_path / "features.npy").tolist() == [0, 1, 2]


def test_atomic_dir_swaps_a_whole_folder_in_or_leaves_the_old_one(tmp_path):
    out = tmp_path / "head"
    with fsio.atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("1")
    with pytest.raises(RuntimeError):
        with fsio.atomic_dir(out) as tmp:
            (tmp / "b.txt").write_text("2")
            raise RuntimeError("interrupted")
    assert [p.name for p in out.iterdir()] == ["a.txt"]
    with fsio.atomic_dir(out) as tmp:
        (tmp / "c.txt").write_text("3")
    assert [p.name for p in out.iterdir()] == ["c.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["head"]  # no temporary or old folder left


def test_atomic_dir_replaces_a_file_of_the_same_name(tmp_path):
    (tmp_path / "out").write_text("a file")
    with fsio.atomic_dir(tmp_path / "out") as tmp:
        (tmp / "x").write_text("1")
    assert (tmp_path / "out" / "x").read_text() == "1" and len(list(tmp_path.iterdir())) == 1
