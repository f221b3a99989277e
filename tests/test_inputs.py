"""toolkit.encoder.inputs and image folders in datasets: every image classified or an error entry, other files counted
once on stderr, symlinked folders followed once, dangling links reported."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from toolkit.cli import main
from toolkit.data.datasets import load_dataset
from toolkit.errors import InputError
from toolkit.encoder.images import register_plugins
from toolkit.encoder.inputs import expand_inputs, scan_folder, skipped_note


def write_image(path: Path, seed: int, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = (np.random.default_rng(seed).random((36, 44, 3)) * 255).astype("uint8")
    Image.fromarray(arr).save(path, fmt)
    return path


@pytest.fixture()
def mixed(tmp_path) -> Path:
    """photos/: a PNG, a JPEG, an iPhone HEIC, two non-images, a hidden file, a dangling link, a link to a
    folder outside (with one image), and a link back to photos/ itself (a loop)."""
    assert "HEIF" in register_plugins()
    root = tmp_path / "photos"
    write_image(root / "a.png", 1)
    write_image(root / "trip" / "b.JPG", 2)
    write_image(root / "IMG_0001.HEIC", 3, "HEIF")
    (root / "notes.txt").write_text("not a picture")
    (root / "trip" / "meta.json").write_text("{}")
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    write_image(tmp_path / "elsewhere" / "c.webp", 4)
    (root / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (root / "trip" / "loop").symlink_to(root, target_is_directory=True)
    return root


def test_scan_follows_folder_links_once_and_keeps_dangling_links(mixed):
    found = scan_folder(mixed)
    names = [p.relative_to(mixed).as_posix() for p in found.files]
    assert names == ["IMG_0001.HEIC", "a.png", "gone.jpg", "linked/c.webp", "trip/b.JPG"]
    assert sorted(p.name for p in found.skipped) == ["meta.json", "notes.txt"]  # .DS_Store: hidden, ignored


def test_a_link_to_an_ancestor_is_not_entered_again(tmp_path):
    write_image(tmp_path / "top" / "x.png", 0)
    (tmp_path / "top" / "deep" / "deeper").mkdir(parents=True)
    (tmp_path / "top" / "deep" / "deeper" / "up").symlink_to(tmp_path / "top", target_is_directory=True)
    (tmp_path / "top" / "again").symlink_to(tmp_path / "top" / "deep", target_is_directory=True)
    assert [p.name for p in scan_folder(tmp_path / "top").files] == ["x.png"]


def test_predict_classifies_every_image_reports_the_link_and_counts_the_rest(mixed, tiny_model):
    args = ["predict", str(mixed), "--format", "json", "--model", tiny_model["config"],
            "--pretrained", tiny_model["checkpoint"], "--device", "cpu", "--no-progress"]
    r = CliRunner().invoke(main, args, catch_exceptions=False)
    assert r.exit_code == 1, r.output  # one input failed: the dangling link
    results = {Path(x["path"]).relative_to(mixed).as_posix(): x for x in json.loads(r.stdout)["results"]}
    assert sorted(results) == ["IMG_0001.HEIC", "a.png", "gone.jpg", "linked/c.webp", "trip/b.JPG"]
    assert all("label" in x for k, x in results.items() if k != "gone.jpg")
    assert f"broken symbolic link to '{mixed.parent / 'deleted.jpg'}'" in results["gone.jpg"]["error"]
    skipped = [line for line in r.stderr.splitlines() if line.startswith("skipped")]
    assert skipped == ["skipped 2 files that are not images (.json, .txt)"]
    assert "1 of 5 inputs failed" in r.stderr


def test_a_clean_folder_prints_no_skipped_line(tmp_path, tiny_model):
    write_image(tmp_path / "ok" / "a.png", 0)
    args = ["predict", str(tmp_path / "ok"), "--model", tiny_model["config"], "--pretrained",
            tiny_model["checkpoint"], "--device", "cpu", "--no-progress"]
    r = CliRunner().invoke(main, args, catch_exceptions=False)
    assert r.exit_code == 0 and "skipped" not in r.stderr


def test_expand_inputs_errors_name_the_path_and_the_fix(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("x")
    (tmp_path / "docs" / "b.txt").write_text("y")
    with pytest.raises(InputError, match=r"folder '.*docs' contains no images \(JPEG, .*HEIC.*\); it holds 2 files "
                                         r"that are not images \(\.txt\)"):
        expand_inputs([str(tmp_path / "docs")])
    (tmp_path / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(InputError, match=r"'.*dangling.png' is a broken symbolic link to '.*nowhere.png'; fix"):
        expand_inputs([str(tmp_path / "dangling.png")])


def test_explicit_files_and_globs_are_kept_as_given(mixed):
    found = expand_inputs([str(mixed / "notes.txt"), str(mixed / "*.png"), str(mixed / "a.png")])
    assert [p.name for p in found.files] == ["notes.txt", "a.png"] and found.skipped == []


def test_skipped_note_counts_and_names_the_kinds():
    assert skipped_note([]) is None
    assert skipped_note([Path("x/README")]) == "skipped 1 file that is not an image (no suffix)"
    many = [Path(f"f{i}{s}") for i, s in enumerate([".txt", ".txt", ".json", ".cr2", ".xmp", ".mov", ".db"])]
    assert skipped_note(many) == "skipped 7 files that are not images (.txt, .cr2, .db, .json, .mov, ...)"


def test_dataset_follows_symlinked_class_folders_and_keeps_dangling_links_as_rows(tmp_path):
    root = tmp_path / "data"
    for i in range(3):
        write_image(root / "cats" / f"{i}.png", i)
    for i in range(5):
        write_image(tmp_path / "dog_photos" / f"{i}.jpg", 10 + i)
    write_image(tmp_path / "more_cats" / "m.png", 20)
    (root / "dogs").symlink_to(tmp_path / "dog_photos", target_is_directory=True)  # a class folder as a link
    (root / "cats" / "more").symlink_to(tmp_path / "more_cats", target_is_directory=True)  # a linked subfolder
    (root / "cats" / "lost.png").symlink_to(tmp_path / "lost.png")
    (root / "cats" / "notes.txt").write_text("x")
    ds = load_dataset(root, val_fraction=0.25, test_fraction=0.25)
    rows = dict(zip([Path(p).name for p in ds.paths], ds.labels))
    assert rows == {"0.png": "cats", "1.png": "cats", "2.png": "cats", "m.png": "cats", "lost.png": "cats",
                    **{f"{i}.jpg": "dogs" for i in range(5)}}
    assert str(root / "cats" / "lost.png") in ds.paths  # the link itself, so its error names it
    assert [Path(p).name for p in ds.skipped] == ["notes.txt"]


def test_a_store_reads_heic_rows_and_keeps_a_dangling_link_as_a_skipped_row(tmp_path, tiny_extractor):
    from toolkit.data.extraction import extract_store

    root = tmp_path / "data"
    for i in range(5):
        write_image(root / "a" / f"{i}.heic", i, "HEIF")  # decoded in the extractor's loader
        write_image(root / "b" / f"{i}.png", 10 + i)
    (root / "a" / "lost.png").symlink_to(tmp_path / "lost.png")
    ds = load_dataset(root, val_fraction=0.25, test_fraction=0.25)
    store = extract_store(tiny_extractor, ds, tmp_path / "store")
    assert len(store) == 10 and sum(Path(p).suffix == ".heic" for p in store.paths) == 5
    assert np.allclose(np.linalg.norm(np.asarray(store.features), axis=1), 1, atol=1e-4)
    (entry,) = store.meta["skipped"]
    assert entry["path"].endswith("lost.png") and "broken symbolic link to" in entry["error"]


def test_a_class_folder_that_is_a_dangling_link_is_an_error(tmp_path):
    from toolkit.errors import DataError

    for label in ("a", "b"):
        for i in range(3):
            write_image(tmp_path / "data" / label / f"{i}.png", i)
    (tmp_path / "data" / "c").symlink_to(tmp_path / "moved_away", target_is_directory=True)
    with pytest.raises(DataError, match=r"'.*data/c' is a broken symbolic link to '.*moved_away'"):
        load_dataset(tmp_path / "data")
