"""Hardening, part two (issues 24 and 25): label floods, JPEG scan bombs, thin images, Host and Origin checks,
absolute paths in answers, empty and non-ASCII API keys.

End to end against one real `clipkit serve` process on a free loopback port (tiny model). A slow text tower is
made by a forward pre-hook in the server process (ServerProcess's prelude) that sleeps in the token embedding,
which only text encoding uses, for as many seconds as a file says: everything else is the real thing. The
decode guard and the shape checks are also checked in-process on real Pillow decodes.
"""
from __future__ import annotations

import io
import struct
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from serve_helpers import metric, wait_for
from toolkit.errors import InputError
from toolkit.serve.batcher import Cancelled
from toolkit.serve.decode import DecodeBudget, jpeg_scans
from toolkit.serve.errors import ApiError
from toolkit.serve.images import decode_image
from toolkit.serve.origin import OriginPolicy, host_name
from toolkit.serve.process import ServerProcess

API_KEY = "clé-ünïcødé-" + "4" * 20  # non-ASCII: compared as UTF-8 bytes
KEY = {"X-API-Key": API_KEY.encode("utf-8")}  # httpx sends bytes as they are, as curl does from a UTF-8 terminal
TEXT_QUEUE = 6  # labels
APP_ORIGIN = "http://app.example:5173"

# Runs in the server process before the CLI: sleep in the token embedding (text only) for the seconds the file says.
SLOW_TEXT = """
import os, time, torch
def _clipkit_test_text_delay(module, args):
    if type(module).__name__ == "Embedding":
        try:
            with open(os.environ["CLIPKIT_TEST_TEXT_DELAY_FILE"]) as f:
                time.sleep(min(float(f.read() or 0), 60.0))
        except OSError:
            pass
torch.nn.modules.module.register_module_forward_pre_hook(_clipkit_test_text_delay)
"""


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("hardening2")
    delay = d / "text-delay"
    delay.write_text("0")
    (d / "serve.yaml").write_text(yaml.safe_dump({
        # engine torch: the slow text tower is a torch forward hook (ONNX Runtime would never call it)
        "model": {"name": tiny_model["config"], "pretrained": tiny_model["checkpoint"], "device": "cpu",
                  "batch_size": 8, "num_workers": 0, "engine": "torch"},
        "prompts": {"templates": "none"},  # one text per label: one text pass per label set
        "serve": {"max_wait_ms": 0, "request_timeout_s": 30.0, "max_files": 16, "text_queue_labels": TEXT_QUEUE,
                  "cors_origins": [APP_ORIGIN]}}))
    srv = ServerProcess(["--config", str(d / "serve.yaml"), "--no-access-log"], api_key=API_KEY, prelude=SLOW_TEXT,
                        env={"CLIPKIT_TEST_TEXT_DELAY_FILE": str(delay)})
    try:
        srv.start().wait_ready()
        srv.delay = delay
        yield srv
    finally:
        srv.terminate()


# ---------------------------------------------------------------- helpers

def png(i: int = 0, size=(24, 24)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10 * i % 256, 40, 90)).save(buf, "PNG")
    return buf.getvalue()


def _seg(marker: int, payload: bytes) -> bytes:
    return b"\xff" + bytes([marker]) + struct.pack(">H", len(payload) + 2) + payload


