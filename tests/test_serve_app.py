"""The FastAPI app in-process (TestClient runs its lifespan): endpoints, formats, API key, probe mode, metrics.

Hostile uploads, limits, the load, shutdown and browser tests run against a real uvicorn process
(test_serve_http.py, test_serve_browser.py).
"""
from __future__ import annotations

import io
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from toolkit.config import Config, ModelConfig, ServeConfig
from toolkit.serve import create_app


def make_cfg(tiny_model, precision="fp32", **serve) -> Config:
    """fp32 by default: responses are compared with the fp32 `tiny_extractor` fixture."""
    return Config(model=ModelConfig(name=tiny_model["config"], pretrained=tiny_model["checkpoint"], device="cpu",
                                    precision=precision, batch_size=8, num_workers=0),
                  serve=ServeConfig(max_wait_ms=1, **{"allowed_hosts": ["testserver"], **serve}))  # TestClient's Host


def wait_ready(client: TestClient, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = client.get("/readyz")
        if r.status_code == 200:
            return
        if r.json()["error"]["code"] == "load_failed":
            raise AssertionError(r.json())
        time.sleep(0.05)
    raise AssertionError("app not ready in time")


def png_bytes(color=(200, 30, 30), size=(40, 30), fmt="PNG", **save) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt, **save)
    return buf.getvalue()


def noise(seed: int, size=(48, 36)) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype("uint8"))


def encoded(im: Image.Image, fmt: str, **save) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **save)
    return buf.getvalue()


@pytest.fixture(scope="module")
def client(tiny_model):
    with TestClient(create_app(make_cfg(tiny_model))) as c:
        wait_ready(c)
        yield c


def test_health_ready_and_info(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    info = client.get("/v1/info").json()
    assert info["mode"] == "zeroshot" and info["model"] == "tiny-rn"
    assert info["labels"][0] == "a person standing" and len(info["labels"]) == 4
    assert "a photo of {}." in info["head"]["templates"]
    assert info["identity"]["embed_dim"] == 32
    assert info["limits"]["max_files"] == 32 and info["batching"]["micro_batching"] is True


def test_predict_returns_label_score_and_all_scores_per_image(client):
    files = [("files", ("red.png", png_bytes(), "image/png")),
             ("files", ("blue.jpg", png_bytes((20, 40, 220), fmt="JPEG"), "image/jpeg"))]
    body = client.post("/v1/predict", files=files, data={"top_k": "2"}).json()
    assert body["mode"] == "zeroshot" and body["labels"] == client.get("/v1/info").json()["labels"]
    assert [r["path"] for r in body["results"]] == ["red.png", "blue.jpg"]
    for r in body["results"]:
        assert list(r["scores"]) == body["labels"]
        assert sum(r["scores"].values()) == pytest.approx(1.0, abs=1e-5)
        assert r["score"] == max(r["scores"].values()) and r["scores"][r["label"]] == r["score"]
        assert [t["label"] for t in r["top_k"]][0] == r["label"] and len(r["top_k"]) == 2


def test_predict_matches_the_predictor_on_the_same_image(client, tiny_extractor):
    from toolkit.predictor import build_predictor

    im = noise(3)
    body = client.post("/v1/predict", files={"files": ("n.png", encoded(im, "PNG"))}).json()
    # default prompts (the exercise labels, 'people' templates), as the app serves them
    expected = build_predictor(Config(), extractor=tiny_extractor).predict_images([im])[0]
    for label, p in expected["scores"].items():
        assert body["results"][0]["scores"][label] == pytest.approx(p, abs=1e-5)


def test_per_request_labels_newlines_or_repeated_fields_and_their_head_is_cached(client):
    files = {"files": ("a.png", png_bytes())}
    predictor = client.app.state.service.predictor
    n_heads = len(predictor._heads)
    a = client.post("/v1/predict", files=files, data={"labels": "a cat\na dog\n\n"}).json()
    b = client.post("/v1/predict", files=files, data={"labels": ["a cat", "a dog"]}).json()
    assert a["labels"] == b["labels"] == ["a cat", "a dog"]
    assert a["results"][0]["scores"] == b["results"][0]["scores"]
    assert len(predictor._heads) == n_heads + 1  # one text encoding for the label set, reused


@pytest.mark.parametrize("labels,fragment", [("just one", "at least two"), ("a cat\nA CAT", "duplicate"),
                                             ("\n \n", "empty")])
def test_bad_label_sets_are_422_in_the_error_shape(client, labels, fragment):
    r = client.post("/v1/predict", files={"files": ("a.png", png_bytes())}, data={"labels": labels})
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["status"] == 422 and fragment in err["message"]


def test_embed_returns_normalized_embeddings_equal_to_the_extractor(client, tiny_extractor):
    ims = [noise(1), noise(2)]
    files = [("files", (f"{i}.png", encoded(im, "PNG"))) for i, im in enumerate(ims)]
    body = client.post("/v1/embed", files=files).json()
    got = np.array([r["embedding"] for r in body["results"]])
    assert body["dim"] == 32 and got.shape == (2, 32)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got, tiny_extractor.encode_images(ims), atol=1e-5)


@pytest.mark.parametrize("fmt,save", [("JPEG", {"quality": 95}), ("PNG", {}), ("WEBP", {"lossless": True}),
                                      ("BMP", {})])
