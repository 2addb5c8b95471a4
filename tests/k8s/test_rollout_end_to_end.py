"""The whole rollout on loopback: local model server + gateway + a client sending uploads all along.

`python -m k8s.rollout run` (in-process, through Typer's runner) publishes a version, starts the
canary, watches it from the gateway's /metrics and decides. Two versions go through it:
- a good one (as fast as stable): promoted, stable moves to it, the old version unloads;
- a bad one (answers correctly but every call sleeps 1.5 s): the watch sees its p95 over the
  limit and it is rolled back, stable untouched.
During both, a client keeps posting real uploads to the gateway, and not one request may fail:
label moves, loads and unloads are ordered so that every request has a served version to go to.

The p95 limit (1 s) sits far from both models (tens of ms against 1.5 s) so the verdicts do not
depend on how busy the machine is.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from common import model_config, model_versions
from common.model_config import CANARY_LABEL, STABLE_LABEL
from k8s import rollout, rollout_steps
from k8s.model_servers import AVAILABLE, ModelServer
from tests.gateway.processes import (
    START_TIMEOUT_SECONDS,
    ManagedProcess,
    answers,
    child_process,
    free_port,
    gateway_process,
    wait_until,
)
from tests.k8s.rollout_support import build_model, write_stable_config
from tests.serving.local_server_support import MODEL_NAME

pytestmark = [pytest.mark.integration, pytest.mark.model, pytest.mark.slow]

SLOW_MODEL_DELAY_MILLISECONDS = 1500
P95_LIMIT_MILLISECONDS = 1000
CLIENT_THREADS = 2
CLIENT_MAX_REQUESTS = 20_000  # bounded: the loop stops at this count or when the test says so
CLIENT_PAUSE_SECONDS = 0.01  # between two requests of one thread: steady traffic, not a load test


@dataclass
class Stack:
    workspace: Path
    model_server: ModelServer
    gateway_url: str
    processes: list[ManagedProcess]

    @property
    def models(self) -> Path:
        return self.workspace / "models" / MODEL_NAME

    @property
    def config(self) -> Path:
        return self.workspace / "models.config"

    def logs(self) -> str:
        return "\n".join(f"--- {process.log_path.name}\n{process.log_tail(60)}" for process in self.processes)


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exports")
    return {
        "stable": build_model(root / "stable", bias=0.0),
        "good": build_model(root / "good", bias=0.3),
        "slow": build_model(root / "slow", bias=-0.3, delay_milliseconds=SLOW_MODEL_DELAY_MILLISECONDS),
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, exports: dict[str, Path]) -> Iterator[Stack]:
    workspace = tmp_path_factory.mktemp("stack")
    models = workspace / "models" / MODEL_NAME
    assert rollout_steps.publish_version(exports["stable"], models) == 1
    write_stable_config(workspace / "models.config", 1)
    (workspace / "traffic.json").write_text('{"canary_label": "canary", "canary_percent": 0.0}\n')
    grpc_port, rest_port, gateway_port = free_port(), free_port(), free_port()
    server = child_process(
        [
            sys.executable, "-m", "serving.server",
            "--host=127.0.0.1", f"--port={grpc_port}", f"--rest_api_port={rest_port}",
            f"--model_config_file={workspace / 'models.config'}",
            "--model_config_file_poll_wait_seconds=1",
            "--file_system_poll_wait_seconds=1",
            f"--model_base_path_prefix_map=/models={workspace / 'models'}",
            "--tensorflow_intra_op_parallelism=1",
            "--tensorflow_inter_op_parallelism=1",
            "--shutdown_grace_seconds=2",
        ],
        workspace / "model-server.log",
    )  # fmt: skip
    gateway = gateway_process(
        gateway_port,
        f"127.0.0.1:{grpc_port}",
        workspace / "gateway.log",
        canary_file=str(workspace / "traffic.json"),
        metadata_cache_seconds="1",
    )
    processes = [server, gateway]
    model_server = ModelServer(f"127.0.0.1:{grpc_port}", MODEL_NAME)
    try:
        server.start()
        gateway.start()
        gateway_url = f"http://127.0.0.1:{gateway_port}"
        wait_until(
            answers(f"{gateway_url}/ready"), START_TIMEOUT_SECONDS, "the gateway ready", gateway.log_path
        )
        yield Stack(workspace, model_server, gateway_url, processes)
    finally:
        model_server.close()
        for process in reversed(processes):
            process.stop()


@dataclass
class ClientTraffic:
    """Threads posting real uploads in turn to /predict until stopped (bounded)."""

    url: str
    images: list[bytes]
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    versions: Counter[int] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _loop(self) -> None:
        with httpx.Client(timeout=30.0) as client:
            turn = 0
            while not self._stop.is_set() and sum(self.statuses.values()) < CLIENT_MAX_REQUESTS:
                image = self.images[turn % len(self.images)]
                turn += 1
                try:
                    response = client.post(f"{self.url}/predict", files={"file": ("upload.jpg", image)})
                except httpx.HTTPError as error:
                    with self._lock:
                        self.failures.append(f"transport: {error!r}")
                    continue
                with self._lock:
                    self.statuses[response.status_code] += 1
                    if response.status_code == 200:
                        self.versions[response.json()["model_version"]] += 1
                    else:
                        self.failures.append(f"{response.status_code}: {response.text[:200]}")
                self._stop.wait(CLIENT_PAUSE_SECONDS)

    def __enter__(self) -> ClientTraffic:
        for _ in range(CLIENT_THREADS):
            thread = threading.Thread(target=self._loop, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)


@pytest.fixture(scope="module")
def upload(uploads_dir: Path) -> list[bytes]:
    """Small real JPEG uploads (decoding stays cheap on two shared cores), half of them routed to
    the canary at the rollout's 50% share: the gateway routes by a hash of the image bytes, so
    one image alone would meet one version only."""
    from gateway.model_client import content_share

    jpegs = sorted(uploads_dir.glob("*.jp*g"), key=lambda path: path.stat().st_size)
    assert jpegs, f"no JPEG in {uploads_dir}"
    contents = [path.read_bytes() for path in jpegs[:40]]
    canary = [data for data in contents if content_share(data) < 0.5][:3]
    stable = [data for data in contents if content_share(data) >= 0.5][:3]
    assert canary and stable, "the smallest uploads all fall on one side of the canary share"
    return canary + stable


def run_rollout(stack: Stack, export: Path) -> tuple[int, str]:
    arguments = [
        "--config", str(stack.config),
        "--model-server", stack.model_server.address,
        "--traffic-file", str(stack.workspace / "traffic.json"),
        "--gateway-metrics-url", f"{stack.gateway_url}/metrics",
        "--traffic-settle-seconds", "3",  # the gateway re-reads the file at most every second
        "--timeout-seconds", "120",
        "run", str(export),
        "--models-dir", str(stack.models),
        "--canary-percent", "50",
        "--duration", "12",
        "--check-every", "2",
        "--min-requests", "8",
        "--max-p95-ms", str(P95_LIMIT_MILLISECONDS),
    ]  # fmt: skip
    result = CliRunner().invoke(rollout.app, arguments, catch_exceptions=False)
    return result.exit_code, result.output


def served(stack: Stack) -> dict[str, object]:
    states = stack.model_server.version_states()
    return {
        "available": sorted(version for version, state in states.items() if state == AVAILABLE),
        STABLE_LABEL: stack.model_server.label_version(STABLE_LABEL),
        CANARY_LABEL: stack.model_server.label_version(CANARY_LABEL),
    }


def test_a_good_version_is_promoted_without_a_failed_request(
    stack: Stack, exports: dict[str, Path], upload: list[bytes]
) -> None:
    with ClientTraffic(stack.gateway_url, upload) as traffic:
        time.sleep(2)  # some stable-only traffic first
        exit_code, output = run_rollout(stack, exports["good"])
        time.sleep(2)  # and some after the promotion
    print(f"good version: client statuses {dict(traffic.statuses)}, versions {dict(traffic.versions)}")
    assert exit_code == 0, f"{output}\n{stack.logs()}"
    assert "promoted: version 2" in output
    # The rollout read the share from the gateway's gauge, not a fixed pause (issue 14).
    assert "do not report" not in output and "cannot read the gateways" not in output, output
    assert served(stack) == {"available": [2], STABLE_LABEL: 2, CANARY_LABEL: None}
    assert model_config.load(stack.config).model_config_list.config[0].version_labels == {STABLE_LABEL: 2}
    assert traffic.failures == [], f"{traffic.statuses}\n{traffic.failures[:5]}\n{output}"
    assert traffic.versions[1] > 0 and traffic.versions[2] > 0  # both versions answered clients


def test_a_slow_version_is_rolled_back_without_a_failed_request(
    stack: Stack, exports: dict[str, Path], upload: list[bytes]
) -> None:
    stable_before = served(stack)[STABLE_LABEL]
    with ClientTraffic(stack.gateway_url, upload) as traffic:
        time.sleep(2)
        exit_code, output = run_rollout(stack, exports["slow"])
        time.sleep(2)
    print(f"slow version: client statuses {dict(traffic.statuses)}, versions {dict(traffic.versions)}")
    assert exit_code == rollout.EXIT_ROLLED_BACK, f"{output}\n{stack.logs()}"
    assert "canary UNHEALTHY" in output and "p95" in output
    slow_version = max(model_versions.versions(stack.models))
    assert served(stack) == {"available": [stable_before], STABLE_LABEL: stable_before, CANARY_LABEL: None}
    assert traffic.failures == [], f"{traffic.statuses}\n{traffic.failures[:5]}\n{output}"
    assert traffic.versions[slow_version] > 0  # the canary did get (slow, successful) requests