def scan_bomb(side: int, scans: int) -> bytes:
    """A valid progressive greyscale JPEG, side x side (a multiple of 128 pixels), of one DC scan and `scans` - 1
    identical AC scans, each a few bytes long: end-of-band runs of 16384 blocks (EOB14) over the whole image.
    Every scan makes the decoder walk every block again: 4096 px and 8000 scans (240 KB) take ~40 s."""
    blocks = (side // 8) ** 2
    runs, rest = divmod(blocks, 16384)
    assert rest == 0 and runs >= 1, "side must be a multiple of 1024 pixels"
    huffman_one_code = bytes([1] + [0] * 15)  # one code, '0', of length 1
    out = [b"\xff\xd8", _seg(0xDB, b"\x00" + b"\x01" * 64),  # SOI, a flat quantization table
           _seg(0xC2, struct.pack(">BHHB", 8, side, side, 1) + b"\x01\x11\x00"),  # SOF2: progressive, 1 component
           _seg(0xC4, b"\x00" + huffman_one_code + b"\x00"),  # DC table: '0' = difference category 0
           _seg(0xC4, b"\x10" + huffman_one_code + b"\xe0"),  # AC table: '0' = EOB14 (+14 bits of run length)
           _seg(0xDA, b"\x01\x01\x00\x00\x00\x00"), b"\x00" * ((blocks + 7) // 8)]  # DC first scan: all zero
    ac_scan = _seg(0xDA, b"\x01\x01\x00\x01\x3f\x00") + b"\x00" * ((runs * 15 + 7) // 8)  # Ss=1 Se=63
    return b"".join(out + [ac_scan] * (scans - 1) + [b"\xff\xd9"])


def jpeg(progressive: bool = False, exif: bytes = b"") -> bytes:
    im = Image.fromarray((np.random.default_rng(0).random((60, 80, 3)) * 255).astype("uint8"))
    buf = io.BytesIO()
    im.save(buf, "JPEG", progressive=progressive, exif=exif)
    return buf.getvalue()


def predict(url: str, labels=None, files=None, headers=None, **kw) -> httpx.Response:
    data = {"labels": "\n".join(labels)} if labels else None
    return httpx.post(url + "/v1/predict", files=files or [("files", ("a.png", png()))], data=data,
                      headers={**KEY, **(headers or {})}, timeout=60, **kw)


# ---------------------------------------------------------------- label floods (issue 24)

def test_a_label_set_is_encoded_once_however_many_ask_for_it(server):
    server.delay.write_text("0.3")
    try:
        labels = ["a red cube", "a blue ball", "a green cone"]
        before = metric(server.url, "clipkit_text_label_sets_encoded_total")
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: predict(server.url, labels), range(4)))
        assert [r.status_code for r in answers] == [200] * 4
        assert {tuple(r.json()["labels"]) for r in answers} == {tuple(labels)}
        assert predict(server.url, labels).status_code == 200  # later: from the cache
        assert metric(server.url, "clipkit_text_label_sets_encoded_total") - before == 1
    finally:
        server.delay.write_text("0")


def test_text_work_is_admitted_and_never_holds_requests_whose_labels_are_encoded(server):
    """A and B (new label sets) fill the text queue; C is refused at once (503 + Retry-After); a plain request
    and one with a cached label set sent after B finish before B: they never wait behind queued text work."""
    cached = ["a red cube", "a blue ball", "a green cone"]
    assert predict(server.url, cached).status_code == 200
    sets = {k: [f"{k} thing {i}" for i in range(3)] for k in "ABC"}  # 3 labels each; the queue holds 6
    done: list[str] = []

    def send(name, labels):
        r = predict(server.url, labels)
        done.append(name)
        return r

    refused0 = metric(server.url, "clipkit_text_label_sets_refused_total")
    server.delay.write_text("3")  # A's pass: time for the plain and cached requests to queue behind it
    try:
        with ThreadPoolExecutor(4) as pool:
            a = pool.submit(send, "A", sets["A"])
            wait_for(lambda: metric(server.url, "clipkit_text_queue_labels") == 3)
            b = pool.submit(send, "B", sets["B"])
            wait_for(lambda: metric(server.url, "clipkit_text_queue_labels") == 6)
            plain = pool.submit(send, "plain", None)
            again = pool.submit(send, "cached", cached)
            c = predict(server.url, sets["C"])
            results = {k: f.result() for k, f in {"A": a, "B": b, "plain": plain, "cached": again}.items()}
    finally:
        server.delay.write_text("0")
    assert c.status_code == 503 and c.json()["error"]["code"] == "text_busy"
    assert int(c.headers["Retry-After"]) >= 1 and "serve.text_queue_labels" in c.json()["error"]["message"]
    assert metric(server.url, "clipkit_text_label_sets_refused_total") - refused0 == 1
    assert {k: r.status_code for k, r in results.items()} == {"A": 200, "B": 200, "plain": 200, "cached": 200}
    assert done.index("plain") < done.index("B") and done.index("cached") < done.index("B"), done
    assert results["cached"].json()["labels"] == cached
    assert predict(server.url, sets["C"]).status_code == 200  # once the queue has room


# ---------------------------------------------------------------- decode bombs (issue 25)

def test_the_scan_counter_counts_real_scans_only():
    assert jpeg_scans(jpeg(), 1000) == 1
    assert jpeg_scans(jpeg(progressive=True), 1000) == 10  # libjpeg's default progression for colour
    # marker-like bytes inside EXIF are not scans
    assert jpeg_scans(jpeg(progressive=True, exif=b"Exif\x00\x00" + b"\xff\xda\x00\x08" * 40), 1000) == 10
    bomb = scan_bomb(1024, 300)
    assert jpeg_scans(bomb, 1000) == 300 and jpeg_scans(bomb, 50) == 51  # stops counting past the limit
    im = Image.open(io.BytesIO(bomb))
    im.load()  # a real progressive JPEG that Pillow decodes
    assert im.size == (1024, 1024) and im.info.get("progressive")


@pytest.mark.slow
def test_scan_bombs_are_refused_at_once_and_a_plain_request_is_answered(server):
    bomb = scan_bomb(4096, 8000)  # ~40 s of decoding each, without the guard
    with ThreadPoolExecutor(9) as pool:
        bombs = [pool.submit(predict, server.url, files=[("files", (f"bomb{i}.jpg", bomb))]) for i in range(8)]
        plain = pool.submit(predict, server.url, files=[("files", ("p.jpg", jpeg(progressive=True)))])
        answers = [f.result() for f in bombs]
        assert plain.result().status_code == 200
    assert {r.status_code for r in answers} == {413}
    err = answers[0].json()["error"]
    assert err["code"] == "too_many_scans" and "bomb0.jpg" in err["message"]
    assert "serve.max_jpeg_scans" in err["message"]


def _budget(**kw) -> DecodeBudget:
    return DecodeBudget(**{"max_scans": 100_000, "work_left": 1e18, "seconds": 60.0, **kw})


def test_a_decode_stops_at_its_next_chunk_when_the_request_is_cancelled():
    bomb = scan_bomb(2048, 3000)  # seconds of decoding
    budget = _budget()
    threading.Timer(0.2, budget.cancel.set).start()
    with pytest.raises(Cancelled):  # an unstoppable decode would finish and return the image
        decode_image(bomb, "bomb.jpg", 40_000_000, budget=budget)


def test_decode_seconds_and_work_count_against_the_request():
    bomb = scan_bomb(2048, 3000)
    with pytest.raises(ApiError) as e:
        decode_image(bomb, "slow.jpg", 40_000_000, budget=_budget(seconds=0.3))
    assert e.value.status_code == 413 and e.value.code == "decode_too_slow"
    assert "serve.decode_timeout_s" in e.value.message and "'slow.jpg'" in e.value.message
    budget = _budget(work_left=3 * 80 * 60)  # pixels x scans: three baseline 80x60 images
    for _ in range(3):
        decode_image(jpeg(), "ok.jpg", 40_000_000, budget=budget)
    with pytest.raises(ApiError) as e:
        decode_image(jpeg(), "fourth.jpg", 40_000_000, budget=budget)
    assert e.value.code == "too_much_decode_work" and "serve.max_decode_work" in e.value.message


# ---------------------------------------------------------------- thin images (issue 25)

def thin_png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height), 128).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def test_a_thin_image_is_refused_by_the_server_before_it_is_resized(server):
    data = thin_png(100_000, 1)  # 1e5 pixels: under serve.max_pixels; 22400000x224 once resized for CLIP
    assert len(data) < 1000
    r = predict(server.url, files=[("files", ("thin.png", data)), ("files", ("ok.png", png()))])
    assert r.status_code == 413 and r.json()["error"]["code"] == "bad_aspect_ratio"
    msg = r.json()["error"]["message"]
    assert "'thin.png'" in msg and "100000x1" in msg and "serve.max_aspect_ratio" in msg
    assert predict(server.url).status_code == 200


