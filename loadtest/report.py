"""Judging a load test run and drawing its latency over time.

The verdict is computed from the request log the locustfile writes (every request, its exact
latency and error), not from Locust's stats CSV: Locust rounds percentiles to two significant
digits and writes its final CSV before the users that finish during `--stop-timeout` report.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ALL_REQUESTS = "all requests"


@dataclass(frozen=True)
class RequestRecord:
    start_time: float  # seconds since the epoch
    request_type: str
    name: str
    response_time_ms: float
    error: str

    @property
    def failed(self) -> bool:
        return bool(self.error)


@dataclass(frozen=True)
class LatencySummary:
    name: str
    requests: int
    failures: int
    requests_per_second: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float

    def to_dict(self) -> dict[str, Any]:
        return {
            key: (round(value, 2) if isinstance(value, float) else value)
            for key, value in asdict(self).items()
        }


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reasons: list[str]


def read_request_log(path: Path) -> list[RequestRecord]:
    with Path(path).open(newline="") as handle:
        return [
            RequestRecord(
                start_time=float(row["start_time"]),
                request_type=row["request_type"],
                name=row["name"],
                response_time_ms=float(row["response_time_ms"]),
                error=row["error"],
            )
            for row in csv.DictReader(handle)
        ]


def percentile(values: list[float], percent: float) -> float:
    return float(np.percentile(values, percent)) if values else math.nan


def summarize_group(name: str, records: list[RequestRecord]) -> LatencySummary:
    latencies = [record.response_time_ms for record in records]
    if records:
        first = min(record.start_time for record in records)
        last = max(record.start_time + record.response_time_ms / 1000 for record in records)
        rate = len(records) / (last - first) if last > first else math.nan
    else:
        rate = math.nan
    return LatencySummary(
        name=name,
        requests=len(records),
        failures=sum(record.failed for record in records),
        requests_per_second=rate,
        p50_ms=percentile(latencies, 50),
        p95_ms=percentile(latencies, 95),
        p99_ms=percentile(latencies, 99),
        max_ms=max(latencies, default=math.nan),
    )


def summarize(records: list[RequestRecord]) -> list[LatencySummary]:
    """One summary per request name (sorted), then one over all requests."""
    by_name: dict[str, list[RequestRecord]] = defaultdict(list)
    for record in records:
        by_name[record.name].append(record)
    return [summarize_group(name, by_name[name]) for name in sorted(by_name)] + [
        summarize_group(ALL_REQUESTS, records)
    ]


def judge(summaries: list[LatencySummary], p95_limit_ms: float) -> Verdict:
    """Fails on any failed request, on no requests at all, and on a p95 over the limit (0 = no limit)."""
    reasons = []
    overall = summaries[-1]
    if overall.requests == 0:
        reasons.append("no request completed")
    for summary in summaries:
        if summary.name != ALL_REQUESTS and summary.failures:
            reasons.append(f"{summary.failures} of {summary.requests} {summary.name} requests failed")
        if p95_limit_ms > 0 and summary.requests and summary.p95_ms > p95_limit_ms:
            reasons.append(f"p95 of {summary.name} is {summary.p95_ms:.0f} ms > {p95_limit_ms:.0f} ms")
    return Verdict(passed=not reasons, reasons=reasons)


def read_user_counts(history_csv: Path) -> tuple[list[float], list[int]]:
    """(timestamps, user counts) from Locust's `_stats_history.csv` (its Aggregated rows)."""
    times: list[float] = []
    users: list[int] = []
    if not Path(history_csv).is_file():
        return times, users
    with Path(history_csv).open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row["Name"] == "Aggregated":
                times.append(float(row["Timestamp"]))
                users.append(int(row["User Count"]))
    return times, users


