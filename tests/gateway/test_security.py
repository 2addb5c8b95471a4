"""API keys and rate limits: off by default, 401 / 429 when switched on."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.errors import RateLimitedError
from gateway.security import TokenBucketLimiter
from gateway.settings import Settings
from tests.gateway import images
from tests.gateway.conftest import MakeClient

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
    assert 1 <= int(response.headers["retry-after"]) <= 10
    assert client.get("/health").status_code == 200  # probes are never limited


def test_rate_limit_is_per_client_key(make_client: MakeClient) -> None:
    client, _ = make_client(api_keys=[KEY, OTHER_KEY], rate_limit_per_minute=1, rate_limit_burst=1)
    assert client.post("/predict", files=upload(), headers={"X-API-Key": KEY}).status_code == 200
    assert client.post("/predict", files=upload(), headers={"X-API-Key": KEY}).status_code == 429
    assert client.post("/predict", files=upload(), headers={"X-API-Key": OTHER_KEY}).status_code == 200


def test_token_bucket_refills_with_time() -> None:
    now = [0.0]
    limiter = TokenBucketLimiter(rate_per_minute=60, burst=2, clock=lambda: now[0])
    limiter.acquire("a")
    limiter.acquire("a")
    with pytest.raises(RateLimitedError) as refused:
        limiter.acquire("a")
    assert refused.value.headers["Retry-After"] == "1"
    now[0] += 1.0  # one token a second
    limiter.acquire("a")
    limiter.acquire("b")  # another client has its own bucket


def test_token_bucket_forgets_the_least_recent_clients() -> None:
    limiter = TokenBucketLimiter(rate_per_minute=1, burst=1, max_clients=2, clock=lambda: 0.0)
    limiter.acquire("a")
    limiter.acquire("b")
    limiter.acquire("c")  # "a" is forgotten: memory stays bounded
    limiter.acquire("a")
    with pytest.raises(RateLimitedError):
        limiter.acquire("c")
