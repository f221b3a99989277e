"""End to end against real `clipkit serve` processes on free loopback ports (uvicorn, tiny model).

Two servers start together: `plain` with small upload limits (hostile inputs, parity with `clipkit predict`,
concurrency) and `slow` with a long batching wait, a short deadline, a tiny queue and an API key from
CLIPKIT_API_KEY (503, 504, 401, SIGTERM). Every hostile input is followed by a normal request.
"""
from __future__ import annotations

import contextlib
import io
import json
import signal
import struct
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from serve_helpers import metric, wait_for
from toolkit.serve.process import ServerProcess

pytestmark = pytest.mark.slow

API_KEY = "k-" + "7" * 30
LIMITS = {"max_upload_bytes": 150_000, "max_request_bytes": 400_000, "max_pixels": 1_000_000, "max_files": 4,
          "max_labels": 5}


def write_config(path, tiny_model, **serve) -> str:
    path.write_text(yaml.safe_dump({
        "model": {"name": tiny_model["config"], "pretrained": tiny_model["checkpoint"], "device": "cpu",
                  "batch_size": 8, "num_workers": 0},
        "serve": serve}))
    return str(path)


@pytest.fixture(scope="module")
def servers(tiny_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("serve")
    plain = ServerProcess(["--config", write_config(d / "plain.yaml", tiny_model, max_wait_ms=100, **LIMITS),
                           "--no-access-log"])
    slow = ServerProcess(["--config", write_config(d / "slow.yaml", tiny_model, max_batch_size=8,
                                                   max_wait_ms=4000, queue_size=8, request_timeout_s=2.0,
                                                   shutdown_grace_s=20)],
                         env={"CLIPKIT_API_KEY": API_KEY})
    try:
        plain.start(), slow.start()  # both load at once
        plain.wait_ready(), slow.wait_ready()
        yield {"plain": plain, "slow": slow}
    finally:
        plain.terminate(), slow.terminate()


@pytest.fixture(scope="module")
def plain(servers):
    return servers["plain"].url


# ---------------------------------------------------------------- inputs

def png(color=(200, 30, 30), size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def noise_png(seed: int, size=(48, 36)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype("uint8")).save(buf, "PNG")
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR declaring width x height, with a tiny IDAT: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def big_black_png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (side, side)).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def tiff() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "TIFF")
    return buf.getvalue()


def post(url: str, files, data=None, headers=None, **kw) -> httpx.Response:
    return httpx.post(url + "/v1/predict", files=files, data=data, headers=headers, timeout=60, **kw)


def one(name: str, content: bytes):
    return [("files", (name, content, "application/octet-stream"))]


