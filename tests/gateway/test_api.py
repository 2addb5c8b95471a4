"""The HTTP API with the model client replaced (dependency override): validation, statuses, JSON shapes."""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from common.preprocessing import IMAGE_SIZE, decode_and_resize
from gateway import api
from gateway.errors import ModelUnavailableError, UpstreamError, UpstreamTimeoutError
from gateway.main import create_app
from gateway.settings import Settings
from tests.gateway import images
from tests.gateway.conftest import FAKE_THRESHOLD, FAKE_VERSION, FakeModelClient, MakeClient

PREDICTION_FIELDS = {
    "success",
    "ai_probability",
    "filename",
    "score",
    "label",
    "threshold",
    "model_name",
    "model_version",
    "version_label",
    "request_id",
    "verdict",
    "verdict_reason",
    "provenance",
    "explanation",
}


def post_file(client: TestClient, data: bytes, filename: str = "x.jpg", **kwargs: object):  # type: ignore[no-untyped-def]
    return client.post("/predict", files={"file": (filename, data, "image/jpeg")}, **kwargs)  # type: ignore[arg-type]


def assert_error(response, status: int) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False
    assert isinstance(body["error"], str) and body["error"]
    assert body["request_id"] == response.headers["x-request-id"]
    return body


# -- success ---------------------------------------------------------------------------------


def test_predict_answers_the_contract_fields(client_and_fake: tuple[TestClient, FakeModelClient]) -> None:
    client, fake = client_and_fake
    response = post_file(client, images.solid(230), filename="bright.png")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == PREDICTION_FIELDS
    assert body["success"] is True
    assert body["filename"] == "bright.png"
    assert body["score"] == pytest.approx(230 / 255, abs=1e-6)
    assert body["ai_probability"] == round(body["score"] * 100, 2)
    assert body["label"] == "ai"
    assert body["threshold"] == FAKE_THRESHOLD
    assert body["model_name"] == "ai_detector"
    assert body["model_version"] == FAKE_VERSION
    assert body["version_label"] == "stable"
    assert body["request_id"] == response.headers["x-request-id"]
    (sent, target), *_ = fake.calls
    assert sent.shape == (1, IMAGE_SIZE, IMAGE_SIZE, 3) and sent.dtype == np.uint8
    assert target.label == "stable" and not target.pinned


def test_dark_image_is_real(client_and_fake: tuple[TestClient, FakeModelClient]) -> None:
    client, _ = client_and_fake
    body = post_file(client, images.solid(20)).json()
    assert body["label"] == "real"
    assert body["ai_probability"] < 50


@pytest.mark.parametrize("kind", sorted(images.every_accepted_kind()))
def test_every_accepted_format_and_mode_reaches_the_model_as_the_shared_tensor(
    client_and_fake: tuple[TestClient, FakeModelClient], kind: str
) -> None:
    client, fake = client_and_fake
    data = images.every_accepted_kind()[kind]
    # The name and content type lie on purpose: the format is sniffed from the bytes.
    response = client.post("/predict", files={"file": ("upload.bin", data, "text/plain")})
    assert response.status_code == 200, response.text
    sent, _ = fake.calls[-1]
    assert np.array_equal(sent[0], decode_and_resize(data))


def test_exif_orientation_is_applied_before_the_model(
    client_and_fake: tuple[TestClient, FakeModelClient],
) -> None:
    client, fake = client_and_fake
    # Stored top white / bottom black; orientation 3 = rotated 180 degrees: shown top black.
    assert post_file(client, images.two_halves_with_exif_orientation(3)).status_code == 200
    sent, _ = fake.calls[-1]
    assert sent[0, :100].mean() < 40 and sent[0, 124:].mean() > 215


def test_request_id_is_reused_when_plain_and_made_otherwise(
    client_and_fake: tuple[TestClient, FakeModelClient],
) -> None:
    client, _ = client_and_fake
    response = post_file(client, images.solid(100), headers={"x-request-id": "abc-123"})
    assert response.json()["request_id"] == "abc-123" == response.headers["x-request-id"]
    response = post_file(client, images.solid(100), headers={"x-request-id": "bad id\twith spaces"})
    assert response.json()["request_id"] != "bad id\twith spaces"
    assert len(response.json()["request_id"]) == 32


