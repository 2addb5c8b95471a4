"""Optional API keys (header X-API-Key) and per-client rate limits.

Both are off by default (local use); settings switch them on. Clients are identified by their
API key when keys are on, else by address (from X-Forwarded-For only behind trusted proxies).
The limits' counters live in the process, or in Redis where every replica shares them
(`rate_limit_storage_url`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import time

from fastapi import Request
from limits import RateLimitItemPerSecond
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from gateway.errors import RateLimitedError, UnauthorizedError
from gateway.metrics import GatewayMetrics
from gateway.settings import Settings

logger = logging.getLogger(__name__)

API_KEY_HEADER = "X-API-Key"
STORE_TIMEOUT_SECONDS = 0.5  # a rate-limit store slower than this counts as unreachable


class ApiKeyChecker:
    def __init__(self, keys: list[str]) -> None:
        self._keys = [key.encode() for key in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def check(self, presented: str | None) -> None:
        if not self.enabled:
            return
        if not presented:
            raise UnauthorizedError(f"missing API key: send it in the {API_KEY_HEADER} header")
        candidate = presented.encode()
        # compare_digest against every key: the time taken does not tell which prefix matched.
        if not any(hmac.compare_digest(candidate, key) for key in self._keys):
            raise UnauthorizedError("invalid API key")


class RateLimiter:
    """Per-client rate limits with the `limits` library, in this process or shared in Redis.

    `rate_per_minute` on average, at most `burst` at once: a moving window of `burst` requests per
    the time `burst` requests take at that rate. With `storage_url` (`redis://host:6379/0`) every
    gateway replica counts in the same window, so a client gets the configured limit however many
    replicas the autoscaler runs. When the store cannot be reached the request is let through
    (fail open: a store outage must not take the API down), counted in
    aidetect_gateway_rate_limit_store_errors_total and logged at most every 10 s.
    """

    def __init__(
        self, rate_per_minute: float, burst: int, storage_url: str = "", metrics: GatewayMetrics | None = None
    ) -> None:
        self.enabled = rate_per_minute > 0
        self.metrics = metrics
        self._last_logged = float("-inf")
        window_seconds = max(1, math.ceil(burst * 60.0 / rate_per_minute)) if self.enabled else 1
        self.item = RateLimitItemPerSecond(burst, window_seconds, namespace="aidetect")
        self.storage = storage_from_string(
            "async+" + storage_url if storage_url else "async+memory://",
            **(
                {"connect_timeout": STORE_TIMEOUT_SECONDS, "stream_timeout": STORE_TIMEOUT_SECONDS}
                if storage_url
                else {}
            ),
        )
        self.strategy = MovingWindowRateLimiter(self.storage)

    async def acquire(self, client: str) -> None:
        if not self.enabled:
            return
        try:
            async with asyncio.timeout(STORE_TIMEOUT_SECONDS):
                allowed = await self.strategy.hit(self.item, client)
                stats = None if allowed else await self.strategy.get_window_stats(self.item, client)
        except Exception as error:  # noqa: BLE001 - any store failure: fail open, counted and logged
            if self.metrics is not None:
                self.metrics.rate_limit_store_errors.inc()
            now = time.monotonic()
            if now - self._last_logged >= 10.0:
                self._last_logged = now
                logger.warning(
                    "rate-limit store unreachable (%s: %s); letting requests through",
                    type(error).__name__,
                    error,
                )
            return
        if not allowed:
            assert stats is not None
            wait_seconds = max(1, math.ceil(stats.reset_time - time.time()))
            raise RateLimitedError(
                f"rate limit exceeded: try again in {wait_seconds} s",
                headers={"Retry-After": str(wait_seconds)},
            )


class AccessControl:
    """API keys and rate limits for one app, from its settings."""

    def __init__(self, settings: Settings, metrics: GatewayMetrics | None = None) -> None:
        self.api_keys = ApiKeyChecker(settings.api_keys)
        self.limiter = RateLimiter(
            settings.rate_limit_per_minute,
            settings.rate_limit_burst,
            settings.rate_limit_storage_url,
            metrics,
        )

    def client_identity(self, request: Request, api_key: str | None) -> str:
        if self.api_keys.enabled and api_key:
            # Keyed by a digest so the limiter never holds the keys themselves.
            return "key:" + hashlib.sha256(api_key.encode()).hexdigest()[:32]
        # Behind trusted proxies, ProxyHeadersMiddleware (gateway/main.py) has already put the
        # client's address here from X-Forwarded-For.
        return "address:" + (request.client.host if request.client else "unknown")

    async def check(self, request: Request) -> None:
        api_key = request.headers.get(API_KEY_HEADER)
        self.api_keys.check(api_key)
        await self.limiter.acquire(self.client_identity(request, api_key))


async def enforce_access(request: Request) -> None:
    """FastAPI dependency of the prediction and model routes."""
    access: AccessControl = request.app.state.access_control
    await access.check(request)
