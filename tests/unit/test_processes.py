"""The one launcher (common.processes): command lines, start, readiness, and the stop policy."""

from __future__ import annotations

import signal
import socket
import sys
from pathlib import Path

import pytest

from common.processes import (
    LOWEST_PORT,
    PORT_RANGE_FILE,
    GatewayFlags,
    LaunchError,
    ManagedProcess,
    ModelServerFlags,
    ProcessExitedError,
    check_models,
    free_port,
    gateway_settings,
    wait_until,
)


def test_a_free_port_can_be_bound() -> None:
    port = free_port()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))


def test_free_ports_are_distinct_and_outside_the_ephemeral_range() -> None:
    """Callers bind later: a port from the range outgoing connections draw from could be taken
    meanwhile by any client socket, and two calls in a row must not give the same port."""
    ephemeral_low = int(PORT_RANGE_FILE.read_text().split()[0]) if PORT_RANGE_FILE.is_file() else None
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    if ephemeral_low is not None and ephemeral_low > LOWEST_PORT:
        assert all(LOWEST_PORT <= port < ephemeral_low for port in ports)


def test_model_server_command_line_in_tf_serving_flag_names(tmp_path: Path) -> None:
    plain = ModelServerFlags(grpc_port=8500, rest_port=8501, model_config_file=Path("/c/models.config"))
    assert plain.command()[1:] == [
        "-m", "serving.server", "--host=127.0.0.1", "--port=8500", "--rest_api_port=8501",
        "--model_config_file=/c/models.config",
    ]  # fmt: skip
    assert plain.grpc_address == "127.0.0.1:8500"
    full = ModelServerFlags(
        grpc_port=1,
        rest_port=2,
        model_config_file=tmp_path / "models.config",
        models_root=tmp_path / "models" / ".." / "models",
        batching_file=tmp_path / "batching.config",
        monitoring_file=tmp_path / "monitoring.config",
        extra=("--file_system_poll_wait_seconds=0",),
    ).command()
    assert f"--model_base_path_prefix_map=/models={tmp_path / 'models'}" in full
    assert full.count("--enable_batching") == 1
    assert f"--batching_parameters_file={tmp_path / 'batching.config'}" in full
    assert f"--monitoring_config_file={tmp_path / 'monitoring.config'}" in full
    assert full[-1] == "--file_system_poll_wait_seconds=0"  # extra flags last: they win


def test_gateway_command_line_and_settings() -> None:
    gateway = GatewayFlags(port=8000, model_server="127.0.0.1:8500")
    assert gateway.command()[1:] == [
        "-m", "gateway", "--host=127.0.0.1", "--port=8000", "--model-server-address=127.0.0.1:8500",
    ]  # fmt: skip
    assert gateway.url == "http://127.0.0.1:8000"
    assert gateway_settings(rate_limit_per_minute="5") == {"AIDETECT_GATEWAY_RATE_LIMIT_PER_MINUTE": "5"}


def python_child(code: str, log: Path) -> ManagedProcess:
    return ManagedProcess("child", [sys.executable, "-c", code], log)


def test_a_process_stops_on_sigterm_and_its_log_is_kept(tmp_path: Path) -> None:
    child = python_child("import time; print('started', flush=True); time.sleep(60)", tmp_path / "child.log")
    child.start()
    wait_until(lambda: "started" in child.log_tail(), 30, "the child printed", child.log_path)
    assert child.running and child.pid is not None
    assert child.stop() == -signal.SIGTERM
    assert not child.running and child.stop() is None
    assert "started" in (tmp_path / "child.log").read_text()


def test_a_process_that_ignores_sigterm_is_killed_after_the_timeout(tmp_path: Path) -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
        "time.sleep(60)"
    )
    child = python_child(code, tmp_path / "stubborn.log").start()
    wait_until(lambda: "ready" in child.log_tail(), 30, "the child ignores SIGTERM", child.log_path)
    assert child.stop(timeout=0.5) == -signal.SIGKILL


def test_waiting_on_a_process_that_exits_fails_at_once_with_its_log(tmp_path: Path) -> None:
    child = python_child("print('no model found'); raise SystemExit(3)", tmp_path / "failing.log").start()
    with pytest.raises(ProcessExitedError, match=r"(?s)exited with code 3.*no model found"):
        wait_until(lambda: False, 60, "never", processes=[child])
    with pytest.raises(TimeoutError, match="never did not happen within 0 s"):
        wait_until(lambda: False, 0.1, "never", interval=0.01)


def test_check_models_says_what_is_missing(tmp_path: Path) -> None:
    config = tmp_path / "models.config"
    with pytest.raises(LaunchError, match="not found"):
        check_models(tmp_path, "ai_detector", config)
    config.write_text("")
    with pytest.raises(LaunchError, match="export one first"):
        check_models(tmp_path, "ai_detector", config)
    (tmp_path / "ai_detector" / "1").mkdir(parents=True)
    check_models(tmp_path, "ai_detector", config)
