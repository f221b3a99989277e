"""Hardening of `clipkit serve` against slow, absent and unauthenticated clients, and a stuck model.

End to end against real server processes on free loopback ports (tiny model, small timeouts), spoken to over raw
sockets where the point is what the client does NOT send. A slow or stuck model is made by a forward pre-hook in
the server process (ServerProcess's prelude) that sleeps in the image tower for as many seconds as a file says:
everything else (uvicorn, the guard, the batcher, the real model) is the real thing. The batcher's cancellation
is also checked in-process with a plain numpy encoder.
"""
from __future__ import annotations

import asyncio
import io
import json
import select
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from serve_helpers import metric, wait_for
from toolkit.config import ServeConfig
from toolkit.serve.batcher import Cancelled, MicroBatcher
from toolkit.serve.deps import request_cancel_bound, with_deadline
from toolkit.serve.errors import ApiError
from toolkit.serve.process import ServerProcess

API_KEY = "hk-" + "5" * 29
KEY = {"X-API-Key": API_KEY}
TIMEOUTS = {"header_timeout_s": 1.0, "body_timeout_s": 1.0, "body_total_timeout_s": 3.0, "keep_alive_s": 1.0}
N_IMAGES = 40  # one request: 20 model calls of 2 images, 0.25 s each, against a 2.5 s deadline

# Runs in the server process before the CLI: sleep in the image tower's forward for the seconds the file says.
SLOW_MODEL = """
import os, time, torch
def _clipkit_test_delay(module, args):
    if type(module).__name__ == "ModifiedResNet":
        try:
            with open(os.environ["CLIPKIT_TEST_DELAY_FILE"]) as f:
                time.sleep(min(float(f.read() or 0), 600.0))
        except OSError:
            pass
torch.nn.modules.module.register_module_forward_pre_hook(_clipkit_test_delay)
"""


def write_config(path, tiny_model, **serve) -> str:
    path.write_text(yaml.safe_dump({
        # engine torch: the slow model is a torch forward hook (ONNX Runtime would never call it)
        "model": {"name": tiny_model["config"], "pretrained": tiny_model["checkpoint"], "device": "cpu",
                  "batch_size": 8, "num_workers": 0, "engine": "torch"},
        "serve": {**TIMEOUTS, "max_batch_size": 2, "max_wait_ms": 0, "max_files": 64, **serve}}))
    return str(path)


def slow_server(tmp_path, tiny_model, delay: str, args=(), **serve) -> tuple[ServerProcess, Path]:
    delay_file = tmp_path / "delay"
    delay_file.write_text(delay)
    srv = ServerProcess(["--config", write_config(tmp_path / "serve.yaml", tiny_model, **serve), "--no-access-log",
                         *args], env={"CLIPKIT_TEST_DELAY_FILE": str(delay_file)}, prelude=SLOW_MODEL)
    return srv, delay_file


@pytest.fixture(scope="module")
def servers(tiny_model, tmp_path_factory):
    """Two servers, loading at once. `main`: small timeouts, an API key from --api-key-file, a 2.5 s deadline, a
    model taking 0.25 s per call. `doomed`: a 1 s shutdown grace, for the stuck-model test (which ends it)."""
    d, e = tmp_path_factory.mktemp("hardening"), tmp_path_factory.mktemp("doomed")
    (d / "key.txt").write_text(API_KEY + "\n")
    main, _ = slow_server(d, tiny_model, "0.25", ["--api-key-file", str(d / "key.txt")], request_timeout_s=2.5)
    doomed, delay_file = slow_server(e, tiny_model, "0", shutdown_grace_s=1.0)
    try:
        main.start(), doomed.start()
        main.wait_ready(), doomed.wait_ready()
        yield {"main": main, "doomed": doomed, "doomed_delay": delay_file}
    finally:
        code = main.terminate()
        doomed.terminate()
    assert code == 0, main.output()[-2000:]  # a healthy model: SIGTERM still ends in a clean exit