def test_batch_makes_one_model_call_and_reports_each_file(
    client_and_fake: tuple[TestClient, FakeModelClient],
) -> None:
    client, fake = client_and_fake
    files = [
        ("files", ("bright.png", images.solid(240), "image/png")),
        ("files", ("notes.jpg", b"just some text", "image/jpeg")),
        ("files", ("dark.png", images.solid(10), "image/png")),
        ("files", ("photo.heic", b"\x00\x00\x00\x18ftypheic" + b"\x00" * 32, "image/heic")),
    ]
    response = client.post("/predict/batch", files=files)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True and body["model_version"] == FAKE_VERSION
    assert [item["filename"] for item in body["results"]] == [
        "bright.png",
        "notes.jpg",
        "dark.png",
        "photo.heic",
    ]
    bright, text, dark, heic = body["results"]
    assert bright["success"] and bright["label"] == "ai"
    assert dark["success"] and dark["label"] == "real"
    assert not text["success"] and text["status"] == 400
    assert not heic["success"] and heic["status"] == 415
    assert len(fake.calls) == 1 and fake.calls[0][0].shape[0] == 2


def test_batch_where_no_file_decodes_makes_no_model_call(
    client_and_fake: tuple[TestClient, FakeModelClient],
) -> None:
    client, fake = client_and_fake
    response = client.post("/predict/batch", files=[("files", ("a.jpg", b"text", "image/jpeg"))])
    assert response.status_code == 200
    assert response.json()["model_version"] is None
    assert not fake.calls


# -- errors produced by bad input ------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"", 400),  # empty file
        (b"hello, I am a text file pretending to be a JPEG", 400),
        (images.encode(images.gradient(), "JPEG")[:300], 400),  # truncated
        (b"\x00\x00\x00\x18ftypheic" + b"\x00" * 64, 415),  # HEIC: an image, not supported
        (b"%PDF-1.7\n" + b"\x00" * 64, 415),
        (images.png_header_only(10_000, 10_000), 413),  # 10^8 pixels claimed by the header
    ],
    ids=["empty", "text-as-jpg", "truncated-jpeg", "heic", "pdf", "pixel-bomb"],
)
def test_bad_images_get_their_status(
    client_and_fake: tuple[TestClient, FakeModelClient], data: bytes, status: int
) -> None:
    client, fake = client_and_fake
    assert_error(post_file(client, data), status)
    assert not fake.calls


def test_giant_pixel_bomb_is_413(client_and_fake: tuple[TestClient, FakeModelClient]) -> None:
    client, _ = client_and_fake
    assert_error(post_file(client, images.png_header_only(100_000, 100_000)), 413)


def test_pixel_limit_comes_from_settings(make_client: MakeClient) -> None:
    client, _ = make_client(max_pixels=100 * 100)
    assert post_file(client, images.solid(50, size=100)).status_code == 200
    assert "pixels" in assert_error(post_file(client, images.solid(50, size=101)), 413)["error"]


def test_byte_limit(make_client: MakeClient) -> None:
    client, _ = make_client(max_upload_bytes=4096)
    small = images.solid(50, size=16)
    assert len(small) < 4096 and post_file(client, small).status_code == 200
    noisy = images.encode(
        images.Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)), "PNG"
    )
    assert len(noisy) > 4096
    assert "limit" in assert_error(post_file(client, noisy), 413)["error"]


def test_body_limit_is_enforced_on_chunked_uploads_too(make_client: MakeClient) -> None:
    client, _ = make_client(max_upload_bytes=4096)
    boundary = "boundary123"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()

    def body():  # type: ignore[no-untyped-def]
        yield head
        for _ in range(64):
            yield b"\x00" * 1024
        yield f"\r\n--{boundary}--\r\n".encode()

    response = client.post(
        "/predict", content=body(), headers={"content-type": f"multipart/form-data; boundary={boundary}"}
    )
    assert_error(response, 413)


def test_declared_content_length_over_the_limit_is_refused(make_client: MakeClient) -> None:
    client, _ = make_client(max_upload_bytes=4096)
    response = client.post(
        "/predict",
        content=b"x" * 100_000,
        headers={"content-type": "multipart/form-data; boundary=abc"},
    )
    assert_error(response, 413)


def test_missing_file_is_422(client_and_fake: tuple[TestClient, FakeModelClient]) -> None:
    client, _ = client_and_fake
    assert_error(client.post("/predict"), 422)
    assert_error(client.post("/predict", json={"file": "x"}), 422)
    body = assert_error(
        client.post("/predict", files={"image": ("x.png", images.solid(1), "image/png")}), 422
    )
    assert "'image'" in body["error"]  # says which fields it did get
    assert_error(client.post("/predict", data={"file": "not a file"}), 422)
    # What a browser sends when no file was chosen: an empty part with an empty file name.
    assert_error(client.post("/predict", files={"file": ("", b"", "application/octet-stream")}), 422)
    assert_error(client.post("/predict/batch"), 422)


