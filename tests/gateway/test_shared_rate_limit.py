"""Rate limits that hold across gateway replicas (issue 14): three gateway processes share their
counters in Redis (Debian's redis-server, started here), so a client gets the configured limit,
not three times it; with the store down they let requests through (fail open), count it in
aidetect_gateway_rate_limit_store_errors_total and log it.

The gateways point at a model server that does not exist: a request the limiter lets through is
answered 503 by the model call, one it refuses 429; only the limiter is under test.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.gateway.processes import (
    START_TIMEOUT_SECONDS,
    ManagedProcess,
    answers,
    free_port,
    gateway_process,
    wait_until,
)

pytestmark = pytest.mark.integration

RATE_PER_MINUTE, BURST = 6, 5  # 5 requests per 50 s window
GATEWAYS = 3


def redis_binary() -> str:
    found = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/sbin:/usr/bin")
    if found is None:
        pytest.fail("redis-server is not installed: `make tools` installs Debian's redis-server")
    return found


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    folder = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    yield process, port
    if process.poll() is None:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def gateways(
    redis: tuple[subprocess.Popen[bytes], int], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[tuple[ManagedProcess, str]]]:
    root = tmp_path_factory.mktemp("gateways")
    _, redis_port = redis
    dead_model_server = f"127.0.0.1:{free_port()}"
    started = []
    for index in range(GATEWAYS):
        port = free_port()
        process = gateway_process(
            port,
            dead_model_server,
            root / f"gateway-{index}.log",
            rate_limit_per_minute=str(RATE_PER_MINUTE),
            rate_limit_burst=str(BURST),
            rate_limit_storage_url=f"redis://127.0.0.1:{redis_port}/0",
            max_retries="0",
        )
        process.start()
        started.append((process, f"http://127.0.0.1:{port}"))
    try:
        for process, url in started:
            wait_until(answers(f"{url}/health"), START_TIMEOUT_SECONDS, "gateway up", process.log_path)
        yield started
    finally:
        for process, _ in started:
            process.stop()


def _log(process: ManagedProcess) -> str:
    return Path(process.log_path).read_text(errors="replace")


def test_a_client_gets_the_limit_not_three_times_it(
    gateways: list[tuple[ManagedProcess, str]], redis: tuple[subprocess.Popen[bytes], int]
) -> None:
    statuses: Counter[int] = Counter()
    for index in range(3 * BURST):
        _, url = gateways[index % GATEWAYS]
        statuses[httpx.get(f"{url}/v1/model", timeout=30).status_code] += 1
    print(f"{3 * BURST} requests over {GATEWAYS} gateways sharing Redis: {dict(statuses)}")
    assert statuses == {503: BURST, 429: 2 * BURST}  # 503: let through, then the model is absent

    # The store goes down: requests are let through (fail open), counted and logged.
    process, _ = redis
    process.terminate()
    process.wait(timeout=30)
    after = Counter(httpx.get(f"{url}/v1/model", timeout=30).status_code for _, url in gateways)
    assert after == {503: GATEWAYS}, after
    for gateway, url in gateways:
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        assert "aidetect_gateway_rate_limit_store_errors_total 1.0" in metrics
        assert "rate-limit store unreachable" in _log(gateway)
