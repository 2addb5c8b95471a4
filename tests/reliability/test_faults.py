"""Faults injected while real uploads keep coming: every request is counted.

One stack for the module (the contract model under TF Serving's default `latest` policy, the
gateway following the latest version), in file order:
1. a new version dropped into the model folder is hot-loaded: not one request fails;
2. a corrupt version dropped in is refused and reported (GetModelStatus END with its error),
   the previous version keeps serving: not one request fails;
3. the model server is SIGKILLed: the gateway answers 503 with Retry-After (never anything
   else), /ready turns 503; after the restart everything recovers by itself;
4. SIGTERM to the gateway: every request it accepted (logged under its x-request-id) is
   answered 200; the others were refused at the door (never accepted), none is lost;
5. SIGTERM to the model server under direct gRPC load: every call started before the signal
   completes OK; later calls get UNAVAILABLE (not accepted); the server exits 0.

The model server batches with a 50 ms timeout, so requests are held inside it and there is
always something in flight when a fault lands.
"""

from __future__ import annotations

import re
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest

from common import signatures
from tests.gateway.processes import START_TIMEOUT_SECONDS, answers, wait_until
from tests.reliability.conftest import FuzzSettings
from tests.reliability.load import BackgroundLoad, Outcome, latency_summary
from tests.reliability.stack import Stack, batching_parameters, build_stack, latest_policy_config, running
from tests.serving.local_server_support import Client, copy_version, random_images

pytestmark = [pytest.mark.integration, pytest.mark.model, pytest.mark.slow]

CONCURRENCY = 6
RETRY_AFTER_SECONDS = "3"
WAIT_SECONDS = 120.0