HOSTILE = [
    ("oversize file", one("big.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 160_000), None, 413, "file_too_large"),
    ("oversize request", [("files", (f"{i}.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 140_000)) for i in range(3)],
     None, 413, "request_too_large"),
    ("bomb header 100000x100000", one("bomb.png", png_header(100_000, 100_000)), None, 413, "too_many_pixels"),
    ("bomb header 1001x1000", one("bomb.png", png_header(1001, 1000)), None, 413, "too_many_pixels"),
    ("real 2000x2000 png", one("huge.png", big_black_png(2000)), None, 413, "too_many_pixels"),
    ("pdf", one("doc.pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n"), None, 415,
     "unsupported_media_type"),
    ("svg", one("x.svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>'), None, 415,
     "unsupported_media_type"),
    ("text named .png", one("notes.png", b"just some text\n"), None, 415, "unsupported_media_type"),
    ("tiff", one("x.tiff", tiff()), None, 415, "unsupported_media_type"),
    ("empty", one("empty.png", b""), None, 400, "empty_file"),
    ("corrupt png", one("bad.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4), None, 400, "corrupt_image"),
    ("truncated png", one("cut.png", noise_png(1, (64, 64))[:600]), None, 400, "corrupt_image"),
    ("too many files", [("files", (f"{i}.png", png())) for i in range(5)], None, 413, "too_many_files"),
    ("empty labels", one("a.png", png()), {"labels": " \n "}, 422, "invalid_labels"),
    ("too many labels", one("a.png", png()), {"labels": "\n".join(f"label {i}" for i in range(6))}, 422,
     "invalid_labels"),
    ("label too long", one("a.png", png()), {"labels": "a cat\n" + "x" * 201}, 422, "invalid_labels"),
    ("path in filename", one("../../etc/passwd", b"root:x:0:0"), None, 415, "unsupported_media_type"),
]


@pytest.mark.parametrize("files,data,status,code", [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_hostile_input_gets_its_status_and_the_server_keeps_answering(plain, files, data, status, code):
    r = post(plain, files, data)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["status"] == status and err["code"] == code and err["message"]
    ok = post(plain, one("fine.png", png()))
    assert ok.status_code == 200 and ok.json()["results"][0]["label"]


def test_a_streamed_body_over_the_limit_is_refused_without_content_length(plain):
    req = httpx.Request("POST", plain + "/v1/predict", files=one("a.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 450_000))
    body = req.read()

    def chunks():
        for i in range(0, len(body), 64_000):
            yield body[i:i + 64_000]

    r = httpx.post(plain + "/v1/predict", content=chunks(), headers={"content-type": req.headers["content-type"]},
                   timeout=60)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert post(plain, one("fine.png", png())).status_code == 200


# ---------------------------------------------------------------- same numbers as the CLI

@pytest.mark.parametrize("labels", [None, ["a red square", "a noisy picture", "a blue sky"]])
def test_predict_gives_the_same_numbers_as_the_cli(plain, tiny_model, image_dir, labels):
    from toolkit.cli import main

    y, x = np.mgrid[0:360, 0:480]  # a large JPEG too: file loading may decode it at reduced size
    rgb = np.stack([x * 255 // 480, y * 255 // 360, (x + y) % 256], -1).astype("uint8")
    Image.fromarray(rgb).save(image_dir / "large.jpg", quality=90)
    paths = sorted(str(p) for p in image_dir.rglob("*") if p.is_file())
    assert len(paths) == 7
    label_args = [a for lb in labels or [] for a in ("--label", lb)]
    res = CliRunner().invoke(main, ["predict", *paths, "--model", tiny_model["config"], "--pretrained",
                                    tiny_model["checkpoint"], "--device", "cpu", "--format", "json", *label_args])
    assert res.exit_code == 0, res.output
    cli = {Path(r["path"]).name: r for r in json.loads(res.stdout)["results"]}
    assert len(cli) == 7  # the file names are distinct
    for group in (paths[:4], paths[4:]):
        # the server shows a client's file name (at most 80 characters), so send the names, not the temp paths
        files = [("files", (Path(p).name, open(p, "rb").read())) for p in group]
        r = post(plain, files, {"labels": "\n".join(labels)} if labels else None)
        assert r.status_code == 200, r.text
        for got in r.json()["results"]:
            want = cli[got["path"]]
            assert got["label"] == want["label"]
            assert list(got["scores"]) == list(want["scores"])
            for label, p in want["scores"].items():
                assert got["scores"][label] == pytest.approx(p, abs=1e-5)


# ---------------------------------------------------------------- concurrency


def test_concurrent_requests_are_batched_and_keep_their_own_answers(plain):
    images = [noise_png(s) for s in range(16)]
    alone = [post(plain, one(f"{i}.png", im)).json()["results"][0]["scores"] for i, im in enumerate(images[:3])]
    count0, sum0 = metric(plain, "clipkit_batch_size_images_count"), metric(plain, "clipkit_batch_size_images_sum")
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda i: post(plain, one(f"{i}.png", images[i])), range(16)))
    assert [r.status_code for r in responses] == [200] * 16
    for i in range(3):
        for label, p in alone[i].items():
            assert responses[i].json()["results"][0]["scores"][label] == pytest.approx(p, abs=1e-5)
    calls = metric(plain, "clipkit_batch_size_images_count") - count0
    images_encoded = metric(plain, "clipkit_batch_size_images_sum") - sum0
    assert images_encoded == 16 and calls < 16  # fewer model calls than requests: they were gathered


def test_metrics_are_prometheus_text(plain):
    r = httpx.get(plain + "/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert "# TYPE clipkit_http_request_duration_seconds histogram" in r.text
    assert 'clipkit_http_requests_total{method="POST",route="/v1/predict",status="413"}' in r.text


# ---------------------------------------------------------------- slow server: 401, 504, 503, SIGTERM

KEY = {"X-API-Key": API_KEY}


def images(n: int):
    return [("files", (f"{i}.png", png((10 * i, 20, 30)))) for i in range(n)]


def test_api_key_from_the_environment_is_enforced(servers):
    url = servers["slow"].url
    r = post(url, images(1))
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert httpx.get(url + "/v1/info", headers={"X-API-Key": "wrong"}, timeout=10).status_code == 401
    assert httpx.get(url + "/v1/info", headers=KEY, timeout=10).status_code == 200


@contextlib.contextmanager
def slow_request(url: str, n: int = 8):
    """A POST /v1/predict of n images whose body stalls after 100 bytes until `release` is set (at the latest when
    the block ends): the server counts it in flight meanwhile. Yields (future of its response, release)."""
    req = httpx.Request("POST", url + "/v1/predict", files=images(n))
    body, release = req.read(), threading.Event()

    def slow_body():
        yield body[:100]
        release.wait(30)
        yield body[100:]

    headers = {"content-type": req.headers["content-type"], **KEY}
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(httpx.post, url + "/v1/predict", content=slow_body(), headers=headers, timeout=60)
        wait_for(lambda: metric(url, "clipkit_in_flight_requests") == 1)
        try:
            yield pending, release
        finally:
            release.set()


def test_deadline_answers_504_and_the_next_request_still_works(servers):
    url = servers["slow"].url
    r = post(url, images(1), headers=KEY)  # alone: nobody could join its batch, so it runs at once
    assert r.status_code == 200
    with slow_request(url):  # another request in flight: the batch waits up to 4 s for it; the deadline is 2 s
        r = post(url, images(1), headers=KEY)
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
    r = post(url, images(8), headers=KEY)  # a full batch runs at once
    assert r.status_code == 200 and len(r.json()["results"]) == 8


def test_full_queue_answers_503_with_retry_after(servers):
    url = servers["slow"].url
    with slow_request(url), ThreadPoolExecutor(1) as pool:
        first = pool.submit(post, url, images(6), None, KEY)  # 6 of 8 places, waits for company, times out
        wait_for(lambda: metric(url, "clipkit_queue_depth_images") == 6)
        r = post(url, images(3), headers=KEY)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "overloaded"
        assert first.result().status_code == 504
    assert post(url, images(8), headers=KEY).status_code == 200


def test_sigterm_fails_readiness_lets_the_request_in_flight_finish_and_exits_0(servers):
    srv = servers["slow"]
    with slow_request(srv.url) as (pending, release):  # in flight until the test releases the rest of its body
        srv.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: httpx.get(srv.url + "/readyz", timeout=5).status_code == 503)
        assert httpx.get(srv.url + "/readyz", timeout=5).json()["error"]["code"] == "shutting_down"
        refused = post(srv.url, images(1), headers=KEY)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "shutting_down"
        assert srv.proc.poll() is None
        release.set()
        r = pending.result()
    assert r.status_code == 200 and len(r.json()["results"]) == 8
    assert srv.proc.wait(30) == 0