def test_malformed_multipart_is_400(client_and_fake: tuple[TestClient, FakeModelClient]) -> None:
    client, _ = client_and_fake
    response = client.post(
        "/predict",
        content=b"--abc\r\nthis is not a part header\r\n\r\n",
        headers={"content-type": "multipart/form-data; boundary=abc"},
    )
    assert response.status_code in (400, 422)
    assert_error(response, response.status_code)
    assert_error(client.post("/predict", content=b"x", headers={"content-type": "multipart/form-data"}), 400)


def test_too_many_files(make_client: MakeClient) -> None:
    client, _ = make_client(max_batch_files=3)
    files = [("files", (f"{index}.png", images.solid(index), "image/png")) for index in range(4)]
    assert "at most 3" in assert_error(client.post("/predict/batch", files=files), 413)["error"]
    assert client.post("/predict/batch", files=files[:3]).status_code == 200
    # /predict takes exactly one file.
    assert_error(client.post("/predict", files=[("file", ("a.png", images.solid(1), "image/png"))] * 2), 413)


def test_random_bytes_never_give_a_500(client_and_fake: tuple[TestClient, FakeModelClient]) -> None:
    client, _ = client_and_fake
    generator = random.Random(7)
    valid = images.encode(images.gradient(64, 64), "PNG")
    for trial in range(40):
        if trial % 2:
            data = bytes(generator.randrange(256) for _ in range(generator.randrange(1, 400)))
        else:  # a real image with some bytes flipped: reaches the decoder proper
            corrupted = bytearray(valid)
            for _ in range(8):
                corrupted[generator.randrange(16, len(corrupted))] = generator.randrange(256)
            data = bytes(corrupted)
        assert post_file(client, data).status_code in (200, 400, 413, 415)


# -- errors from the model server ------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (ModelUnavailableError("down", headers={"Retry-After": "5"}), 503),
        (UpstreamTimeoutError("slow"), 504),
        (UpstreamError("odd answer"), 502),
    ],
)
def test_model_server_errors_map_to_statuses(
    client_and_fake: tuple[TestClient, FakeModelClient], error: Exception, status: int
) -> None:
    client, fake = client_and_fake
    fake.error = error
    response = post_file(client, images.solid(100))
    assert_error(response, status)
    if status == 503:
        assert response.headers["retry-after"] == "5"


# -- pinning and canary ----------------------------------------------------------------------


def test_version_can_be_pinned_by_header_or_query(
    client_and_fake: tuple[TestClient, FakeModelClient],
) -> None:
    client, fake = client_and_fake
    body = post_file(client, images.solid(100), headers={"X-Model-Version": "2"}).json()
    assert body["model_version"] == 2 and body["version_label"] == "pinned"
    post_file(client, images.solid(100), headers={"X-Model-Version": "canary"})
    assert fake.calls[-1][1].label == "canary" and fake.calls[-1][1].pinned
    post_file(client, images.solid(100), params={"version": 7})
    assert fake.calls[-1][1].version == 7
    post_file(client, images.solid(100), params={"label": "stable"})
    assert fake.calls[-1][1].label == "stable" and fake.calls[-1][1].pinned


@pytest.mark.parametrize(
    ("params", "headers"),
    [
        ({"version": 1, "label": "stable"}, {}),
        ({"label": "no spaces allowed"}, {}),
        ({"version": "two"}, {}),
        ({"version": 0}, {}),
        ({"version": 1}, {"X-Model-Version": "2"}),
        ({}, {"X-Model-Version": "bad label!"}),
    ],
)
def test_bad_pins_are_422(
    client_and_fake: tuple[TestClient, FakeModelClient], params: dict, headers: dict
) -> None:
    client, fake = client_and_fake
    assert_error(post_file(client, images.solid(100), params=params, headers=headers), 422)
    assert not fake.calls


# -- health, readiness, metrics, model info, pages -------------------------------------------


def test_health_touches_nothing(client_and_fake: tuple[TestClient, FakeModelClient]) -> None:
    client, fake = client_and_fake
    fake.error = ModelUnavailableError("down")
    fake.ready = False
    assert client.get("/health").json() == {"status": "ok"}


def test_ready_follows_the_model_state(client_and_fake: tuple[TestClient, FakeModelClient]) -> None:
    client, fake = client_and_fake
    response = client.get("/ready")
    assert response.status_code == 200 and response.json()["ready"] is True
    fake.ready = False
    body = assert_error(client.get("/ready"), 503)
    assert body["ready"] is False and body["targets"][0]["state"] == "LOADING"
    assert client.get("/ready").headers["retry-after"] == "5"