def rolling_percentile(
    records: list[RequestRecord], percent: float, window_seconds: float, step_seconds: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """The `percent` percentile of the latencies of requests finished in each trailing window."""
    if not records:
        return np.array([]), np.array([])
    finished = np.array([record.start_time + record.response_time_ms / 1000 for record in records])
    latencies = np.array([record.response_time_ms for record in records])
    steps = np.arange(finished.min() + step_seconds, finished.max() + step_seconds, step_seconds)
    values = []
    for end in steps:
        inside = latencies[(finished > end - window_seconds) & (finished <= end)]
        values.append(np.percentile(inside, percent) if inside.size else np.nan)
    return steps, np.array(values)


def plot_latency_over_time(
    records: list[RequestRecord],
    output: Path,
    p95_limit_ms: float,
    history_csv: Path | None = None,
    title: str = "Latency over time",
) -> None:
    """Each request as a dot (crosses for failures), the rolling p95 over 10 s, the limit, and below
    it the completed requests per second and the number of users."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    if not records:
        raise ValueError("no requests to plot")
    origin = min(record.start_time for record in records)
    figure, (latency_axes, rate_axes) = plt.subplots(
        2, 1, figsize=(11, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    by_name: dict[str, list[RequestRecord]] = defaultdict(list)
    for record in records:
        by_name[record.name].append(record)
    for name in sorted(by_name):
        group = by_name[name]
        ok = [record for record in group if not record.failed]
        failed = [record for record in group if record.failed]
        latency_axes.scatter(
            [record.start_time - origin for record in ok],
            [record.response_time_ms for record in ok],
            s=6,
            alpha=0.5,
            label=name,
        )
        if failed:
            latency_axes.scatter(
                [record.start_time - origin for record in failed],
                [record.response_time_ms for record in failed],
                s=30,
                marker="x",
                color="red",
                label=f"{name} (failed)",
            )
    times, p95 = rolling_percentile(records, 95, window_seconds=10)
    latency_axes.plot(times - origin, p95, color="black", linewidth=1.5, label="p95, trailing 10 s")
    if p95_limit_ms > 0:
        latency_axes.axhline(p95_limit_ms, color="red", linestyle="--", linewidth=1, label="p95 limit")
    latency_axes.set_ylabel("latency (ms)")
    latency_axes.set_yscale("log")
    # Plain milliseconds on the log axis (not 2x10^2).
    latency_axes.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    latency_axes.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    latency_axes.yaxis.set_major_locator(
        matplotlib.ticker.FixedLocator([1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000])
    )
    latency_axes.set_title(title)
    latency_axes.grid(True, which="both", alpha=0.3)
    latency_axes.legend(loc="upper left", fontsize="small")

    finished = np.array([record.start_time + record.response_time_ms / 1000 - origin for record in records])
    bins = np.arange(0, math.ceil(finished.max()) + 1, 1.0)
    counts, edges = np.histogram(finished, bins=bins)
    rate_axes.step(edges[:-1], counts, where="post", label="completed requests/s")
    rate_axes.set_ylabel("requests/s")
    rate_axes.set_ylim(bottom=0)
    rate_axes.set_xlabel("seconds since the first request")
    rate_axes.grid(True, alpha=0.3)
    if history_csv is not None:
        user_times, users = read_user_counts(history_csv)
        if users:
            user_axes = rate_axes.twinx()
            user_axes.plot(np.array(user_times) - origin, users, color="grey", linestyle=":", label="users")
            user_axes.set_ylabel("users")
    rate_axes.legend(loc="upper left", fontsize="small")
    figure.tight_layout()
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=110)
    plt.close(figure)


def render_summary_table(summaries: list[LatencySummary]) -> str:
    lines = [
        f"{'requests':<34} {'count':>7} {'failed':>7} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'p99 ms':>8} {'max ms':>8}"
    ]
    for summary in summaries:
        lines.append(
            f"{summary.name:<34} {summary.requests:>7} {summary.failures:>7} "
            f"{summary.requests_per_second:>7.1f} {summary.p50_ms:>8.1f} {summary.p95_ms:>8.1f} "
            f"{summary.p99_ms:>8.1f} {summary.max_ms:>8.1f}"
        )
    return "\n".join(lines)