@pytest.fixture(scope="module")
def fault_stack(contract_model_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = build_stack(
        tmp_path_factory.mktemp("faults"),
        contract_model_template,
        latest_policy_config(),
        model_server_flags=("--max_num_load_retries=0", "--file_system_poll_wait_seconds=0.5"),
        batching=batching_parameters(max_batch_size=16, timeout_micros=50_000, max_enqueued_batches=64),
        version_label="",  # follow the latest version, as TF Serving's default policy serves it
        metadata_cache_seconds="1",
        retry_after_seconds=RETRY_AFTER_SECONDS,
    )
    with running(stack):
        yield stack


def version_states(stack: Stack) -> dict[int, tuple[str, int, str]]:
    client = Client(stack.model_server_address)
    try:
        return client.status()
    finally:
        client.close()


def state_of(stack: Stack, version: int) -> str | None:
    try:
        return version_states(stack).get(version, (None,))[0]
    except grpc.RpcError:
        return None


def describe(outcomes: list[Outcome]) -> str:
    statuses = Counter(
        outcome.status if outcome.status is not None else outcome.transport_error for outcome in outcomes
    )
    return f"{len(outcomes)} requests: {dict(statuses)}"


def test_new_version_hot_loaded_under_load_fails_no_request(
    fault_stack: Stack, contract_model_template: Path, real_uploads: list, fuzz: FuzzSettings
) -> None:
    stack = fault_stack
    with BackgroundLoad(stack.gateway_url, real_uploads, concurrency=CONCURRENCY) as load:
        load.wait_for(20)
        copy_version(contract_model_template, stack.model_base_path, 2)
        wait_until(lambda: state_of(stack, 2) == "AVAILABLE", WAIT_SECONDS, "version 2 loaded")
        wait_until(lambda: state_of(stack, 1) == "END", WAIT_SECONDS, "version 1 unloaded")
        wait_until(
            lambda: any(outcome.model_version == 2 for outcome in load.snapshot()),
            WAIT_SECONDS,
            "answers from 2",
        )
        load.wait_for(20)
    outcomes = load.outcomes
    failed = [outcome for outcome in outcomes if outcome.status != 200]
    versions = Counter(outcome.model_version for outcome in outcomes)
    fuzz.record(
        "fault_hot_load",
        {"requests": len(outcomes), "failed": len(failed), "answers_by_version": dict(versions),
         **latency_summary(outcomes)},
    )  # fmt: skip
    assert not failed, describe(failed)
    assert versions[1] > 0 and versions[2] > 0, versions


def test_corrupt_version_is_refused_and_the_previous_keeps_serving(
    fault_stack: Stack, real_uploads: list, fuzz: FuzzSettings
) -> None:
    stack = fault_stack
    assert state_of(stack, 2) == "AVAILABLE", "runs after the hot-load test"
    staging = stack.model_base_path / ".staging-3"
    staging.mkdir()
    (staging / "saved_model.pb").write_bytes(b"\x08\x01 this is not a SavedModel " * 100)
    (staging / "variables").mkdir()
    (staging / "variables" / "variables.index").write_bytes(b"garbage")
    try:
        with BackgroundLoad(stack.gateway_url, real_uploads, concurrency=CONCURRENCY) as load:
            load.wait_for(20)
            staging.rename(stack.model_base_path / "3")
            wait_until(lambda: state_of(stack, 3) == "END", WAIT_SECONDS, "version 3 refused")
            load.wait_for(30)
        state, error_code, message = version_states(stack)[3]
        ready = httpx.get(f"{stack.gateway_url}/ready", timeout=30)
    finally:
        shutil.rmtree(stack.model_base_path / "3", ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)
    outcomes = load.outcomes
    failed = [outcome for outcome in outcomes if outcome.status != 200]
    versions = Counter(outcome.model_version for outcome in outcomes)
    fuzz.record(
        "fault_corrupt_version",
        {"requests": len(outcomes), "failed": len(failed), "answers_by_version": dict(versions),
         "status_of_version_3": {"state": state, "error_code": error_code, "error_message": message[:300]}},
    )  # fmt: skip
    assert state == "END" and error_code != 0 and message, (state, error_code, message)
    assert not failed, describe(failed)
    assert set(versions) == {2}, versions
    assert ready.status_code == 200, ready.text
    assert version_states(stack)[2][0] == "AVAILABLE"


def test_model_server_killed_under_load_then_everything_recovers(
    fault_stack: Stack, real_uploads: list, fuzz: FuzzSettings
) -> None:
    stack = fault_stack
    ready_url = f"{stack.gateway_url}/ready"
    with BackgroundLoad(stack.gateway_url, real_uploads, concurrency=CONCURRENCY) as load:
        load.wait_for(20)
        killed_at = time.monotonic()
        stack.kill_model_server()
        wait_until(answers(ready_url, 503), 60, "gateway /ready 503 while the model server is down")
        not_ready = httpx.get(ready_url, timeout=30)
        load.wait_for(30)  # requests keep coming while it is down
        restarted_at = time.monotonic()
        stack.model_server.start()
        wait_until(stack.model_server_serving, START_TIMEOUT_SECONDS, "model server serving again")
        serving_at = time.monotonic()
        wait_until(answers(ready_url), 60, "gateway /ready 200 again")
        ready_at = time.monotonic()
        wait_until(
            lambda: any(o.status == 200 and o.started > serving_at for o in load.snapshot()),
            60,
            "a 200 again",
        )
        load.wait_for(30)
    outcomes = load.outcomes
    first_success = min(o.finished for o in outcomes if o.status == 200 and o.started > serving_at)
    unavailable = [o for o in outcomes if o.status == 503]
    other = [o for o in outcomes if o.status not in (200, 503)]
    without_retry_after = [o for o in unavailable if o.retry_after != RETRY_AFTER_SECONDS]
    after_recovery = [o for o in outcomes if o.started > ready_at + 1.0 and o.status != 200]
    fuzz.record(
        "fault_model_server_killed",
        {
            "requests": len(outcomes),
            "statuses": dict(Counter(str(o.status or o.transport_error) for o in outcomes)),
            "seconds_down_before_restart": round(restarted_at - killed_at, 1),
            "seconds_restart_to_model_server_serving": round(serving_at - restarted_at, 1),
            "seconds_model_server_serving_to_gateway_ready": round(ready_at - serving_at, 2),
            "seconds_model_server_serving_to_first_200": round(first_success - serving_at, 2),
            "errors_after_recovery": len(after_recovery),
        },
    )
    assert not other, describe(other)  # only 200 or 503: never a 500/502/504, never a dropped connection
    assert unavailable, "the outage was not seen"
    assert not without_retry_after, describe(without_retry_after)
    assert not_ready.status_code == 503 and not_ready.headers["retry-after"] == RETRY_AFTER_SECONDS
    assert not_ready.json()["ready"] is False
    assert not after_recovery, describe(after_recovery)


ACCESS_LINE = re.compile(r"request_id=(\S+) method=POST path=/predict status=(\d+)")


def test_sigterm_to_the_gateway_loses_no_accepted_request(
    fault_stack: Stack, real_uploads: list, fuzz: FuzzSettings
) -> None:
    """Leaves the gateway stopped."""
    stack = fault_stack
    stack.wait_ready()
    gateway = stack.gateway.process
    assert gateway is not None
    with BackgroundLoad(stack.gateway_url, real_uploads, concurrency=8) as load:
        load.wait_for(40)
        terminated_at = time.monotonic()
        gateway.send_signal(signal.SIGTERM)
        exit_code = gateway.wait(timeout=60)
        exited_at = time.monotonic()
        load.wait_for(20, timeout=2.0)  # clients keep knocking on the closed port
    outcomes = load.outcomes
    logged = {
        request_id: int(status)
        for request_id, status in ACCESS_LINE.findall(stack.gateway.log_path.read_text(errors="replace"))
        if request_id.startswith(load.run_id)
    }
    answered = {o.request_id: o.status for o in outcomes if o.status is not None}
    refused = [o for o in outcomes if o.status is None]
    lost = [o for o in refused if o.request_id in logged]
    not_ok = {request_id: status for request_id, status in answered.items() if status != 200}
    in_flight = [o for o in outcomes if o.in_flight_at(terminated_at)]
    fuzz.record(
        "fault_gateway_sigterm",
        {
            "requests": len(outcomes),
            "accepted_by_the_gateway": len(logged),
            "answered_200": sum(1 for status in answered.values() if status == 200),
            "refused_at_the_door": len(refused),
            "lost": len(lost),
            "in_flight_at_sigterm": len(in_flight),
            "in_flight_at_sigterm_answered_200": sum(1 for o in in_flight if o.status == 200),
            "seconds_sigterm_to_exit": round(exited_at - terminated_at, 2),
            "exit_code": exit_code,
        },
    )
    stack.gateway.stop()
    assert exit_code in (0, -signal.SIGTERM), stack.gateway.log_tail()
    assert not lost, f"accepted then dropped: {[o.request_id for o in lost]}"
    assert not not_ok, not_ok
    assert set(logged) == set(answered), "a request was answered without being logged, or the reverse"
    assert any(o.status == 200 for o in in_flight), (
        "nothing was in flight at SIGTERM: the test proved nothing"
    )


@dataclass
class Call:
    started: float
    finished: float
    code: grpc.StatusCode


ACCEPT_MARGIN_SECONDS = 0.2


def test_sigterm_to_the_model_server_loses_no_accepted_call(fault_stack: Stack, fuzz: FuzzSettings) -> None:
    """Direct gRPC load (the gateway would retry and hide what the server does). Leaves it stopped."""
    stack = fault_stack
    wait_until(stack.model_server_serving, START_TIMEOUT_SECONDS, "model server serving")
    server = stack.model_server.process
    assert server is not None
    calls: list[Call] = []
    lock = threading.Lock()
    stop = threading.Event()
    image = random_images(1, seed=4)
    client = Client(stack.model_server_address)

    def caller() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                client.predict({signatures.IMAGE_INPUT: image}, timeout=30)
                code = grpc.StatusCode.OK
            except grpc.RpcError as error:
                code = error.code()
            with lock:
                calls.append(Call(started, time.monotonic(), code))
            if code != grpc.StatusCode.OK:
                time.sleep(0.05)

    threads = [threading.Thread(target=caller, daemon=True) for _ in range(8)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: len(calls) >= 40, 60, "40 calls answered")
        terminated_at = time.monotonic()
        server.send_signal(signal.SIGTERM)
        exit_code = server.wait(timeout=60)
        exited_at = time.monotonic()
        time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        client.close()
    stack.model_server.stop()
    # "Accepted" is judged from the client's clock: a call started in the last moment before the
    # SIGTERM may still be on its way to the server when it stops accepting (on a busy machine
    # that takes milliseconds), and is then refused, not lost. Calls started at least
    # ACCEPT_MARGIN_SECONDS before the signal had reached the server.
    accepted_before = terminated_at - ACCEPT_MARGIN_SECONDS
    before = [call for call in calls if call.started < accepted_before]
    racing = [call for call in calls if accepted_before <= call.started < terminated_at]
    after = [call for call in calls if call.started >= terminated_at]
    in_flight = [
        call
        for call in [*before, *racing]
        if call.finished > terminated_at and call.code == grpc.StatusCode.OK
    ]
    lost = [call for call in before if call.code != grpc.StatusCode.OK]
    refused = (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    unexpected_after = [call for call in [*racing, *after] if call.code not in refused]
    fuzz.record(
        "fault_model_server_sigterm",
        {
            "calls": len(calls),
            "started_before_sigterm": len(before),
            "in_flight_at_sigterm": len(in_flight),
            "lost": len(lost),
            "started_in_the_last_margin": dict(Counter(call.code.name for call in racing)),
            "after_sigterm": dict(Counter(call.code.name for call in after)),
            "seconds_sigterm_to_exit": round(exited_at - terminated_at, 2),
            "exit_code": exit_code,
        },
    )
    assert exit_code == 0, stack.model_server.log_tail()
    assert not lost, Counter(call.code.name for call in lost)
    assert in_flight, "no call in flight at SIGTERM was answered: the test proved nothing"
    assert not unexpected_after, Counter(call.code.name for call in unexpected_after)