@pytest.fixture(scope="module")
def server(servers):
    return servers["main"]


# ---------------------------------------------------------------- helpers

def png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 24), (10 * i % 256, 40, 90)).save(buf, "PNG")
    return buf.getvalue()


def predict_request(url: str, n: int) -> tuple[dict, bytes]:
    """Headers and body of a POST /v1/predict of n images, with the key."""
    req = httpx.Request("POST", url + "/v1/predict", files=[("files", (f"{i}.png", png(i))) for i in range(n)],
                        headers=KEY)
    return {k: v for k, v in req.headers.items() if k.lower() != "host"}, req.read()


def connect(srv: ServerProcess, timeout: float = 15.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", srv.port), timeout=timeout)


def head(path: str, headers: dict[str, str], method: str = "POST") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_until_closed(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    """Everything the server sends until it closes the connection (socket timeout: the test fails)."""
    data = b""
    while len(data) < limit:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    raise AssertionError("the server kept sending")


def status_and_json(raw: bytes) -> tuple[int, dict]:
    head_part, _, body = raw.partition(b"\r\n\r\n")
    status = int(head_part.split(b" ", 2)[1])
    return status, json.loads(body) if body else {}


def counts(url: str) -> tuple[float, float, float]:
    """(images computed, images cancelled, model calls)."""
    return (metric(url, "clipkit_images_total"), metric(url, "clipkit_images_cancelled_total"),
            metric(url, "clipkit_batch_size_images_count"))


# ---------------------------------------------------------------- slow clients

@pytest.mark.slow
def test_partial_headers_get_408_and_the_connection_closes(server):
    with connect(server) as sock:
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-")  # ... and nothing more
        status, body = status_and_json(read_until_closed(sock))
    assert status == 408 and body["error"]["code"] == "request_timeout"
    assert "serve.header_timeout_s" in body["error"]["message"]


@pytest.mark.slow
def test_a_connection_that_sends_nothing_is_closed(server):  # after header_timeout_s
    with connect(server) as sock:
        assert read_until_closed(sock) == b""


@pytest.mark.slow
def test_an_idle_keep_alive_connection_is_closed(server):
    with connect(server) as sock:
        sock.sendall(head("/healthz", {}, "GET"))
        raw = read_until_closed(sock)  # the answer, then the close once the connection idles past keep_alive_s
    # (no header timer runs between requests: keep_alive_s alone closes it)
    assert raw.startswith(b"HTTP/1.1 200") and b'"ok"' in raw


@pytest.mark.slow
def test_a_stalled_body_gets_408_and_the_connection_closes(server):
    headers, body = predict_request(server.url, 1)
    with connect(server) as sock:
        sock.sendall(head("/v1/predict", headers) + body[:50])  # Content-Length promises more
        status, err = status_and_json(read_until_closed(sock))
    assert status == 408 and err["error"]["code"] == "request_timeout"
    assert "serve.body_timeout_s" in err["error"]["message"]


@pytest.mark.slow
def test_a_trickled_body_is_cut_at_the_total_body_deadline(server):
    """One byte every 0.3 s never trips the 1 s pause limit; the 3 s whole-body limit ends it."""
    headers, body = predict_request(server.url, 1)
    with connect(server) as sock:
        sock.sendall(head("/v1/predict", headers))
        for i in range(60):  # at most ~18 s; the server answers after ~3 s
            if select.select([sock], [], [], 0.3)[0]:
                break
            sock.sendall(body[i:i + 1])
        status, err = status_and_json(read_until_closed(sock))
    assert status == 408 and "serve.body_total_timeout_s" in err["error"]["message"]


@pytest.mark.slow
def test_the_server_still_answers_after_the_slow_clients(server):
    r = httpx.post(server.url + "/v1/predict", files=[("files", ("a.png", png(1)))], headers=KEY, timeout=30)
    assert r.status_code == 200 and r.json()["results"][0]["label"]


# ---------------------------------------------------------------- API key before the body

@pytest.mark.slow
@pytest.mark.parametrize("auth", [{}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}])
def test_401_comes_from_the_headers_of_a_huge_body_alone(server, auth):
    """50 MB declared, none sent: a server that read the body first would answer 408 (1 s body timeout)."""
    with connect(server) as sock:
        sock.sendall(head("/v1/predict", {"Content-Type": "multipart/form-data; boundary=x",
                                          "Content-Length": str(50_000_000), **auth}))
        status, err = status_and_json(read_until_closed(sock))
    assert status == 401 and err["error"]["code"] == "unauthorized"


@pytest.mark.slow
def test_the_key_from_the_file_is_accepted_as_header_or_bearer(server):
    for headers in (KEY, {"Authorization": f"Bearer {API_KEY}"}):
        assert httpx.get(server.url + "/v1/info", headers=headers, timeout=10).status_code == 200
    assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200  # no key needed off /v1


def test_api_key_flags(tmp_path):
    from toolkit.cli import main

    runner = CliRunner()
    res = runner.invoke(main, ["serve", "--api-key-file", str(tmp_path / "missing.txt")])
    assert res.exit_code == 2 and "can't read --api-key-file" in res.output and "missing.txt" in res.output
    (tmp_path / "empty.txt").write_text("\n")
    res = runner.invoke(main, ["serve", "--api-key-file", str(tmp_path / "empty.txt")])
    assert res.exit_code == 2 and "has no key on its first line" in res.output
    (tmp_path / "key.txt").write_text("k\n")
    res = runner.invoke(main, ["serve", "--api-key", "k", "--api-key-file", str(tmp_path / "key.txt")])
    assert res.exit_code == 2 and "not both" in res.output
    # a key on the command line still works but warns; the missing labels file stops it before any model loads
    res = runner.invoke(main, ["serve", "--api-key", "k", "--labels", str(tmp_path / "no-labels.txt")])
    assert res.exit_code == 2 and "shows in `ps`" in res.output
    res = runner.invoke(main, ["serve", "--labels", str(tmp_path / "no-labels.txt")], env={"CLIPKIT_API_KEY": "k"})
    assert res.exit_code == 2 and "shows in `ps`" not in res.output
    with pytest.raises(ValueError, match="api_key="):
        ServerProcess(["--api-key", "k"])


# ---------------------------------------------------------------- cancellation reaches the work

@pytest.mark.slow
def test_after_a_504_the_abandoned_images_are_not_computed(server):
    computed0, cancelled0, _ = counts(server.url)
    files = [("files", (f"{i}.png", png(i))) for i in range(N_IMAGES)]
    r = httpx.post(server.url + "/v1/predict", files=files, headers=KEY, timeout=60)
    assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
    # every image of the request is either computed or cancelled; the model stops short of computing them all
    wait_for(lambda: sum(counts(server.url)[:2]) - computed0 - cancelled0 == N_IMAGES)
    computed, cancelled, _ = counts(server.url)
    assert cancelled - cancelled0 > 0 and computed - computed0 < N_IMAGES


@pytest.mark.slow
def test_a_client_that_goes_away_cancels_its_work(server):
    computed0, cancelled0, calls0 = counts(server.url)
    headers, body = predict_request(server.url, N_IMAGES)
    with connect(server) as sock:
        sock.sendall(head("/v1/predict", headers) + body)
        wait_for(lambda: counts(server.url)[2] > calls0)  # the model is on it
    wait_for(lambda: sum(counts(server.url)[:2]) - computed0 - cancelled0 == N_IMAGES)
    computed, cancelled, _ = counts(server.url)
    assert cancelled - cancelled0 > 0 and computed - computed0 < N_IMAGES
    assert metric(server.url, 'clipkit_http_requests_total{method="POST",route="/v1/predict",status="499"}') >= 1


@pytest.mark.slow
def test_a_stuck_model_cannot_hold_shutdown_past_the_grace_period(servers):
    srv = servers["doomed"]
    with ThreadPoolExecutor(1) as pool:
        servers["doomed_delay"].write_text("600")  # the next model call never returns (in test time)
        pending = pool.submit(httpx.post, srv.url + "/v1/predict", files=[("files", ("a.png", png(1)))],
                              timeout=60)
        wait_for(lambda: metric(srv.url, "clipkit_in_flight_requests") == 1)
        time.sleep(0.3)  # decoding 1 image takes milliseconds: the request is in the model now
        srv.proc.send_signal(signal.SIGTERM)
        code = srv.proc.wait(30)  # grace 1 s + 1 s; 30 is only the test's bound
        try:  # the stuck request is cut: an error answer or a dropped connection, never its result
            assert pending.result().status_code >= 500
        except httpx.TransportError:
            pass
    log = srv.output()
    assert code == 1, log[-2000:]
    lines = [ln for ln in log.splitlines() if "shutdown not done" in ln]
    assert len(lines) == 1 and "the model worker has been in one call" in lines[0], log[-2000:]


# ---------------------------------------------------------------- the batcher's cancellation, in-process

def _encode(xs: list) -> np.ndarray:
    return np.array([[x, 2 * x] for x in xs], np.float32)


def test_a_job_cancelled_while_its_batch_runs_skips_its_remaining_chunks():
    gate, calls = threading.Event(), []

    def encode(xs):
        calls.append(len(xs))
        gate.wait(10)  # the first chunk holds the model until the caller has given up
        return _encode(xs)

    async def go():
        b = MicroBatcher(encode, max_batch_size=2, max_wait_ms=0)
        b.start()
        try:
            job = asyncio.ensure_future(b.submit(list(range(10))))
            while not calls:
                await asyncio.sleep(0.01)
            job.cancel()
            await asyncio.sleep(0.05)
            gate.set()
            ok = await b.submit([7, 8])  # the model thread is free again, for live work
            return ok, b.images_cancelled
        finally:
            await b.stop()

    ok, cancelled = asyncio.run(go())
    assert calls == [2, 2] and cancelled == 8  # one chunk of the cancelled job, then the next job's
    np.testing.assert_array_equal(ok, _encode([7, 8]))


def test_a_set_cancel_event_keeps_images_from_the_model():
    calls = []

    async def go():
        b = MicroBatcher(lambda xs: calls.append(len(xs)) or _encode(xs), max_batch_size=4, max_wait_ms=10_000,
                         in_flight=lambda: 2)  # the first job waits for company
        b.start()
        try:
            flag = threading.Event()
            job = asyncio.ensure_future(b.submit([1, 2], flag))
            await asyncio.sleep(0.05)
            flag.set()  # as the guard does when the client goes away
            with pytest.raises(Cancelled):
                await b.submit([3], flag)  # refused before it is queued
            ok = await b.submit([4, 5, 6, 7])  # fills a batch: the worker runs, meets the cancelled job first
            with pytest.raises(Cancelled):
                await job
            return ok, b.images_cancelled, b.depth
        finally:
            await b.stop()

    ok, cancelled, depth = asyncio.run(go())
    assert calls == [4] and cancelled == 2 and depth == 0
    np.testing.assert_array_equal(ok, _encode([4, 5, 6, 7]))


def test_the_deadline_sets_the_requests_cancel_flag():
    async def go():
        flag = threading.Event()
        with request_cancel_bound(flag):
            with pytest.raises(ApiError) as e:
                await with_deadline(asyncio.sleep(30), ServeConfig(request_timeout_s=0.05))
        return e.value.status_code, flag.is_set()

    assert asyncio.run(go()) == (504, True)
