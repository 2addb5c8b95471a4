"""Gateway test fixtures: the real app with the model client replaced through dependency overrides.

The fake stands at the edge (the model server); everything else (uploads, decoding, errors,
metrics, security) is the real code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from common import model_config
from common.model_config import DEFAULT_MODEL_NAME as MODEL_NAME
from common.preprocessing import IMAGE_SIZE
from gateway.dependencies import get_model_client
from gateway.errors import ExplainUnavailableError
from gateway.main import create_app
from gateway.model_client import (
    ModelTarget,
    Prediction,
    PredictionBatch,
    SignatureMetadata,
    VersionStatus,
)
from gateway.settings import Settings
from gateway.traffic import CanarySplit
from tests.gateway.processes import (
    REPO_ROOT,
    START_TIMEOUT_SECONDS,
    ManagedProcess,
    answers,
    free_port,
    gateway_process,
    model_server_process,
    wait_until,
)

FAKE_THRESHOLD = 0.5
FAKE_VERSION = 3


@dataclass
class FakeModelClient:
    """Answers like the model server: score = mean brightness / 255, label from the threshold."""

    error: Exception | None = None
    ready: bool = True
    explains: bool = True  # the model has the explain signature
    calls: list[tuple[np.ndarray, ModelTarget]] = field(default_factory=list)

    async def predict(
        self, images: np.ndarray, target: ModelTarget, explain: bool = False
    ) -> PredictionBatch:
        if self.error is not None:
            raise self.error
        if explain and not self.explains:
            raise ExplainUnavailableError(
                f"model version {FAKE_VERSION} was exported without the explain signature"
            )
        self.calls.append((images.copy(), target))
        scores = images.reshape(len(images), -1).mean(axis=1) / 255.0
        predictions = [
            Prediction(
                probability=float(score),
                logit=None,
                threshold=FAKE_THRESHOLD,
                label=int(score >= FAKE_THRESHOLD),
            )
            for score in scores
        ]
        version = target.version if target.version is not None else FAKE_VERSION
        # With explain: each 32x32 cell's brightness above the image's mean (what the score reads).
        cells = images.reshape(len(images), 8, 32, 8, 32, 3).mean(axis=(2, 4, 5)) / 255.0
        heatmaps = (cells - scores[:, None, None]).astype(np.float32) if explain else None
        return PredictionBatch(
            "ai_detector", version, "serving_default", target.version_label, predictions, heatmaps
        )

    async def metadata(self, target: ModelTarget, **_: object) -> SignatureMetadata:
        if self.error is not None:
            raise self.error
        return SignatureMetadata(
            model_name="ai_detector",
            model_version=FAKE_VERSION,
            signature_name="serving_default",
            input_name="image",
            input_dtype="DT_UINT8",
            input_shape=(-1, IMAGE_SIZE, IMAGE_SIZE, 3),
            output_names=("label", "logit", "probability", "threshold"),
            signature_names=("explain_image", "predict_image_bytes", "serving_default"),
        )

    async def threshold(self, target: ModelTarget) -> tuple[int, float]:
        await self.metadata(target)
        return FAKE_VERSION, FAKE_THRESHOLD

    async def readiness(self, split: CanarySplit) -> list[VersionStatus]:
        state = "AVAILABLE" if self.ready else "LOADING"
        return [VersionStatus("label 'stable'", "stable", FAKE_VERSION, state, self.ready)]


MakeClient = Callable[..., tuple[TestClient, FakeModelClient]]


@pytest.fixture
def make_client() -> Iterator[MakeClient]:
    """make_client(**settings) -> (TestClient of a fresh app, its fake model client)."""
    clients: list[TestClient] = []

    def make(**overrides: object) -> tuple[TestClient, FakeModelClient]:
        settings = Settings(**overrides)  # type: ignore[arg-type]
        app = create_app(settings)
        fake = FakeModelClient()
        app.dependency_overrides[get_model_client] = lambda: fake
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()  # runs the lifespan, as uvicorn would
        clients.append(client)
        return client, fake

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client_and_fake(make_client: MakeClient) -> tuple[TestClient, FakeModelClient]:
    return make_client()


# -- real processes (integration and browser tests) ------------------------------------------


def tiny_model_config() -> str:
    """As serving/models.config: version 1, labelled stable (written by common.model_config)."""
    config = model_config.new_config(MODEL_NAME, f"/models/{MODEL_NAME}", [1])
    model_config.set_label(config, MODEL_NAME, model_config.STABLE_LABEL, 1)
    return model_config.dumps(config)


@dataclass
class LiveStack:
    """The local model server (tiny contract model) and the gateway, as real processes on loopback."""

    model_server: ManagedProcess
    gateway: ManagedProcess
    gateway_url: str
    model_server_address: str

    def wait_ready(self) -> None:
        wait_until(
            answers(f"{self.gateway_url}/ready"),
            START_TIMEOUT_SECONDS,
            "gateway /ready 200",
            self.model_server.log_path,
        )


@dataclass
class TinyModelRepository:
    """A models/ folder with the tiny contract model as version 1, and a models.config for it."""

    root: Path
    models: Path
    config_file: Path


@pytest.fixture(scope="session")
def tiny_model_repository(tmp_path_factory: pytest.TempPathFactory) -> TinyModelRepository:
    if not (REPO_ROOT / "serving" / "server.py").is_file():
        pytest.skip("serving/server.py (the local model server) is not there yet")
    from tests.gateway.tiny_model import write_tiny_model  # TensorFlow: only when needed

    root = tmp_path_factory.mktemp("tiny-model")
    write_tiny_model(root / "models" / "ai_detector")
    config_file = root / "models.config"
    config_file.write_text(tiny_model_config())
    return TinyModelRepository(root, root / "models", config_file)


@pytest.fixture(scope="session")
def live_stack(
    tiny_model_repository: TinyModelRepository, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveStack]:
    root = tmp_path_factory.mktemp("live")
    config_file = tiny_model_repository.config_file
    grpc_port, rest_port, gateway_port = free_port(), free_port(), free_port()
    server = model_server_process(
        config_file, tiny_model_repository.models, grpc_port, rest_port, root / "model_server.log"
    )
    address = f"127.0.0.1:{grpc_port}"
    gateway = gateway_process(
        gateway_port,
        address,
        root / "gateway.log",
        retry_after_seconds="7",
        model_card_directory=str(tiny_model_repository.models / MODEL_NAME),
    )
    stack = LiveStack(server, gateway, f"http://127.0.0.1:{gateway_port}", address)
    server.start()
    gateway.start()
    try:
        wait_until(
            answers(f"{stack.gateway_url}/health"), START_TIMEOUT_SECONDS, "gateway up", gateway.log_path
        )
        stack.wait_ready()
        yield stack
    finally:
        gateway.stop()
        server.stop()