def test_metrics_cover_requests_stages_uploads_scores(
    client_and_fake: tuple[TestClient, FakeModelClient],
) -> None:
    client, _ = client_and_fake
    post_file(client, images.solid(200))
    post_file(client, b"not an image")
    text = client.get("/metrics").text
    for expected in (
        'aidetect_gateway_requests_total{route="/predict",status_class="2xx"} 1.0',
        'aidetect_gateway_requests_total{route="/predict",status_class="4xx"} 1.0',
        'aidetect_gateway_stage_seconds_count{stage="read"} 2.0',
        'aidetect_gateway_stage_seconds_count{stage="decode"} 1.0',
        'aidetect_gateway_stage_seconds_count{stage="resize"} 1.0',
        'aidetect_gateway_stage_seconds_count{stage="model_call"} 1.0',
        'aidetect_gateway_stage_seconds_count{stage="total"} 2.0',
        "aidetect_gateway_upload_bytes_count 2.0",
        'aidetect_gateway_score_count{model_name="ai_detector",model_version="3"} 1.0',
        'aidetect_gateway_predictions_total{label="ai",model_name="ai_detector",model_version="3"} 1.0',
        'aidetect_gateway_image_errors_total{status="400"} 1.0',
        "aidetect_gateway_requests_in_flight",
        "aidetect_gateway_model_info",
        "aidetect_gateway_upstream_errors_total",
    ):
        assert expected in text, expected
    # Unknown paths share one label: user input never becomes a label value.
    client.get("/no/such/path/12345")
    assert "12345" not in client.get("/metrics").text


def test_model_info(client_and_fake: tuple[TestClient, FakeModelClient]) -> None:
    client, _ = client_and_fake
    body = client.get("/v1/model").json()
    assert body["model_version"] == FAKE_VERSION
    assert body["threshold"] == FAKE_THRESHOLD
    assert body["input"] == {"name": "image", "dtype": "DT_UINT8", "shape": [-1, IMAGE_SIZE, IMAGE_SIZE, 3]}
    assert "predict_image_bytes" in body["signatures"]
    assert body["upload_limits"]["max_batch_files"] == 16  # the web page reads its limits here


def test_model_info_reads_the_model_card_when_the_folder_is_visible(
    make_client: MakeClient, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / str(FAKE_VERSION)).mkdir()
    (tmp_path / str(FAKE_VERSION) / "model_card.json").write_text('{"backbone": "efficientnet_lite0"}')
    client, _ = make_client(model_card_directory=tmp_path)
    assert client.get("/v1/model").json()["model_card"] == {"backbone": "efficientnet_lite0"}


def test_web_page_docs_and_openapi_are_served_locally(
    client_and_fake: tuple[TestClient, FakeModelClient],
) -> None:
    client, _ = client_and_fake
    page = client.get("/")
    assert page.status_code == 200 and "Analyze" in page.text
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200
    docs = client.get("/docs").text
    assert "/docs-assets/swagger-ui-bundle.js" in docs and "cdn" not in docs.lower()
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    schema = client.get("/openapi.json").json()
    upload = schema["paths"]["/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert upload["schema"]["properties"]["file"]["format"] == "binary"
    assert {"/predict/batch", "/health", "/ready", "/metrics", "/v1/model"} <= set(schema["paths"])


def test_unknown_path_and_method_keep_the_error_shape(
    client_and_fake: tuple[TestClient, FakeModelClient],
) -> None:
    client, _ = client_and_fake
    assert_error(client.get("/nothing-here"), 404)
    assert_error(client.get("/predict"), 405)


def test_no_route_or_dependency_runs_on_the_thread_pool() -> None:
    # FastAPI runs a plain `def` endpoint or dependency in its thread pool: a thread hop per call,
    # which under load queued requests for tens of ms (docs/performance.md, issue 17). Every one
    # the gateway declares is a coroutine (or an async generator), so none takes that hop.
    def calls(dependant: Dependant) -> Iterator[Callable[..., object]]:
        if dependant.call is not None:
            yield dependant.call
        for child in dependant.dependencies:
            yield from calls(child)

    # The app's own routes and those of the API router it includes (FastAPI keeps the latter in
    # the router, not flattened into app.routes).
    every_route = [*create_app(Settings()).routes, *api.router.routes]
    routes = [route for route in every_route if isinstance(route, APIRoute)]
    assert {"/predict", "/predict/batch", "/v1/model"} <= {route.path for route in routes}
    found = {call for route in routes for call in calls(route.dependant)}
    assert len(found) > 10  # the endpoints and their dependencies, nested ones included
    blocking = sorted(
        call.__qualname__
        for call in found
        if not (inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call))
    )
    assert blocking == []
