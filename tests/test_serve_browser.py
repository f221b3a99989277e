"""The web page in headless Chromium (Debian's, driven by Playwright) against a real `clipkit serve` process."""
from __future__ import annotations

import re

import pytest
import yaml
from PIL import Image

from toolkit.serve.process import ServerProcess

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    cfg = tmp_path_factory.mktemp("browser") / "serve.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"name": tiny_model["config"], "pretrained": tiny_model["checkpoint"],
                                             "device": "cpu", "num_workers": 0}}))
    with ServerProcess(["--config", str(cfg), "--no-access-log"]) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def bars(page) -> dict[str, float]:
    """{label: percent} as the page shows them."""
    out = {}
    for row in page.locator("#bars .bar-row").all():
        pct = row.locator(".bar-pct").inner_text()
        assert re.fullmatch(r"\d{1,3}\.\d%", pct), pct
        out[row.locator(".bar-label").inner_text()] = float(pct[:-1])
    return out


def test_upload_edit_labels_and_see_the_bars(server, browser, tmp_path):
    from playwright.sync_api import expect

    expect.set_options(timeout=30_000)  # generous: the test machine is shared
    img = tmp_path / "red.png"
    Image.new("RGB", (64, 48), (220, 20, 20)).save(img)
    page = browser.new_page()  # the page's own CSP stays on (no eval): waits use locators
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url + "/")
    expect(page.locator("#labels")).to_have_value(re.compile("a person standing"))  # filled from /v1/info
    assert "zero-shot" in page.locator("#model-info").inner_text()

    page.set_input_files("#file", str(img))  # choosing a file classifies it with the server's labels
    expect(page.locator("#bars .bar-row")).to_have_count(4)
    assert set(bars(page)) == {"a person standing", "a person repeating a squat",
                               "a person repeating a jumping jack", "a person performing a plank"}

    page.fill("#labels", "a red square\na blue circle\na green triangle")
    page.click("#classify")
    expect(page.locator("#bars .bar-row")).to_have_count(3)
    shown = bars(page)
    assert set(shown) == {"a red square", "a blue circle", "a green triangle"}
    assert sum(shown.values()) == pytest.approx(100, abs=0.2)
    assert list(shown.values()) == sorted(shown.values(), reverse=True)  # best first
    assert page.locator("#bars .bar-row.best .bar-label").inner_text() == max(shown, key=shown.get)
    assert page.locator("#status").inner_text().startswith("Best: ")
    assert page.locator("#preview").get_attribute("src").startswith("blob:")

    page.fill("#labels", "only one label")  # the server's 422 message is shown, the page keeps working
    page.click("#classify")
    expect(page.locator("#error")).to_contain_text("at least two labels")
    assert errors == []
    page.close()


def test_several_images_and_a_video_from_the_file_picker(server, browser, tmp_path):
    """The picker takes several images (one line each, bars of the first) and a video (its segments and reps)."""
    from click.testing import CliRunner
    from playwright.sync_api import expect

    from toolkit.cli import main

    expect.set_options(timeout=60_000)
    imgs = []
    for name, colour in (("red.png", (220, 20, 20)), ("blue.png", (20, 20, 220)), ("green.png", (20, 200, 20))):
        imgs.append(tmp_path / name)
        Image.new("RGB", (48, 48), colour).save(imgs[-1])
    video = tmp_path / "clip.mp4"
    made = CliRunner().invoke(main, ["demo-video", str(video), "--schedule", "standing:0.6,squat:1x0.8",
                                     "--size", "64", "--fps", "8"])
    assert made.exit_code == 0, made.output
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url + "/")
    expect(page.locator("#labels")).to_have_value(re.compile("a person standing"))
    page.set_input_files("#file", [str(p) for p in imgs])
    expect(page.locator("#results .result-row")).to_have_count(3)
    rows = page.locator("#results .result-row").all_inner_texts()
    assert [r.split(":")[0] for r in rows] == ["red.png", "blue.png", "green.png"]
    assert all("a person" in r for r in rows) and page.locator("#bars .bar-row").count() == 4
    page.set_input_files("#file", str(video))
    expect(page.locator("#status")).to_contain_text("clip.mp4:")
    assert "segments" in page.locator("#status").inner_text() and page.locator("#results .result-row").count() >= 1
    assert page.locator("#bars .bar-row").count() == 0 and errors == []
    page.close()
