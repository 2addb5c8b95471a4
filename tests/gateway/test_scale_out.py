"""More than one model server behind one gateway target (issue 14), on one machine.

Three local model servers on distinct loopback addresses (127.0.0.2-4, the same port), the gateway
pointed at all three (`ipv4:` target, gRPC's round_robin policy, as `dns:///` a headless Service
gives in Kubernetes). Each server's share comes from its own `:tensorflow:serving:request_count`.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from tests.gateway import images
from tests.gateway.conftest import TinyModelRepository
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

pytestmark = [pytest.mark.integration, pytest.mark.model]

ADDRESSES = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
UPLOADS = 300
CONCURRENCY = 4
RETURN_SECONDS = 10.0  # a restarted server gets requests again within this


@dataclass
class Replicas:
    servers: dict[str, ManagedProcess]
    rest_port: int
    gateway: ManagedProcess
    gateway_url: str

    def predict_count(self, address: str) -> float:
        text = httpx.get(f"http://{address}:{self.rest_port}/monitoring/prometheus/metrics", timeout=5).text
        return sum(
            float(value)
            for value in re.findall(
                r'^:tensorflow:serving:request_count\{[^}]*status="OK"[^}]*\} (\S+)', text, re.M
            )
        )

    def counts(self) -> dict[str, float]:
        return {address: self.predict_count(address) for address in ADDRESSES}


@pytest.fixture(scope="module")
def replicas(
    tiny_model_repository: TinyModelRepository, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Replicas]:
    root = tmp_path_factory.mktemp("replicas")
    grpc_port, rest_port, gateway_port = free_port(), free_port(), free_port()
    servers = {
        address: model_server_process(
            tiny_model_repository.config_file,
            tiny_model_repository.models,
            grpc_port,
            rest_port,
            root / f"model-server-{address}.log",
            extra_flags=[
                f"--host={address}",
                f"--monitoring_config_file={REPO_ROOT / 'serving' / 'monitoring.config'}",
            ],
        )
        for address in ADDRESSES
    }
    target = "ipv4:" + ",".join(f"{address}:{grpc_port}" for address in ADDRESSES)
    gateway = gateway_process(gateway_port, target, root / "gateway.log", retry_after_seconds="3")
    stack = Replicas(servers, rest_port, gateway, f"http://127.0.0.1:{gateway_port}")
    for server in servers.values():
        server.start()
    gateway.start()
    try:
        for address, server in servers.items():
            wait_until(
                answers(f"http://{address}:{rest_port}/v1/models/ai_detector"), START_TIMEOUT_SECONDS,
                f"model server {address}", server.log_path,
            )  # fmt: skip
        wait_until(
            answers(f"{stack.gateway_url}/ready"), START_TIMEOUT_SECONDS, "gateway ready", gateway.log_path
        )
        yield stack
    finally:
        gateway.stop()
        for server in servers.values():
            server.stop()


@dataclass
class Load:
    """Uploads from CONCURRENCY clients until stopped; every answer kept with its time."""

    url: str
    answers: list[tuple[float, int, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self, count: int | None = None) -> None:
        upload = images.solid(120)
        sent = iter(range(count)) if count is not None else None

        def client() -> None:
            with httpx.Client(base_url=self.url, timeout=60) as session:
                while not self._stop.is_set():
                    if sent is not None and next(sent, None) is None:
                        return
                    response = session.post("/predict", files={"file": ("x.png", upload, "image/png")})
                    self.answers.append(
                        (time.monotonic(), response.status_code, response.headers.get("retry-after", ""))
                    )

        threads = [threading.Thread(target=client) for _ in range(CONCURRENCY)]
        for thread in threads:
            thread.start()
        self._threads = threads

    def join(self) -> None:
        for thread in self._threads:
            thread.join()

    def stop(self) -> None:
        self._stop.set()
        self.join()


def test_every_predict_is_balanced_over_the_replicas(replicas: Replicas) -> None:
    before = replicas.counts()
    load = Load(replicas.gateway_url)
    load.run(UPLOADS)
    load.join()
    assert Counter(status for _, status, _ in load.answers) == {200: UPLOADS}
    after = replicas.counts()
    shares = {address: (after[address] - before[address]) / UPLOADS for address in ADDRESSES}
    print(f"shares over {UPLOADS} uploads: {shares}")
    assert sum(after[address] - before[address] for address in ADDRESSES) == UPLOADS
    assert all(abs(share - 1 / 3) <= 0.10 for share in shares.values()), shares


def test_a_replica_killed_under_load_then_restarted(replicas: Replicas) -> None:
    """Killed: no request fails except a 503 with Retry-After, its share moves to the others.
    Restarted: it gets requests again within RETURN_SECONDS."""
    victim = ADDRESSES[1]
    load = Load(replicas.gateway_url)
    load.run()
    try:
        time.sleep(2)
        killed_at = time.monotonic()
        process = replicas.servers[victim].process
        assert process is not None
        process.kill()
        process.wait()
        replicas.servers[victim].process = None
        survivors_before = {
            address: replicas.predict_count(address) for address in ADDRESSES if address != victim
        }
        time.sleep(4)
        survivors_after = {
            address: replicas.predict_count(address) for address in ADDRESSES if address != victim
        }
        restarted_at = time.monotonic()
        replicas.servers[victim].start()
        ready = answers(f"http://{victim}:{replicas.rest_port}/v1/models/ai_detector")
        wait_until(ready, START_TIMEOUT_SECONDS, f"{victim} restarted", replicas.servers[victim].log_path)
        ready_at = time.monotonic()
        while replicas.predict_count(victim) == 0:  # its first Predict since the restart
            assert time.monotonic() - ready_at < START_TIMEOUT_SECONDS, replicas.servers[victim].log_tail()
            time.sleep(0.1)
        back_at = time.monotonic()
    finally:
        load.stop()
    statuses = Counter(status for _, status, _ in load.answers)
    refused = [(status, retry) for _, status, retry in load.answers if status != 200]
    print(
        f"kill/restart: answers {dict(statuses)}; the survivors served "
        f"{ {a: survivors_after[a] - survivors_before[a] for a in survivors_after} } Predicts in the 4 s "
        f"after the kill; the restarted server was ready {ready_at - restarted_at:.1f} s after its start "
        f"and answered its first Predict {back_at - ready_at:.1f} s after that"
    )
    assert all(status == 503 and retry for status, retry in refused), refused[:5]
    assert statuses[200] > 0 and killed_at < restarted_at
    assert all(survivors_after[address] > survivors_before[address] for address in survivors_after)
    assert back_at - ready_at <= RETURN_SECONDS
