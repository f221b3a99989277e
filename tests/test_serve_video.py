"""POST /v1/predict/video in-process: same document as the CLI, limits (413 / 422), bad videos (400)."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from toolkit.cli import main
from toolkit.config import Config
from toolkit.serve import create_app

from test_serve_app import make_cfg as base_cfg, wait_ready
from test_video import bad_inputs, middle_threshold, tiny_args, write_plain_video


def make_cfg(tiny_model, **serve) -> Config:
    return base_cfg(tiny_model, precision="auto", max_batch_size=8, **serve)  # as the CLI's default


@pytest.fixture(scope="module")
def client(tiny_model):
    limits = dict(max_video_bytes=400_000, max_video_seconds=6.0, max_video_frames=60)
    with TestClient(create_app(make_cfg(tiny_model, **limits))) as c:
        wait_ready(c)
        yield c


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from toolkit.demo.video import write_video

    path = tmp_path_factory.mktemp("serve_clip") / "clip.mp4"
    write_video(path, [("standing", 1.0), ("squat", 3, 1.0), ("standing", 1.0)], seed=1, size=(64, 64), fps=8)
    return path


def post(client, path, name=None, **params):
    with open(path, "rb") as f:
        return client.post("/v1/predict/video", params=params, files={"file": (name or path.name, f, "video/mp4")})


def test_video_route_matches_the_cli(client, clip, tiny_model):
    r = post(client, clip, stride=2, window=3)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["video"]["path"] == "clip.mp4" and body["video"]["sampled_frames"] == 20
    assert [f["index"] for f in body["frames"]] == list(range(0, 40, 2))
    assert body["settings"]["window"] == 3 and body["settings"]["stride"] == 2
    cli = CliRunner().invoke(main, ["predict-video", str(clip), *tiny_args(tiny_model), "--stride", "2",
                                    "--window", "3", "--format", "json"])
    assert cli.exit_code == 0, cli.output
    doc = json.loads(cli.stdout)
    assert [f["label"] for f in body["frames"]] == [f["label"] for f in doc["frames"]]
    for a, b in zip(body["frames"], doc["frames"]):
        for label, p in a["smoothed"].items():
            assert p == pytest.approx(b["smoothed"][label], abs=1e-4)
    strip = ("first_index", "last_index", "mean_score")
    assert [{k: v for k, v in s.items() if k not in strip} for s in body["segments"]] == \
        [{k: v for k, v in s.items() if k not in strip} for s in doc["segments"]]
    assert body["reps"] == doc["reps"]


def test_custom_labels_and_bad_params(client, clip):
    r = client.post("/v1/predict/video", params={"fps": 2},
                    files={"file": ("c.mp4", clip.read_bytes(), "video/mp4")},
                    data={"labels": "a red square\na blue circle"})
    assert r.status_code == 200, r.text
    assert r.json()["labels"] == ["a red square", "a blue circle"] and len(r.json()["frames"]) == 10
    for params, fragment in [({"fps": 2, "stride": 2}, "not both"), ({"window": 0}, "window"),
                             ({"rep_high": 0.3, "rep_low": 0.5}, "must be below rep_high"),
                             ({"reject_below": 1.5}, "reject_below"),
                             ({"unknown_label": "a person standing"}, "is one of the labels")]:
        r = post(client, clip, **params)
        assert r.status_code == 422 and fragment in r.json()["error"]["message"], (params, r.text)


def test_limits_413_and_422(client, tmp_path):
    big = write_plain_video(tmp_path / "big.mp4", n=60, noisy=True, size=(320, 240))
    assert big.stat().st_size > 400_000
    r = post(client, big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "file_too_large"
    assert "'big.mp4'" in r.json()["error"]["message"]
    long = write_plain_video(tmp_path / "long.mp4", n=80, fps=10)  # 8 s > 6 s
    r = post(client, long)
    assert r.status_code == 422 and r.json()["error"]["code"] == "video_too_long"
    assert "long.mp4" in r.json()["error"]["message"] and "upload" not in r.json()["error"]["message"]
    many = write_plain_video(tmp_path / "many.mp4", n=50, fps=10)  # 5 s, fine; 50 frames at 25 fps -> 125
    r = post(client, many, fps=25)
    assert r.status_code == 200  # sampling can't invent frames: 50 decoded
    r = post(client, write_plain_video(tmp_path / "dense.mp4", n=55, fps=10), stride=1)
    assert r.status_code == 200
    r = post(client, write_plain_video(tmp_path / "fast.mp4", n=90, fps=30), stride=1)  # 3 s, 90 frames > 60
    assert r.status_code == 422 and "90 sampled frames" in r.json()["error"]["message"]
    ok = post(client, tmp_path / "fast.mp4")  # the default 10 fps sampling: 30 frames
    assert ok.status_code == 200 and ok.json()["video"]["sampled_frames"] == 30


@pytest.mark.parametrize("case", ["text", "empty", "audio", "truncated", "zero_frames"])
def test_bad_videos_are_400_without_hanging(client, tmp_path, case):
    path, fragment = bad_inputs(tmp_path)[case]
    r = post(client, path, name=f"mine{path.suffix}")
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_video" and f"mine{path.suffix}" in err["message"]
    assert "/tmp" not in err["message"] and "clipkit-video-" not in err["message"]
    assert client.get("/readyz").status_code == 200  # the service is still fine


def test_cli_and_server_give_the_same_document_for_the_same_file(tiny_model, clip):
    """One pipeline behind both: same numbers at the same precision and batch size, same document."""
    with TestClient(create_app(base_cfg(tiny_model, precision="fp32", max_batch_size=8))) as c:
        wait_ready(c)
        r = post(c, clip, fps=4)
    assert r.status_code == 200, r.text
    cli = CliRunner().invoke(main, ["predict-video", str(clip), *tiny_args(tiny_model), "--precision", "fp32",
                                    "--fps", "4", "--format", "json"])
    assert cli.exit_code == 0, cli.output
    server, local = r.json(), json.loads(cli.stdout)
    assert server["video"].pop("path") == "clip.mp4" and local["video"].pop("path") == str(clip)
    assert _rounded(server) == _rounded(local)
    t = middle_threshold(server)  # and with about half the frames rejected as "none of these"
    with TestClient(create_app(base_cfg(tiny_model, precision="fp32", max_batch_size=8))) as c:
        wait_ready(c)
        r = post(c, clip, fps=4, reject_below=t, unknown_label="nope")
    assert r.status_code == 200, r.text
    cli = CliRunner().invoke(main, ["predict-video", str(clip), *tiny_args(tiny_model), "--precision", "fp32",
                                    "--fps", "4", "--format", "json", "--reject-below", str(t),
                                    "--unknown-label", "nope"])
    assert cli.exit_code == 0, cli.output
    server, local = r.json(), json.loads(cli.stdout)
    assert server["video"].pop("path") == "clip.mp4" and local["video"].pop("path") == str(clip)
    assert 0 < sum(f["rejected"] for f in server["frames"]) < len(server["frames"])
    assert _rounded(server) == _rounded(local)


def test_rejection_over_http(client, clip):
    """reject_below: rejected frames have label null, rejected true, scores kept; their own segments, no reps."""
    r = post(client, clip, fps=4, reject_below=1.0, unknown_label="no idea")
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["reject_below"] == 1.0 and doc["settings"]["unknown_label"] == "no idea"
    assert all(f["label"] is None and f["rejected"] and len(f["scores"]) == 4 for f in doc["frames"])
    assert [(s["label"], s["rejected"], s["frames"]) for s in doc["segments"]] == [(None, True, 20)]
    assert set(doc["reps"].values()) == {0}
    off = post(client, clip, fps=4, reject_below=0).json()
    assert off["reject_below"] is None and not any(f["rejected"] for f in off["frames"])


def _rounded(doc):
    if isinstance(doc, float):
        return round(doc, 4)
    if isinstance(doc, dict):
        return {k: _rounded(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_rounded(v) for v in doc]
    return doc


def test_fps_out_of_range_is_422_at_once(client, clip):
    for fps in ("inf", "nan", "1e300", "-1", "0"):
        r = post(client, clip, fps=fps)
        assert r.status_code == 422, (fps, r.text)
    r = post(client, clip, stride=0)
    assert r.status_code == 422
