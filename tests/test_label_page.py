"""The labelling page in headless Chromium (Debian's, driven by Playwright) against a real `clipkit label` process:
label 30 images with the keys, reload, undo, and check labels.csv."""
from __future__ import annotations

import csv
import re
import signal
from pathlib import Path

import pytest

from test_labeling import CLASSES, colour_images, embed, label_process, tiny_yaml, wait_up
from toolkit.serve.process import free_port

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_label_30_images_with_keys_reload_undo_and_check_the_csv(tiny_model, tiny_extractor, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=60_000)  # generous: the test machine is shared
    imgs = colour_images(tmp_path / "imgs", 12)  # 36 images
    store = embed([p for c in CLASSES for p in imgs[c]], tiny_extractor, tmp_path / "emb")
    out = tmp_path / "labels.csv"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = label_process(store, tiny_yaml(tiny_model, tmp_path), out, port)
    try:
        wait_up(proc, url)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1100, "height": 800})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url + "/")
            expect(page.locator("#progress")).to_contain_text("0 labelled")
            expect(page.locator(".choice.suggested")).to_have_count(1)  # the suggestion is pre-selected
            expected: dict[str, str] = {}
            keys = ["1", "2", "3", "Enter", "0", "s"]
            for k in range(30):
                name = page.locator("#image-name").inner_text()
                key = keys[k % len(keys)]
                suggestion = page.locator(".choice.suggested .choice-label").inner_text()
                before = page.locator("#progress").inner_text()
                page.keyboard.press(key)
                expect(page.locator("#progress")).not_to_have_text(before)  # the answer is in (the count moved)
                if key in "123":
                    expected[name] = CLASSES[int(key) - 1]
                elif key == "Enter":
                    expected[name] = suggestion
            labelled = {Path(r["path"]).name: r["label"] for r in _rows(out)}
            assert labelled == expected and len(labelled) == 20  # 30 answers: 20 labels, 5 none, 5 skipped
            page.reload()
            expect(page.locator("#progress")).to_contain_text("20 labelled, 5 none, 5 skipped of 36")
            page.locator("#standing").filter(has_text=re.compile(r"head \d+% \+/- \d+ on 20 labels")).wait_for()
            shown = page.locator("#image-name").inner_text()
            page.keyboard.press("u")  # the last answer was a skip: that image comes back
            expect(page.locator("#progress")).to_contain_text("20 labelled, 5 none, 4 skipped")
            assert page.locator("#image-name").inner_text() != shown
            page.keyboard.press("u")  # the one before: a "none of these"
            expect(page.locator("#progress")).to_contain_text("20 labelled, 4 none, 4 skipped")
            page.keyboard.press("u")  # and before that an Enter: its label leaves the CSV
            expect(page.locator("#progress")).to_contain_text("19 labelled, 4 none, 4 skipped")
            back = page.locator("#image-name").inner_text().split(" ")[0]
            assert back in expected and back not in {Path(r["path"]).name for r in _rows(out)}
            page.keyboard.press("2")
            expect(page.locator("#progress")).to_contain_text("20 labelled")
            assert {Path(r["path"]).name: r["label"] for r in _rows(out)}[back] == CLASSES[1]
            page.screenshot(path=str(tmp_path / "labeling.png"))
            assert not errors, errors
            browser.close()
        proc.send_signal(signal.SIGTERM)  # as Ctrl-C: the page stops, exit code 0
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
