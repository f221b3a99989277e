"""Video requests can't spin or exhaust: fps validated at the edges (CLI and a real server process), the
sampling loop looks at each decoded frame once, frame pixels and decoding work are limited from the header
(413 naming the limit), and a cancel event stops decoding."""
from __future__ import annotations

import math
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from toolkit.errors import ConfigError
from toolkit.serve.process import ServerProcess
from toolkit.video.pipeline import MAX_FPS, VideoCancelled, VideoLimits, VideoTooLargeError, iter_frames

from test_serve_http import write_config
from test_video import write_plain_video

CLIPKIT = str(Path(sys.executable).parent / "clipkit")


@pytest.mark.parametrize("fps", [math.inf, math.nan, 0.0, -1.0, MAX_FPS * 10])
def test_bad_fps_is_refused_before_any_decoding(fps, tmp_path):
    with pytest.raises(ConfigError, match="fps"):
        next(iter_frames(tmp_path / "never-opened.mp4", fps=fps))


@pytest.mark.parametrize("stride", [0, -3, 1.5, True])
def test_bad_stride_is_refused(stride, tmp_path):
    with pytest.raises(ConfigError, match="stride"):
        next(iter_frames(tmp_path / "never-opened.mp4", stride=stride))


def test_the_highest_fps_takes_each_frame_once(tmp_path):
    path = write_plain_video(tmp_path / "v.mp4", n=30, fps=30)
    assert [i for i, _, _ in iter_frames(path, fps=MAX_FPS)] == list(range(30))
    assert len(list(iter_frames(path, fps=7.5))) == 8  # 1 s of video at 7.5 fps: slots 0..7


def test_frame_pixels_and_decoding_work_are_limited_from_the_header(tmp_path):
    path = write_plain_video(tmp_path / "v.mp4", n=20, fps=10, size=(160, 120))
    with pytest.raises(VideoTooLargeError, match=r"160x120 frames \(19200 pixels\), over the limit of 10000"):
        next(iter_frames(path, limits=VideoLimits(max_pixels=10_000)))
    with pytest.raises(VideoTooLargeError, match="decoded pixels"):
        next(iter_frames(path, limits=VideoLimits(max_work=100_000)))  # 20 x 19200 > 1e5
    assert len(list(iter_frames(path, limits=VideoLimits(max_pixels=19_200, max_work=20 * 19_200)))) == 20


def test_a_cancel_event_stops_decoding(tmp_path):
    path = write_plain_video(tmp_path / "v.mp4", n=30, fps=10)
    cancel = threading.Event()
    frames = iter_frames(path, cancel=cancel)
    next(frames)
    cancel.set()
    with pytest.raises(VideoCancelled):
        next(frames)


@pytest.mark.parametrize("fps", ["inf", "1e9", "nan"])
def test_the_cli_refuses_a_bad_fps_at_once(fps, tmp_path):
    path = write_plain_video(tmp_path / "v.mp4", n=10)
    res = subprocess.run([CLIPKIT, "predict-video", str(path), "--fps", fps, "--config", "configs/demo.yaml"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, res.stderr
    last = res.stderr.strip().splitlines()[-1]  # click's range error, or the config's for NaN: one line on fps
    assert "fps" in last and ("240" in last or "finite" in last) and "Traceback" not in res.stderr


@pytest.mark.slow
def test_a_real_server_answers_bad_sampling_and_huge_frames_and_keeps_serving(tiny_model, tmp_path):
    cfg = write_config(tmp_path / "serve.yaml", tiny_model, max_pixels=10_000, video_timeout_s=5)
    small = write_plain_video(tmp_path / "small.mp4", n=20, fps=10, size=(64, 48))
    big = write_plain_video(tmp_path / "big.mp4", n=3, fps=10, size=(160, 120))
    with ServerProcess(["--config", cfg, "--no-access-log"]) as srv:
        srv.wait_ready()
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            def post(path, **params):
                return c.post("/v1/predict/video", params=params, files={"file": (path.name, path.read_bytes())})

            for params in ({"fps": "inf"}, {"fps": "nan"}, {"fps": "1e300"}, {"fps": "0"}, {"stride": "0"}):
                r = post(small, **params)
                assert r.status_code == 422, (params, r.text)
            r = post(big)
            assert r.status_code == 413 and r.json()["error"]["code"] == "video_too_large", r.text
            assert "10000 pixels per frame" in r.json()["error"]["message"]
            r = post(small, fps=MAX_FPS)
            assert r.status_code == 200 and r.json()["video"]["sampled_frames"] == 20
