"""How the canary is doing: its error ratio and p95 latency, read from the gateway's metrics.

Two sources, same answer:
- the gateways' own `/metrics` pages (local runs, or a port-forward): a snapshot when the watch
  starts, another at each check, and the difference is what the canary did in between;
- a Prometheus server (a cluster): the same quantities over the watch window with PromQL.

The metrics are the gateway's per-version-label model-call metrics (names below, defined by
gateway/metrics.py): a counter of model calls by `version_label` and `outcome` ("ok" or
"error", once per request after retries) and a latency histogram by `version_label`.
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client.parser import text_string_to_metric_families

from common import metric_names
from k8s.errors import MetricsError

REQUESTS_METRIC = metric_names.GATEWAY_MODEL_REQUESTS  # counter; exposed as ..._total
LATENCY_METRIC = metric_names.GATEWAY_MODEL_REQUEST_SECONDS  # histogram
CANARY_SHARE_METRIC = metric_names.GATEWAY_CANARY_PERCENT  # gauge: the share in force
VERSION_LABEL = "version_label"
OUTCOME_LABEL = "outcome"
ERROR_OUTCOME = "error"
HTTP_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class Thresholds:
    max_error_ratio: float = 0.01
    max_p95_seconds: float = 0.2
    min_requests: int = 50


@dataclass(frozen=True)
class CanaryHealth:
    """What the canary did during the window."""

    requests: float
    errors: float
    p95_seconds: float | None  # None: no request finished

    @property
    def error_ratio(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def describe(self) -> str:
        p95 = "n/a" if self.p95_seconds is None else f"{self.p95_seconds * 1000:.0f} ms"
        return f"{self.requests:.0f} requests, error ratio {self.error_ratio:.2%}, p95 {p95}"


@dataclass(frozen=True)
class Verdict:
    healthy: bool
    conclusive: bool  # enough requests to judge
    health: CanaryHealth
    reasons: tuple[str, ...] = ()

    def describe(self) -> str:
        state = "healthy" if self.healthy else "UNHEALTHY"
        why = f" ({'; '.join(self.reasons)})" if self.reasons else ""
        return f"canary {state}: {self.health.describe()}{why}"


def judge(health: CanaryHealth, thresholds: Thresholds) -> Verdict:
    reasons = []
    if health.error_ratio > thresholds.max_error_ratio:
        reasons.append(f"error ratio {health.error_ratio:.2%} > {thresholds.max_error_ratio:.2%}")
    if health.p95_seconds is not None and health.p95_seconds > thresholds.max_p95_seconds:
        reasons.append(f"p95 {health.p95_seconds * 1000:.0f} ms > {thresholds.max_p95_seconds * 1000:.0f} ms")
    conclusive = health.requests >= thresholds.min_requests
    if not conclusive:
        reasons.append(f"only {health.requests:.0f} canary requests (< {thresholds.min_requests})")
    return Verdict(
        healthy=conclusive and not reasons, conclusive=conclusive, health=health, reasons=tuple(reasons)
    )


def histogram_quantile(quantile: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile on cumulative bucket counts {upper bound: count}.

    Linear interpolation inside the bucket that holds the quantile; a quantile in the +Inf bucket
    gives the highest finite bound (as Prometheus does)."""
    bounds = sorted(buckets)
    if not bounds or not math.isinf(bounds[-1]):
        raise MetricsError("a histogram needs a +Inf bucket")
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = quantile * total
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return bounds[-2] if len(bounds) > 1 else None
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return bounds[-2] if len(bounds) > 1 else None


@dataclass
class Snapshot:
    """The canary's cumulative counts at one moment, summed over every gateway."""

    requests: float = 0.0
    errors: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)

    def since(self, baseline: Snapshot) -> CanaryHealth:
        # A gateway restart resets its counters; max(0, ...) keeps a restart from counting negative.
        buckets = {
            bound: max(0.0, count - baseline.buckets.get(bound, 0.0)) for bound, count in self.buckets.items()
        }
        return CanaryHealth(
            requests=max(0.0, self.requests - baseline.requests),
            errors=max(0.0, self.errors - baseline.errors),
            p95_seconds=histogram_quantile(0.95, buckets) if buckets else None,
        )


def parse_snapshot(exposition: str, version_label: str) -> Snapshot:
    """The samples of `version_label` in one gateway's Prometheus text page."""
    snapshot = Snapshot()
    found = set()
    for family in text_string_to_metric_families(exposition):
        if family.name not in (REQUESTS_METRIC, LATENCY_METRIC):
            continue
        found.add(family.name)
        for sample in family.samples:
            if sample.labels.get(VERSION_LABEL) != version_label:
                continue
            if family.name == REQUESTS_METRIC and sample.name == f"{REQUESTS_METRIC}_total":
                snapshot.requests += sample.value
                if sample.labels.get(OUTCOME_LABEL) == ERROR_OUTCOME:
                    snapshot.errors += sample.value
            elif family.name == LATENCY_METRIC and sample.name == f"{LATENCY_METRIC}_bucket":
                bound = float(sample.labels["le"])
                snapshot.buckets[bound] = snapshot.buckets.get(bound, 0.0) + sample.value
    missing = {REQUESTS_METRIC, LATENCY_METRIC} - found
    if missing:
        raise MetricsError(
            f"the gateway's metrics have no {sorted(missing)}: this gateway does not report model calls "
            "per version label (see k8s/README.md, 'What the rollout needs from the gateway')"
        )
    return snapshot