def test_each_accepted_format_gives_the_same_scores_as_its_pixels(client, tiny_extractor, fmt, save):
    im = noise(5)
    decoded = Image.open(io.BytesIO(encoded(im, fmt, **save))).convert("RGB")
    body = client.post("/v1/embed", files={"files": (f"x.{fmt.lower()}", encoded(im, fmt, **save))}).json()
    np.testing.assert_allclose(body["results"][0]["embedding"], tiny_extractor.encode_images([decoded])[0],
                               atol=1e-5)


def test_an_animated_gif_is_scored_on_its_first_frame(client, tiny_extractor):
    frames = [Image.new("RGB", (40, 40), c).convert("P") for c in [(250, 0, 0), (0, 0, 250), (0, 250, 0)]]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    body = client.post("/v1/embed", files={"files": ("anim.gif", buf.getvalue())}).json()
    first = tiny_extractor.encode_images([frames[0].convert("RGB")])[0]
    second = tiny_extractor.encode_images([frames[1].convert("RGB")])[0]
    got = np.array(body["results"][0]["embedding"])
    np.testing.assert_allclose(got, first, atol=1e-5)
    assert np.abs(got - second).max() > 1e-3


def test_unknown_routes_and_methods_use_the_error_shape(client):
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = client.get("/v1/predict")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    r = client.post("/v1/predict", data={"top_k": "0"}, files={"files": ("a.png", png_bytes())})
    assert r.status_code == 422 and "top_k" in r.json()["error"]["message"]


def test_metrics_count_requests_and_batches_in_a_registry_of_the_apps_own(client):
    from prometheus_client import REGISTRY

    client.post("/v1/predict", files={"files": ("a.png", png_bytes())})
    text = client.get("/metrics").text
    assert 'clipkit_http_requests_total{method="POST",route="/v1/predict",status="200"}' in text
    assert "clipkit_batch_size_images_count" in text and "clipkit_queue_depth_images 0.0" in text
    assert "clipkit_ready 1.0" in text
    assert REGISTRY.get_sample_value("clipkit_images_total") is None


def test_the_web_page_is_served_with_its_assets_and_no_external_resources(client):
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert 'id="file"' in r.text and 'id="labels"' in r.text
    js = client.get("/static/app.js")
    assert js.status_code == 200 and "/v1/predict" in js.text
    assert "http://" not in r.text + js.text and "https://" not in r.text + js.text


def test_openapi_documents_the_endpoints(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/predict", "/v1/embed", "/v1/info", "/healthz", "/readyz", "/metrics"} <= set(paths)


# ---------------------------------------------------------------- API key, probe mode, failed load

def test_api_key_is_required_on_the_api_but_not_on_health(tiny_model):
    with TestClient(create_app(make_cfg(tiny_model, api_key="s3cret-key"))) as c:
        wait_ready(c)
        files = {"files": ("a.png", png_bytes())}
        r = c.post("/v1/predict", files=files)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        assert "missing" in r.json()["error"]["message"] and r.headers["www-authenticate"] == "ApiKey"
        r = c.get("/v1/info", headers={"X-API-Key": "s3cret-kez"})
        assert r.status_code == 401 and "wrong" in r.json()["error"]["message"]
        assert c.get("/v1/info", headers={"X-API-Key": "s3cret-key"}).status_code == 200
        assert c.post("/v1/predict", files=files, headers={"Authorization": "Bearer s3cret-key"}).status_code == 200
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200


@pytest.fixture(scope="module")
def probe_head(tiny_extractor, tmp_path_factory):
    from toolkit.heads.linear import LinearProbe

    rng = np.random.default_rng(0)
    head = LinearProbe(["squat", "plank", "rest"], rng.normal(size=(3, 32)).astype(np.float32),
                       identity=tiny_extractor.identity)
    return head, str(head.save(tmp_path_factory.mktemp("head") / "head"))


def test_probe_mode_serves_the_heads_classes_and_refuses_custom_labels(tiny_model, tiny_extractor, probe_head):
    head, folder = probe_head
    with TestClient(create_app(make_cfg(tiny_model), head=folder)) as c:
        wait_ready(c)
        assert c.get("/v1/info").json()["mode"] == "probe"
        im = noise(9)
        body = c.post("/v1/predict", files={"files": ("n.png", encoded(im, "PNG"))}).json()
        assert body["labels"] == ["squat", "plank", "rest"] and body["mode"] == "probe"
        expected = head.predict_proba(tiny_extractor.encode_images([im]))[0]
        np.testing.assert_allclose(list(body["results"][0]["scores"].values()), expected, atol=1e-5)
        r = c.post("/v1/predict", files={"files": ("n.png", encoded(im, "PNG"))}, data={"labels": "a\nb"})
        assert r.status_code == 422 and "zero-shot" in r.json()["error"]["message"]


def test_a_failed_load_keeps_the_process_alive_but_never_ready(tiny_model, tmp_path):
    with TestClient(create_app(make_cfg(tiny_model), head=str(tmp_path / "no-such-head"))) as c:
        deadline = time.monotonic() + 60
        while c.app.state.service.phase == "loading" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert c.get("/healthz").status_code == 200
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["error"]["code"] == "load_failed"
        assert "no-such-head" in r.json()["error"]["message"]
        assert c.post("/v1/predict", files={"files": ("a.png", png_bytes())}).status_code == 503
