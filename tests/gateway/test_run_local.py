"""`make run`'s launcher: both processes up, the URL printed, Ctrl-C stops both cleanly."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading

import httpx
import pytest

from tests.gateway.conftest import TinyModelRepository
from tests.gateway.processes import REPO_ROOT, START_TIMEOUT_SECONDS, free_port, quiet_environment

pytestmark = pytest.mark.integration


def test_run_local_starts_both_and_stops_on_ctrl_c(tiny_model_repository: TinyModelRepository) -> None:
    gateway_port, grpc_port, rest_port = free_port(), free_port(), free_port()
    launcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway.run_local",
            f"--gateway-port={gateway_port}",
            f"--grpc-port={grpc_port}",
            f"--rest-port={rest_port}",
            f"--models={tiny_model_repository.models}",
            f"--model-config={tiny_model_repository.config_file}",
        ],
        cwd=REPO_ROOT,
        env=quiet_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    ready = threading.Event()

    def collect() -> None:
        assert launcher.stdout is not None
        for line in launcher.stdout:
            lines.append(line)
            if "aidetect is ready" in line:
                ready.set()

    reader = threading.Thread(target=collect, daemon=True)
    reader.start()
    try:
        assert ready.wait(START_TIMEOUT_SECONDS), "".join(lines[-40:])
        url = f"http://127.0.0.1:{gateway_port}"
        assert any(f"open {url}/" in line for line in lines)
        assert httpx.get(f"{url}/ready", timeout=30).status_code == 200
        model = httpx.get(f"{url}/v1/model", timeout=30).json()
        assert model["model_card"]["backbone"].startswith(
            "tiny"
        )  # the launcher points the gateway at the cards
        launcher.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert launcher.wait(timeout=90) == 0, "".join(lines[-40:])
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    reader.join(timeout=10)
    output = "".join(lines)
    assert "gateway stopped cleanly" in output, output[-3000:]
    assert "model server stopped cleanly" in output, output[-3000:]
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{gateway_port}/health", timeout=5)


def test_run_local_explains_a_missing_model(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = subprocess.run(
        [sys.executable, "-m", "gateway.run_local", f"--models={tmp_path}"],
        cwd=REPO_ROOT,
        env=quiet_environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "no model version" in result.stderr
