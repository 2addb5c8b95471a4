"""The committed starter model behind the real local model server and the gateway, on real uploads.

Uses serving/models.config and models/ai_detector exactly as `make run` does. "Clearly AI" and
"clearly real" are the model's own most confident answers: the upload it scores highest must be
an AI image labelled "ai", the one it scores lowest a real photo labelled "real".
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from common import model_versions
from gateway.main import create_app
from gateway.settings import Settings
from tests.gateway.processes import (
    REPO_ROOT,
    START_TIMEOUT_SECONDS,
    free_port,
    model_server_process,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.model]

# AIDETECT_MODELS_DIR points the test at another models/ folder (e.g. a fresh export).
MODELS = Path(os.environ.get("AIDETECT_MODELS_DIR", REPO_ROOT / "models"))
CONFIG = REPO_ROOT / "serving" / "models.config"


@pytest.fixture(scope="module")
def starter_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    versions = model_versions.versions(MODELS / "ai_detector")
    if not versions:
        pytest.skip("no committed starter model in models/ai_detector (the export stage writes it)")
    log = tmp_path_factory.mktemp("starter") / "model_server.log"
    grpc_port = free_port()
    server = model_server_process(CONFIG, MODELS, grpc_port, free_port(), log)
    server.start()
    try:
        settings = Settings(
            model_server_address=f"127.0.0.1:{grpc_port}",
            model_card_directory=MODELS / "ai_detector",
            max_batch_files=48,  # all the uploads in one request
        )
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            wait_until(lambda: client.get("/ready").status_code == 200, START_TIMEOUT_SECONDS, "ready", log)
            yield client
    finally:
        server.stop()


def test_clear_examples_are_classified_as_such(starter_gateway: TestClient, uploads_dir: Path) -> None:
    with (uploads_dir / "manifest.csv").open(newline="") as manifest:
        rows = list(csv.DictReader(manifest))
    files = [("files", (row["file"], (uploads_dir / row["file"]).read_bytes())) for row in rows]
    response = starter_gateway.post("/predict/batch", files=files)
    assert response.status_code == 200, response.text
    results = {result["filename"]: result for result in response.json()["results"]}
    truth = {row["file"]: row["label"] for row in rows}
    assert all(result["success"] for result in results.values())
    most_ai = max(results.values(), key=lambda result: result["score"])
    most_real = min(results.values(), key=lambda result: result["score"])
    assert truth[most_ai["filename"]] == "ai" and most_ai["label"] == "ai", most_ai
    assert truth[most_real["filename"]] == "real" and most_real["label"] == "real", most_real


def test_model_info_shows_the_model_card(starter_gateway: TestClient) -> None:
    info = starter_gateway.get("/v1/model").json()
    assert info["version_label"] == "stable"
    assert 0.0 < info["threshold"] < 1.0
    assert info["model_card"] is not None
