"""API keys and rate limits: off by default, 401 / 429 when switched on."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from gateway.dependencies import get_model_client
from gateway.errors import RateLimitedError
from gateway.main import create_app
from gateway.security import RateLimiter
from gateway.settings import Settings
from tests.gateway import images
from tests.gateway.conftest import FakeModelClient, MakeClient

KEY = "k" * 24
OTHER_KEY = "o" * 24


def upload() -> dict[str, tuple[str, bytes, str]]:
    return {"file": ("x.png", images.solid(100), "image/png")}


def test_everything_is_open_by_default(make_client: MakeClient) -> None:
    client, _ = make_client()
    for _ in range(30):
        assert client.post("/predict", files=upload()).status_code == 200


def test_api_keys(make_client: MakeClient) -> None:
    client, fake = make_client(api_keys=[KEY, OTHER_KEY])
    assert client.post("/predict", files=upload()).status_code == 401
    assert client.post("/predict", files=upload(), headers={"X-API-Key": "wrong" * 5}).status_code == 401
    assert client.get("/v1/model").status_code == 401
    assert not fake.calls  # refused before the body is read or the model called
    assert client.post("/predict", files=upload(), headers={"X-API-Key": KEY}).status_code == 200
    assert client.post("/predict", files=upload(), headers={"X-API-Key": OTHER_KEY}).status_code == 200
    # Probes, metrics and the page stay open for the platform and the browser.
    for path in ("/health", "/ready", "/metrics", "/"):
        assert client.get(path).status_code == 200


def test_api_keys_from_a_comma_separated_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIDETECT_GATEWAY_API_KEYS", f"{KEY}, {OTHER_KEY}")
    assert Settings().api_keys == [KEY, OTHER_KEY]
    monkeypatch.setenv("AIDETECT_GATEWAY_API_KEYS", "short")
    with pytest.raises(ValidationError):
        Settings()


def test_rate_limit_answers_429_with_retry_after(make_client: MakeClient) -> None:
    client, _ = make_client(rate_limit_per_minute=6, rate_limit_burst=2)
    statuses = [client.post("/predict", files=upload()).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    response = client.post("/predict", files=upload())
    assert response.status_code == 429
    assert response.json()["success"] is False
    # 6/min with a burst of 2: at most 2 requests per 20 s; the wait is until the oldest leaves.
    assert 1 <= int(response.headers["retry-after"]) <= 20
    assert client.get("/health").status_code == 200  # probes are never limited


def test_rate_limit_is_per_client_key(make_client: MakeClient) -> None:
    client, _ = make_client(api_keys=[KEY, OTHER_KEY], rate_limit_per_minute=1, rate_limit_burst=1)
    assert client.post("/predict", files=upload(), headers={"X-API-Key": KEY}).status_code == 200
    assert client.post("/predict", files=upload(), headers={"X-API-Key": KEY}).status_code == 429
    assert client.post("/predict", files=upload(), headers={"X-API-Key": OTHER_KEY}).status_code == 200


def test_the_limit_refills_with_time_and_is_per_client() -> None:
    """60/min with a burst of 2: a moving window of 2 requests per 2 s (`limits` library)."""
    limiter = RateLimiter(rate_per_minute=60, burst=2)

    async def scenario() -> None:
        await limiter.acquire("a")
        await limiter.acquire("a")
        with pytest.raises(RateLimitedError) as refused:
            await limiter.acquire("a")
        assert 1 <= int(refused.value.headers["Retry-After"]) <= 2
        await limiter.acquire("b")  # another client has its own window
        await asyncio.sleep(2.1)  # the window has moved on
        await limiter.acquire("a")

    asyncio.run(scenario())


def _client_at(peer: str, **overrides: object) -> Iterator[TestClient]:
    app = create_app(Settings(**overrides))  # type: ignore[arg-type]
    fake = FakeModelClient()
    app.dependency_overrides[get_model_client] = lambda: fake
    with TestClient(app, raise_server_exceptions=False, client=(peer, 40000)) as client:
        yield client


@pytest.mark.parametrize("forged_left", [True, False])
def test_x_forwarded_for_cannot_dodge_the_rate_limit(forged_left: bool) -> None:
    """Issue 13: rotating the left-most X-Forwarded-For entry passed 12 of 12 requests against a
    burst of 3. From a trusted proxy the client is the right-most untrusted entry (what the proxy
    appended); from any other peer the header is ignored."""
    settings = {"rate_limit_per_minute": 1, "rate_limit_burst": 3, "forwarded_allow_ips": ["10.0.0.0/8"]}
    peer = "10.1.2.3" if forged_left else "198.51.100.20"  # the ingress, or a client on its own
    for client in _client_at(peer, **settings):
        statuses = [
            client.post(
                "/predict", files=upload(), headers={"X-Forwarded-For": f"203.0.113.{i}, 192.0.2.44"}
            ).status_code
            for i in range(12)
        ]
        assert statuses == [200] * 3 + [429] * 9
        if forged_left:  # another client behind the same proxy has its own bucket
            response = client.post("/predict", files=upload(), headers={"X-Forwarded-For": "192.0.2.45"})
            assert response.status_code == 200


@pytest.mark.parametrize(
    ("name", "value"),
    [("AIDETECT_GATEWAY_API_KEYS", " , "), ("AIDETECT_GATEWAY_FORWARDED_ALLOW_IPS", "ingress.local")],
)
def test_settings_that_would_silently_turn_protection_off_are_refused(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


def test_the_start_up_line_says_what_protection_is_on(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="gateway.main"):
        for _ in _client_at("127.0.0.1", api_keys=[KEY], rate_limit_per_minute=60):
            pass
    assert "security: API keys on (1), rate limit 60/min burst 10, X-Forwarded-For ignored" in caplog.text
    assert KEY not in caplog.text


def test_the_access_log_cannot_be_given_forged_lines(caplog: pytest.LogCaptureFixture) -> None:
    """Issue 13: `%0A` in the path became a newline in the access log, i.e. a line of the
    client's choosing (`status=200`), which the reliability ledger counts."""
    forged = "/x%0A2026-12-01 INFO gateway.access request_id=f method=GET path=/ status=200 duration_ms=1"
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        for client in _client_at("127.0.0.1"):
            assert client.get(forged + "%0D%20%C3%A9").status_code == 404
    (record,) = [record for record in caplog.records if record.name == "gateway.access"]
    line = record.getMessage()
    assert "\n" not in line and "\r" not in line and " INFO " not in line
    assert "path=/x%0A2026-12-01%20INFO%20gateway.access" in line and "%C3%A9" in line


def test_every_5xx_is_logged_with_the_request_id_and_the_model_servers_status(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 14: 502/503/504 answers were not logged; now with the id the model server logged too."""
    from gateway.errors import ModelUnavailableError

    client, fake = make_client()
    error = ModelUnavailableError("model 'ai_detector' (label 'stable') is unavailable: not loaded")
    error.upstream_status = "UNAVAILABLE"
    fake.error = error
    with caplog.at_level(logging.WARNING, logger="gateway.errors"):
        response = client.post("/predict", files=upload(), headers={"X-Request-Id": "trace-42"})
    assert response.status_code == 503
    assert "answered 503 request_id=trace-42 upstream_status=UNAVAILABLE: model 'ai_detector'" in caplog.text
