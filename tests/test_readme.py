"""The README, followed in order: every offline `clipkit` example of its shell blocks runs in a fresh folder (with
the repository's configs/ and data/ beside it, as in a checkout) and exits 0, the story's checks hold on the way
(the demo head with a target precision rejects none of workout.mp4's frames and counts its 5 jumping jacks)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]

# Examples that need what a fresh offline folder doesn't have: your own images, real CLIP weights (network),
# a server, placeholders (RUN_ID), or a terminal. Every other `clipkit` line of a ```bash block is run.
NEEDS_MORE = ("shots/", "photo.jpg", "more/", "ViT-B-32", "hf-hub:", "my_arch", "~/", "RUN_ID", "models:/",
              "clipkit serve", "held-out/", "--tracking-uri http", "my_labels", "--devices",
              "a.jpg", "clipkit --help", "clipkit label ",  # `label` serves a page, for a person to click
              "out/labels.csv")  # what that page writes, by hand


def readme_commands(text: str) -> list[str]:
    """The `clipkit ...` lines of the README's ```bash blocks, in order, continuation lines joined."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line.startswith("clipkit ") and not any(s in line for s in NEEDS_MORE):
                out.append(line)
    return out


def test_the_readme_lists_the_story_in_order():
    commands = readme_commands((ROOT / "README.md").read_text())
    first = {c.split()[1] for c in commands}
    assert {"predict", "demo-data", "train-probe", "evaluate", "eval-prompts", "compare", "predict-video"} <= first
    assert not any(c.count(" --out ") > 1 for c in commands)


@pytest.mark.slow  # every offline README example, in order, in one process (~1-2 min)
def test_every_offline_readme_example_runs_in_order_in_a_fresh_folder(tmp_path, monkeypatch):
    from toolkit.cli import main

    for name in ("configs", "data"):
        (tmp_path / name).symlink_to(ROOT / name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # stores of this walk only
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ran = []
    for line in readme_commands((ROOT / "README.md").read_text()):
        args = shlex.split(line, comments=True)[1:]
        r = CliRunner().invoke(main, args, catch_exceptions=False)
        ran.append(line)
        assert r.exit_code == 0, f"README step {len(ran)} `{line}` exited {r.exit_code}:\n{r.output[-2000:]}"
        if args[0] == "predict-video" and "out/head-reject" in args:  # the threshold rule, on the video
            assert "jumping jack 5" in r.stdout and "'none of these'" not in r.stdout, r.stdout
        if args[0] == "train-probe" and "--target-precision" in args:
            assert "nothing is rejected" in r.output
    assert len(ran) >= 15
    assert (tmp_path / "mlflow.db").is_file() and sorted(p.name for p in (tmp_path / "out/compare").iterdir()) \
        == ["accuracy.png", "balanced_accuracy.png", "macro_f1.png"]
    assert not list(tmp_path.glob("*.png"))  # charts land in the folder named, not in the working folder
