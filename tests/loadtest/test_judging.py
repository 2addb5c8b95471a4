"""How a load test run is judged and reported, the stage breakdown from Prometheus text, the load
generator's percentiles, and the settings: plain functions on made-up inputs, no processes."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from loadtest import report, stages
from loadtest.generator import StepResult
from loadtest.samples import load_uploads, multipart_upload
from loadtest.settings import GATEWAY_USER, Settings


def record(name: str, milliseconds: float, start: float = 0.0, error: str = "") -> report.RequestRecord:
    return report.RequestRecord(start, "POST", name, milliseconds, error)


def test_judge_passes_when_nothing_failed_and_every_p95_is_within_the_limit() -> None:
    records = [record("POST /predict", 50.0 + index, start=index * 0.1) for index in range(100)]
    verdict = report.judge(report.summarize(records), p95_limit_ms=200)
    assert verdict.passed and verdict.reasons == []


def test_judge_fails_on_one_failed_request() -> None:
    records = [record("POST /predict", 50.0, start=index) for index in range(50)]
    records.append(record("POST /predict", 3.0, start=51, error="HTTP 503"))
    verdict = report.judge(report.summarize(records), p95_limit_ms=200)
    assert not verdict.passed
    assert verdict.reasons == ["1 of 51 POST /predict requests failed"]


def test_judge_fails_on_the_p95_of_any_request_name() -> None:
    fast = [record("Predict serving_default", 10.0, start=index) for index in range(100)]
    slow = [record("POST /predict", 300.0 if index >= 90 else 50.0, start=index) for index in range(100)]
    verdict = report.judge(report.summarize(fast + slow), p95_limit_ms=200)
    assert not verdict.passed
    assert any(reason.startswith("p95 of POST /predict is 300 ms") for reason in verdict.reasons)
    assert not any("serving_default" in reason for reason in verdict.reasons)


def test_a_limit_of_zero_checks_failures_only() -> None:
    records = [record("POST /predict", 5000.0, start=index) for index in range(10)]
    assert report.judge(report.summarize(records), p95_limit_ms=0).passed


def test_no_request_at_all_is_a_failure() -> None:
    verdict = report.judge(report.summarize([]), p95_limit_ms=200)
    assert not verdict.passed and verdict.reasons == ["no request completed"]


def test_summary_rate_and_percentiles() -> None:
    records = [record("a", float(value), start=index * 0.5) for index, value in enumerate(range(1, 101))]
    (summary_a, overall) = report.summarize(records)
    assert summary_a.name == "a" and overall.name == report.ALL_REQUESTS
    assert summary_a.requests == 100 and summary_a.failures == 0
    assert summary_a.p50_ms == pytest.approx(50.5)
    assert summary_a.p95_ms == pytest.approx(95.05)
    assert summary_a.max_ms == 100.0
    # 100 requests started over 49.5 s, the last one lasting 0.1 s.
    assert summary_a.requests_per_second == pytest.approx(100 / 49.6)


def test_request_log_round_trip_and_plot(tmp_path: Path) -> None:
    log = tmp_path / "requests.csv"
    log.write_text(
        "start_time,request_type,name,response_time_ms,response_length,error\n"
        "1000.0,POST,POST /predict,120.5,230,\n"
        "1000.5,grpc,Predict serving_default,20.0,140,\n"
        "1001.0,POST,POST /predict,3.0,0,HTTP 503: busy\n"
    )
    records = report.read_request_log(log)
    assert [item.failed for item in records] == [False, False, True]
    plot = tmp_path / "latency.png"
    report.plot_latency_over_time(records, plot, p95_limit_ms=200)
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_step_percentiles_count_failures_as_slowest() -> None:
    step = StepResult(mode="open", seconds=10.0, latencies_ms=[10.0] * 94, errors=Counter({"HTTP 503": 6}))
    assert step.throughput == pytest.approx(9.4)
    assert step.p50_ms == 10.0
    assert math.isinf(step.p95_ms)  # 6% failed: the p95 is a failure, never a good number


GATEWAY_METRICS = """
# TYPE aidetect_gateway_stage_seconds histogram
aidetect_gateway_stage_seconds_sum{{stage="decode"}} {decode}
aidetect_gateway_stage_seconds_count{{stage="decode"}} {count}
aidetect_gateway_stage_seconds_sum{{stage="model_call"}} {model_call}
aidetect_gateway_stage_seconds_count{{stage="model_call"}} {count}
aidetect_gateway_stage_seconds_sum{{stage="total"}} {total}
aidetect_gateway_stage_seconds_count{{stage="total"}} {count}
"""
SERVER_METRICS = """
# TYPE :tensorflow:serving:request_latency histogram
:tensorflow:serving:request_latency_sum{{model_name="ai_detector",API="Predict",entrypoint="GRPC"}} {request}
:tensorflow:serving:request_latency_count{{model_name="ai_detector",API="Predict",entrypoint="GRPC"}} {count}
# TYPE :tensorflow:serving:runtime_latency histogram
:tensorflow:serving:runtime_latency_sum{{model_name="ai_detector",runtime="TF1"}} {runtime}
:tensorflow:serving:runtime_latency_count{{model_name="ai_detector",runtime="TF1"}} {batches}
# TYPE :tensorflow:serving:batching_session:queuing_latency histogram
:tensorflow:serving:batching_session:queuing_latency_sum{{thread_pool_name="batch_threads"}} {queue}
:tensorflow:serving:batching_session:queuing_latency_count{{thread_pool_name="batch_threads"}} {count}
# TYPE :tensorflow:serving:batching_session:input_batch_size histogram
:tensorflow:serving:batching_session:input_batch_size_sum{{}} {count}
:tensorflow:serving:batching_session:input_batch_size_count{{}} {batches}
"""


def test_stage_breakdown_is_the_mean_of_what_happened_between_two_scrapes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pages = {
        "gateway-before": GATEWAY_METRICS.format(decode=1.0, model_call=2.0, total=4.0, count=10),
        # 20 more requests: 0.4 s decode, 1.2 s model call, 2.0 s total in all.
        "gateway-after": GATEWAY_METRICS.format(decode=1.4, model_call=3.2, total=6.0, count=30),
        "server-before": SERVER_METRICS.format(request=1e6, runtime=5e5, queue=2e5, count=10, batches=10),
        # 20 requests in 5 batches: 1.0 s server time, 0.4 s of model runs, 0.2 s queued.
        "server-after": SERVER_METRICS.format(request=2e6, runtime=9e5, queue=4e5, count=30, batches=15),
    }

    class Response:
        def __init__(self, text: str) -> None:
            self.text = text

        def __enter__(self) -> Response:
            return self

        def __exit__(self, *_: object) -> None:
            return None

        def read(self) -> bytes:
            return self.text.encode()

    monkeypatch.setattr(stages.urllib.request, "urlopen", lambda url, timeout: Response(pages[url]))
    result = stages.breakdown(
        stages.scrape("gateway-before"),
        stages.scrape("gateway-after"),
        stages.scrape("server-before"),
        stages.scrape("server-after"),
    )
    assert result.requests == 20
    assert result.decode == pytest.approx(20.0)
    assert result.model_call == pytest.approx(60.0)
    assert result.gateway_total == pytest.approx(100.0)
    assert result.server_request == pytest.approx(50.0)
    assert result.grpc_and_transport == pytest.approx(10.0)
    assert result.server_queue == pytest.approx(10.0)
    assert result.server_runtime_per_batch == pytest.approx(80.0)
    assert result.mean_batch_size == pytest.approx(4.0)
    assert math.isnan(result.read)  # not on the page: not measured, not zero


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIDETECT_LOADTEST_USERS", "25")
    monkeypatch.setenv("AIDETECT_LOADTEST_USER_CLASSES", GATEWAY_USER)
    monkeypatch.setenv("AIDETECT_LOADTEST_DURATION", "2m30s")
    settings = Settings()
    assert settings.users == 25 and settings.user_classes == [GATEWAY_USER] and settings.duration == "2m30s"
    with pytest.raises(ValueError, match="user classes"):
        Settings(user_classes=["NoSuchUser"])
    with pytest.raises(ValueError, match="wait_max_seconds"):
        Settings(wait_min_seconds=2, wait_max_seconds=1)


def test_multipart_bodies_are_read_back_by_the_gateway(uploads_dir: Path) -> None:
    """The prepared bodies are what a browser sends: the gateway's own multipart reader gets the file back."""
    import asyncio

    from gateway.uploads import read_multipart_files

    samples = load_uploads(uploads_dir)
    assert {sample.format for sample in samples} == {"JPEG", "PNG", "WEBP"}
    upload = multipart_upload(samples[0])

    async def body() -> AsyncIterator[bytes]:
        yield upload.body

    files = asyncio.run(
        read_multipart_files(
            [("content-type", upload.content_type), ("content-length", str(len(upload.body)))],
            body(),
            field_names=("file",),
            max_files=1,
            max_file_bytes=len(upload.body),
            max_body_bytes=len(upload.body) + 1,
        )
    )
    (received,) = files
    assert bytes(received.data) == samples[0].data and received.filename == samples[0].filename


def test_the_run_exits_2_when_there_is_no_model_to_serve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from loadtest import run

    config_file = tmp_path / "models.config"
    config_file.write_text(
        'model_config_list { config { name: "ai_detector" base_path: "/models/ai_detector" } }\n'
    )
    exit_code = run.main(
        [
            f"--models-directory={tmp_path / 'models'}",
            f"--model-config-file={config_file}",
            f"--results-directory={tmp_path / 'results'}",
        ]
    )
    assert exit_code == run.EXIT_ERROR
    assert "no model version" in capsys.readouterr().err