def parse_gauge(exposition: str, name: str) -> list[float]:
    return [
        sample.value
        for family in text_string_to_metric_families(exposition)
        if family.name == name
        for sample in family.samples
    ]


def http_get(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_SECONDS) as response:
            body: bytes = response.read()
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        raise MetricsError(f"cannot read {url}: {error}") from error
    return body.decode("utf-8", errors="replace")


class HealthSource(Protocol):
    def start(self) -> None: ...

    def health(self) -> CanaryHealth: ...


class GatewayMetricsSource:
    """The gateways' /metrics pages (every replica: the canary's calls are spread over them)."""

    def __init__(
        self, urls: Sequence[str], version_label: str, fetch: Callable[[str], str] = http_get
    ) -> None:
        if not urls:
            raise MetricsError("give at least one gateway metrics URL")
        self.urls = list(urls)
        self.version_label = version_label
        self.fetch = fetch
        self._baseline: Snapshot | None = None

    def snapshot(self) -> Snapshot:
        total = Snapshot()
        for url in self.urls:
            part = parse_snapshot(self.fetch(url), self.version_label)
            total.requests += part.requests
            total.errors += part.errors
            for bound, count in part.buckets.items():
                total.buckets[bound] = total.buckets.get(bound, 0.0) + count
        return total

    def start(self) -> None:
        self._baseline = self.snapshot()

    def health(self) -> CanaryHealth:
        if self._baseline is None:
            raise MetricsError("start() first: the watch needs a baseline")
        return self.snapshot().since(self._baseline)


class PrometheusSource:
    """A Prometheus server that scrapes the gateways: the same quantities with PromQL over the window."""

    def __init__(
        self,
        base_url: str,
        version_label: str,
        fetch: Callable[[str], str] = http_get,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.version_label = version_label
        self.fetch = fetch
        self.clock = clock
        self._started: float | None = None

    def start(self) -> None:
        self.query("vector(1)")  # reachable and answering PromQL, before the watch counts on it
        self._started = self.clock()

    def query(self, expression: str) -> float | None:
        url = f"{self.base_url}/api/v1/query?{urllib.parse.urlencode({'query': expression})}"
        try:
            answer = json.loads(self.fetch(url))
        except json.JSONDecodeError as error:
            raise MetricsError(f"Prometheus did not answer JSON for {expression!r}") from error
        if answer.get("status") != "success":
            raise MetricsError(f"Prometheus refused {expression!r}: {answer.get('error', answer)}")
        results = answer["data"]["result"]
        if not results:
            return None
        value = float(results[0]["value"][1])
        return None if math.isnan(value) else value

    def health(self) -> CanaryHealth:
        if self._started is None:
            raise MetricsError("start() first: the watch needs its start time")
        # The window is the time watched so far; Prometheus' increase() extrapolates within it.
        window = f"{max(60, math.ceil(self.clock() - self._started))}s"
        selector = f'{VERSION_LABEL}="{self.version_label}"'
        errors_selector = f'{selector}, {OUTCOME_LABEL}="{ERROR_OUTCOME}"'
        requests = self.query(f"sum(increase({REQUESTS_METRIC}_total{{{selector}}}[{window}]))") or 0.0
        errors = self.query(f"sum(increase({REQUESTS_METRIC}_total{{{errors_selector}}}[{window}]))") or 0.0
        buckets = f"sum by (le) (increase({LATENCY_METRIC}_bucket{{{selector}}}[{window}]))"
        p95 = self.query(f"histogram_quantile(0.95, {buckets})")
        return CanaryHealth(requests=requests, errors=errors, p95_seconds=p95)


def watch(
    source: HealthSource,
    thresholds: Thresholds,
    duration_seconds: float,
    check_every_seconds: float = 5.0,
    report: Callable[[str], None] = print,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Verdict:
    """Watch for `duration_seconds`; stop early once enough requests show the canary is unhealthy."""
    source.start()
    deadline = clock() + duration_seconds
    while True:
        sleep(max(0.0, min(check_every_seconds, deadline - clock())))
        verdict = judge(source.health(), thresholds)
        report(verdict.describe())
        if verdict.conclusive and not verdict.healthy:
            return verdict
        if clock() >= deadline:
            return verdict
