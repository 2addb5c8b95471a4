"""The gateway process against the real local model server process, on real files from ../shared.

The model is the tiny contract model of tiny_model.py (score = sigmoid((brightness - 0.5) * 10)),
so the expected score of every file can be computed here from the shared preprocessing: equality
proves the tensor reached the model intact and the answer came back unchanged.
"""

from __future__ import annotations

import csv
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from common.preprocessing import IMAGE_SIZE
from gateway.main import create_app
from gateway.settings import Settings
from tests.gateway import images
from tests.gateway.conftest import LiveStack, TinyModelRepository
from tests.gateway.processes import (
    START_TIMEOUT_SECONDS,
    answers,
    free_port,
    model_server_process,
    wait_until,
)
from tests.gateway.tiny_model_score import expected_score

pytestmark = pytest.mark.integration

CONTENT_TYPES = {".jpeg": "image/jpeg", ".jpg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}


def upload_rows(uploads_dir: Path) -> list[dict[str, str]]:
    with (uploads_dir / "manifest.csv").open(newline="") as manifest:
        return list(csv.DictReader(manifest))


def post(stack: LiveStack, path: str, **kwargs: object) -> httpx.Response:
    return httpx.post(f"{stack.gateway_url}{path}", timeout=60.0, **kwargs)  # type: ignore[arg-type]


def assert_error(response: httpx.Response, status: int) -> dict:  # type: ignore[type-arg]
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False and body["error"]
    return body


def test_every_real_upload_is_scored_by_the_model(live_stack: LiveStack, uploads_dir: Path) -> None:
    rows = upload_rows(uploads_dir)
    assert len(rows) >= 40
    for row in rows:
        path = uploads_dir / row["file"]
        data = path.read_bytes()
        response = post(live_stack, "/predict", files={"file": (path.name, data, CONTENT_TYPES[path.suffix])})
        assert response.status_code == 200, (row["file"], response.text)
        body = response.json()
        assert body["success"] is True and body["filename"] == path.name
        assert body["model_name"] == "ai_detector" and body["model_version"] == 1
        assert body["version_label"] == "stable" and body["threshold"] == pytest.approx(0.5)
        assert body["score"] == pytest.approx(expected_score(data), abs=1e-5), row["file"]
        assert body["ai_probability"] == round(body["score"] * 100, 2)
        assert body["label"] == ("ai" if body["score"] >= body["threshold"] else "real")
        assert body["request_id"] == response.headers["x-request-id"]


def test_batch_of_real_uploads_in_one_call(live_stack: LiveStack, uploads_dir: Path) -> None:
    paths = [uploads_dir / row["file"] for row in upload_rows(uploads_dir)]
    files = [("files", (path.name, path.read_bytes(), CONTENT_TYPES[path.suffix])) for path in paths[:15]]
    files.append(("files", ("manifest.csv", (uploads_dir / "manifest.csv").read_bytes(), "text/csv")))
    response = post(live_stack, "/predict/batch", files=files)
    assert response.status_code == 200, response.text
    body = response.json()
    results = body["results"]
    assert len(results) == 16 and body["model_version"] == 1
    for path, result in zip(paths[:15], results, strict=False):
        assert result["success"] and result["filename"] == path.name
        assert result["score"] == pytest.approx(expected_score(path.read_bytes()), abs=1e-5)
    assert results[-1]["success"] is False and results[-1]["status"] == 400
    assert (
        "at most 16"
        in assert_error(post(live_stack, "/predict/batch", files=[*files, files[0]]), 413)["error"]
    )


def test_each_error_status_from_a_real_bad_input(live_stack: LiveStack, uploads_dir: Path) -> None:
    real_jpeg = (uploads_dir / "real_00.jpeg").read_bytes()
    cases = [
        (400, {"file": ("manifest.jpg", (uploads_dir / "manifest.csv").read_bytes(), "image/jpeg")}),
        (400, {"file": ("cut.jpeg", real_jpeg[: len(real_jpeg) // 3], "image/jpeg")}),
        (400, {"file": ("empty.png", b"", "image/png")}),
        (413, {"file": ("bomb.png", images.png_header_only(12_000, 12_000), "image/png")}),
        (413, {"file": ("huge.jpeg", real_jpeg + b"\x00" * (21 * 1024 * 1024), "image/jpeg")}),
        (415, {"file": ("photo.heic", b"\x00\x00\x00\x18ftypheic" + real_jpeg[:200], "image/heic")}),
        (422, {"image": ("real.jpeg", real_jpeg, "image/jpeg")}),
    ]
    for status, files in cases:
        assert_error(post(live_stack, "/predict", files=files), status)
    assert_error(post(live_stack, "/predict"), 422)
    # A pinned version the model server does not serve: NOT_FOUND upstream.
    response = post(
        live_stack, "/predict", files={"file": ("r.jpeg", real_jpeg, "image/jpeg")}, params={"version": 9}
    )
    assert_error(response, 404)


def test_deadline_exceeded_is_504(
    tiny_model_repository: TinyModelRepository, uploads_dir: Path, tmp_path: Path
) -> None:
    # A real model server that holds a lone Predict for 5 s (it waits out the batch timeout for
    # company) and an in-process gateway with a 0.5 s deadline: the deadline passes for certain.
    # (A deadline of microseconds against a fast server is a race: on a starved CPU the answer can
    # arrive before the client's deadline timer fires, and a CI run once saw 200.)
    batching = tmp_path / "batching.config"
    batching.write_text(
        "max_batch_size { value: 16 }\nbatch_timeout_micros { value: 5000000 }\n"
        "num_batch_threads { value: 1 }\nmax_enqueued_batches { value: 4 }\n"
    )
    grpc_port, rest_port = free_port(), free_port()
    server = model_server_process(
        tiny_model_repository.config_file,
        tiny_model_repository.models,
        grpc_port,
        rest_port,
        tmp_path / "model_server.log",
        extra_flags=["--enable_batching", f"--batching_parameters_file={batching}"],
    )
    settings = Settings(model_server_address=f"127.0.0.1:{grpc_port}", request_timeout_seconds=0.5)
    server.start()
    try:
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            wait_until(
                lambda: client.get("/ready").status_code == 200,
                START_TIMEOUT_SECONDS,
                "slow model server ready",
                server.log_path,
            )
            data = (uploads_dir / "real_03.jpeg").read_bytes()
            response = client.post("/predict", files={"file": ("r.jpeg", data, "image/jpeg")})
    finally:
        server.stop()
    assert_error(response, 504)


def test_model_info_and_metrics(live_stack: LiveStack) -> None:
    info = httpx.get(f"{live_stack.gateway_url}/v1/model", timeout=30).json()
    assert info["model_version"] == 1 and info["threshold"] == pytest.approx(0.5)
    assert info["signatures"] == ["explain_image", "predict_image_bytes", "serving_default"]
    assert info["input"] == {"name": "image", "dtype": "DT_UINT8", "shape": [-1, IMAGE_SIZE, IMAGE_SIZE, 3]}
    metrics = httpx.get(f"{live_stack.gateway_url}/metrics", timeout=30).text
    assert (
        'aidetect_gateway_model_info{model_name="ai_detector",model_version="1",version_label="stable"} 1.0'
        in metrics
    )


def test_model_server_down_then_back(live_stack: LiveStack, uploads_dir: Path) -> None:
    """Runs last: stops the model server, checks 503s, restarts it and waits for /ready."""
    data = (uploads_dir / "real_01.jpeg").read_bytes()
    ready_url = f"{live_stack.gateway_url}/ready"
    assert httpx.get(ready_url, timeout=30).status_code == 200
    try:
        assert live_stack.model_server.stop() == 0  # graceful shutdown on SIGTERM
        wait_until(answers(ready_url, 503), 60, "gateway /ready 503 after the model server stopped")
        body = assert_error(httpx.get(ready_url, timeout=30), 503)
        assert body["ready"] is False and body["targets"][0]["available"] is False
        response = post(live_stack, "/predict", files={"file": ("r.jpeg", data, "image/jpeg")})
        assert_error(response, 503)
        assert response.headers["retry-after"] == "7"
        assert httpx.get(f"{live_stack.gateway_url}/health", timeout=30).status_code == 200
        metrics = httpx.get(f"{live_stack.gateway_url}/metrics", timeout=30).text
        assert 'aidetect_gateway_upstream_errors_total{code="UNAVAILABLE"}' in metrics
    finally:
        live_stack.model_server.start()
    live_stack.wait_ready()
    response = post(live_stack, "/predict", files={"file": ("r.jpeg", data, "image/jpeg")})
    assert response.status_code == 200 and response.json()["model_version"] == 1