def test_thin_images_and_their_size_after_resizing(tmp_path):
    from toolkit.encoder.images import load_image

    (tmp_path / "thin.png").write_bytes(thin_png(5000, 10))
    with pytest.raises(InputError, match=r"thin.png' is 5000x10, an aspect ratio of 500:1"):
        load_image(tmp_path / "thin.png")  # the CLI's path: one line naming the file
    # 50:1 passes the ratio, but at a 224-pixel model input it would be 2.5e6 pixels, over a 1e6-pixel limit
    with pytest.raises(ApiError) as e:
        decode_image(thin_png(5000, 100), "long.png", 1_000_000, model_side=224)
    assert e.value.code == "bad_aspect_ratio" and "224-pixel input" in e.value.message
    assert decode_image(thin_png(5000, 100), "long.png", 1_000_000, model_side=32).size == (5000, 100)


# ---------------------------------------------------------------- Host, Origin, paths, keys (issue 25)

def test_a_foreign_host_is_refused_and_info_shows_no_absolute_paths(server, tiny_model):
    for method, path in (("POST", "/v1/predict"), ("GET", "/v1/info"), ("GET", "/")):
        r = httpx.request(method, server.url + path, headers={**KEY, "Host": "evil.example"}, timeout=10,
                          files=[("files", ("a.png", png()))] if method == "POST" else None)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_host", (path, r.text)
        assert "serve.allowed_hosts" in r.json()["error"]["message"]
    for host in (f"localhost:{server.port}", f"127.0.0.1:{server.port}"):
        info = httpx.get(server.url + "/v1/info", headers={**KEY, "Host": host}, timeout=10)
        assert info.status_code == 200
    text = info.text
    folder = str(tmp_path_of(tiny_model))
    assert folder not in text and '"/' not in text, text[:500]
    ident = info.json()["identity"]  # the model's files by name only
    assert (ident["source"], ident["checkpoint"]) == ("tiny-rn.json", "tiny-rn.safetensors")


