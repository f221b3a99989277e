"""docs/labeling.png: the labelling page on novel-suite images with the demo model, after a dozen answers.

Generates the images (clipkit demo-data --suite novel) in a temporary folder, starts `clipkit label` on them,
answers with the keys in headless Chromium (Debian's, through Playwright), then takes the screenshot.

    .venv/bin/python scripts/label_screenshot.py [--out docs/labeling.png]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _bench import ROOT

sys.path.insert(0, str(ROOT))


def main() -> None:
    from playwright.sync_api import expect, sync_playwright

    from toolkit.serve.process import free_port

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "labeling.png")
    args = ap.parse_args()
    clipkit = [sys.executable, "-c", "from toolkit.cli import main; main()"]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "pool"
        subprocess.run([*clipkit, "demo-data", str(data), "--suite", "novel", "--n-per-class", "8"], check=True)
        port = free_port()
        proc = subprocess.Popen([*clipkit, "label", str(data / "train"), "--config", str(ROOT / "configs" / "demo.yaml"),
                                 "--labels", str(data / "labels.txt"), "--out", str(Path(tmp) / "labels.csv"),
                                 "--port", str(port)])
        try:
            import httpx

            for _ in range(3000):
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
                page = browser.new_page(viewport={"width": 1100, "height": 860})
                page.goto(f"http://127.0.0.1:{port}/")
                expect(page.locator("#progress")).to_contain_text("0 labelled", timeout=60_000)
                for _ in range(12):
                    before = page.locator("#progress").inner_text()
                    page.keyboard.press("Enter")
                    expect(page.locator("#progress")).not_to_have_text(before, timeout=60_000)
                page.locator("#standing").filter(has_text="head ").wait_for(timeout=120_000)
                page.wait_for_timeout(1500)
                page.screenshot(path=str(args.out))
                browser.close()
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
