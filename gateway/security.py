"""Optional API keys (header X-API-Key) and per-client token-bucket rate limiting.

Both are off by default (local use); settings switch them on. Clients are identified by their
API key when keys are on, else by address (the first X-Forwarded-For hop behind a trusted proxy).
The limiter lives in the process: with several gateway replicas each one limits on its own.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from fastapi import Request

from gateway.errors import RateLimitedError, UnauthorizedError
from gateway.settings import Settings

API_KEY_HEADER = "X-API-Key"
MAX_TRACKED_CLIENTS = 10_000  # least recently seen clients are forgotten beyond this


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


class TokenBucketLimiter:
    """`rate_per_minute` tokens a minute per client, at most `burst` saved up; one token a request."""

    def __init__(
        self,
        rate_per_minute: float,
        burst: int,
        max_clients: int = MAX_TRACKED_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate_per_second = rate_per_minute / 60.0
        self.burst = float(burst)
        self.max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, updated_at)
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.rate_per_second > 0

    def acquire(self, client: str) -> None:
        if not self.enabled:
            return
        with self._lock:
            now = self._clock()
            tokens, updated_at = self._buckets.pop(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - updated_at) * self.rate_per_second)
            allowed = tokens >= 1.0
            if allowed:
                tokens -= 1.0
            self._buckets[client] = (tokens, now)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        if not allowed:
            wait_seconds = max(1, math.ceil((1.0 - tokens) / self.rate_per_second))
            raise RateLimitedError(
                f"rate limit exceeded: try again in {wait_seconds} s",
                headers={"Retry-After": str(wait_seconds)},
            )


class AccessControl:
    """API keys and rate limits for one app, from its settings."""

    def __init__(self, settings: Settings) -> None:
        self.api_keys = ApiKeyChecker(settings.api_keys)
        self.limiter = TokenBucketLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst)

    def client_identity(self, request: Request, api_key: str | None) -> str:
        if self.api_keys.enabled and api_key:
            # Keyed by a digest so the limiter never holds the keys themselves.
            return "key:" + hashlib.sha256(api_key.encode()).hexdigest()[:32]
        # Behind trusted proxies, ProxyHeadersMiddleware (gateway/main.py) has already put the
        # client's address here from X-Forwarded-For.
        return "address:" + (request.client.host if request.client else "unknown")

    def check(self, request: Request) -> None:
        api_key = request.headers.get(API_KEY_HEADER)
        self.api_keys.check(api_key)
        self.limiter.acquire(self.client_identity(request, api_key))


def enforce_access(request: Request) -> None:
    """FastAPI dependency of the prediction and model routes."""
    access: AccessControl = request.app.state.access_control
    access.check(request)
