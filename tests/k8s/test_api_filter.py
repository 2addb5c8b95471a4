"""The model server's API filter (k8s/base/tf-serving/api-filter.conf) with Debian's nginx in
front of the local model server: what the gateway and Prometheus need passes, the control plane
does not.

The local server here takes HandleReloadConfigRequest (--enable_reload_config_rpc), as TF
Serving always does, so a refusal can only come from the filter. Only the listen and upstream
addresses and the temporary paths of the production file are changed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    model_management_pb2,
    model_pb2,
)

from common import model_config, signatures
from common.repository import REPO_ROOT
from tests.serving.local_server_support import (
    MODEL_NAME,
    Client,
    ServerProcess,
    build_tiny_saved_model,
    config_text,
    copy_version,
    eventually,
    free_port,
    random_images,
    start_server,
)

pytestmark = [pytest.mark.integration, pytest.mark.model]

FILTER_CONFIG = REPO_ROOT / "k8s" / "base" / "tf-serving" / "api-filter.conf"


@dataclass
class Filtered:
    server: ServerProcess
    grpc_address: str  # through the filter
    metrics_url: str  # through the filter


def nginx_binary() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        pytest.fail("nginx is not installed: `make tools` installs Debian's nginx-light")
    return found


def local_config(server: ServerProcess, grpc_port: int, metrics_port: int, scratch: Path) -> str:
    text = FILTER_CONFIG.read_text()
    replacements = {
        "server 127.0.0.1:8500;": f"server 127.0.0.1:{server.grpc_port};",
        "proxy_pass http://127.0.0.1:8501;": f"proxy_pass http://127.0.0.1:{server.rest_port};",
        "listen 8510 http2;": f"listen 127.0.0.1:{grpc_port} http2;",
        "listen 8511;": f"listen 127.0.0.1:{metrics_port};",
        "/tmp/": f"{scratch}/",
    }
    for old, new in replacements.items():
        assert old in text, f"{FILTER_CONFIG.name} no longer has {old!r}"
        text = text.replace(old, new)
    return text


@pytest.fixture(scope="module")
def filtered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Filtered]:
    root = tmp_path_factory.mktemp("api-filter")
    build_tiny_saved_model(root / "built", bias=0.0)
    copy_version(root / "built", root / "models" / MODEL_NAME, 1)
    (root / "models.config").write_text(
        config_text([{"name": MODEL_NAME, "base_path": f"/models/{MODEL_NAME}", "policy": "all {}"}])
    )
    (root / "monitoring.config").write_text("prometheus_config { enable: true }\n")
    server = start_server(
        [
            f"--model_config_file={root / 'models.config'}",
            f"--model_base_path_prefix_map=/models={root / 'models'}",
            f"--monitoring_config_file={root / 'monitoring.config'}",
            "--enable_reload_config_rpc",
        ],
        root / "server.log",
    )
    grpc_port, metrics_port = free_port(), free_port()
    (root / "nginx").mkdir()
    (root / "nginx.conf").write_text(local_config(server, grpc_port, metrics_port, root / "nginx"))
    nginx = subprocess.Popen(
        [nginx_binary(), "-e", "stderr", "-p", str(root / "nginx"), "-c", str(root / "nginx.conf"),
         "-g", "daemon off;"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    client = Client(f"127.0.0.1:{grpc_port}")
    try:
        eventually(lambda: client.status()[1][0] == "AVAILABLE", "version 1 through the filter", server)
        yield Filtered(server, f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{metrics_port}")
    finally:
        client.close()
        nginx.terminate()
        nginx.wait(timeout=30)
        server.stop()


@pytest.fixture(scope="module")
def through_filter(filtered: Filtered) -> Iterator[Client]:
    client = Client(filtered.grpc_address)
    yield client
    client.close()


def _reload_request() -> model_management_pb2.ReloadConfigRequest:
    """What an attacker sends: unload everything (or load from /etc)."""
    return model_management_pb2.ReloadConfigRequest(config=model_config.parse(config_text([])))


def test_what_the_gateway_uses_passes(through_filter: Client, filtered: Filtered) -> None:
    response, outputs = through_filter.predict({signatures.IMAGE_INPUT: random_images(2)})
    assert response.model_spec.version.value == 1 and outputs
    assert through_filter.status()[1][0] == "AVAILABLE"
    metadata = through_filter.predictions.GetModelMetadata(
        get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=model_pb2.ModelSpec(name=MODEL_NAME), metadata_field=["signature_def"]
        ),
        timeout=10,
    )
    assert metadata.model_spec.version.value == 1
    health = health_pb2_grpc.HealthStub(through_filter.channel).Check(
        health_pb2.HealthCheckRequest(), timeout=10
    )
    assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_the_control_plane_and_other_methods_are_refused(through_filter: Client, filtered: Filtered) -> None:
    for call in (
        lambda: through_filter.models.HandleReloadConfigRequest(_reload_request(), timeout=10),
        lambda: through_filter.predictions.Classify(
            classification_pb2.ClassificationRequest(model_spec=model_pb2.ModelSpec(name=MODEL_NAME)),
            timeout=10,
        ),
    ):
        with pytest.raises(grpc.RpcError) as refused:
            call()
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "API filter" in (refused.value.details() or "")
    # The server behind it would have taken the reload: the filter is what stopped it.
    assert "HandleReloadConfigRequest" not in filtered.server.log()
    response, _ = through_filter.predict({signatures.IMAGE_INPUT: random_images(1)})
    assert response.model_spec.version.value == 1


def test_only_the_metrics_path_is_published_over_http(filtered: Filtered) -> None:
    metrics = httpx.get(f"{filtered.metrics_url}/monitoring/prometheus/metrics", timeout=10)
    assert metrics.status_code == 200 and re.search(r"^:tensorflow:serving:request_count", metrics.text, re.M)
    assert httpx.post(f"{filtered.metrics_url}/monitoring/prometheus/metrics", timeout=10).status_code == 403
    for path in (f"/v1/models/{MODEL_NAME}", f"/v1/models/{MODEL_NAME}:predict"):
        assert (
            httpx.post(f"{filtered.metrics_url}{path}", json={"instances": []}, timeout=10).status_code == 404
        )
        assert httpx.get(f"{filtered.metrics_url}{path}", timeout=10).status_code == 404