def tmp_path_of(tiny_model):
    from pathlib import Path

    return Path(tiny_model["config"]).parent


def test_cross_origin_browser_requests_are_refused_unless_allowed(server):
    evil = predict(server.url, headers={"Origin": "http://evil.example"})
    assert evil.status_code == 403 and evil.json()["error"]["code"] == "cross_origin"
    assert "serve.cors_origins" in evil.json()["error"]["message"]
    assert predict(server.url, headers={"Origin": "null"}).status_code == 403  # sandboxed frames, file:// pages
    assert predict(server.url, headers={"Origin": server.url}).status_code == 200  # the server's own page
    allowed = predict(server.url, headers={"Origin": APP_ORIGIN})
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == APP_ORIGIN
    pre = httpx.options(server.url + "/v1/predict", timeout=10, headers={
        "Origin": APP_ORIGIN, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x-api-key"})
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == APP_ORIGIN


def test_the_api_key_is_compared_as_utf8_bytes(server):
    assert predict(server.url).status_code == 200  # the key's UTF-8 bytes, in X-API-Key
    bearer = httpx.get(server.url + "/v1/info", timeout=10,
                       headers={"Authorization": b"Bearer " + API_KEY.encode("utf-8")})
    assert bearer.status_code == 200
    latin1 = httpx.get(server.url + "/v1/info", headers={"X-API-Key": API_KEY.encode("latin-1")}, timeout=10)
    assert latin1.status_code == 401


def test_policy_names_and_defaults():
    from toolkit.config import ServeConfig

    assert [host_name(h) for h in ("Example.COM:80", "[::1]:8000", "localhost.", "::1")] == \
        ["example.com", "::1", "localhost", "::1"]
    loop = OriginPolicy(ServeConfig())
    assert loop.host_allowed("localhost:8000") and loop.host_allowed("[::1]:1") and not loop.host_allowed("10.0.0.2")
    lan = OriginPolicy(ServeConfig(host="0.0.0.0", allowed_hosts=[".corp.example"]))
    assert lan.host_allowed("10.0.0.2:8000") and lan.host_allowed("gpu1.corp.example") and \
        lan.host_allowed("corp.example") and not lan.host_allowed("evil.example")
    assert OriginPolicy(ServeConfig(allowed_hosts=["*"])).host_allowed("anything.example")


def test_an_empty_api_key_is_refused_like_an_empty_key_file(tmp_path):
    from toolkit.cli import main

    for value in ("", "  "):
        res = CliRunner().invoke(main, ["serve", "--labels", str(tmp_path / "no-labels.txt")],
                                 env={"CLIPKIT_API_KEY": value})
        assert res.exit_code == 2 and "CLIPKIT_API_KEY is set but empty" in res.output, res.output
    from toolkit.config import Config
    from toolkit.errors import ConfigError
    from toolkit.serve.app import create_app

    with pytest.raises(ConfigError, match="serve.api_key is empty"):
        create_app(Config.model_validate({"serve": {"api_key": ""}}))
