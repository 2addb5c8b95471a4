"""Real processes on free loopback ports for the integration and browser tests.

The local model server (`python -m serving.server`) and the gateway (`python -m gateway`) run
as they do in `make run`; logs go to files whose tails are shown when a wait fails.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from common.repository import REPO_ROOT

# TensorFlow's import and a model load share 2 cores with other jobs: be patient, never flaky.
START_TIMEOUT_SECONDS = 240.0
STOP_TIMEOUT_SECONDS = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:]) if log and log.exists() else ""
    raise TimeoutError(f"{what} did not happen within {timeout:.0f} s\n{tail}")


def quiet_environment(**extra: str) -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("AIDETECT_")}
    environment.update(PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", **extra)
    return environment


@dataclass
class ManagedProcess:
    """One child process, stopped with SIGTERM (then SIGKILL) by its own pid."""

    command: list[str]
    log_path: Path
    environment: dict[str, str] = field(default_factory=quiet_environment)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self.running:
            return
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command, cwd=REPO_ROOT, env=self.environment, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code = self.process.returncode
        self.process = None
        return code

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def model_server_process(
    config_file: Path,
    models_root: Path,
    grpc_port: int,
    rest_port: int,
    log_path: Path,
    extra_flags: Sequence[str] = (),
) -> ManagedProcess:
    """The local model server with the production config's paths mapped onto `models_root`;
    `extra_flags` are more TF Serving flags (batching, load retries, ...)."""
    command = [
        sys.executable,
        "-m",
        "serving.server",
        "--host=127.0.0.1",
        f"--port={grpc_port}",
        f"--rest_api_port={rest_port}",
        f"--model_config_file={config_file}",
        f"--model_base_path_prefix_map=/models={models_root}",
        "--shutdown_grace_seconds=2",
        *extra_flags,
    ]
    return ManagedProcess(command, log_path)


def gateway_process(port: int, model_server_address: str, log_path: Path, **settings: str) -> ManagedProcess:
    command = [
        sys.executable,
        "-m",
        "gateway",
        "--host=127.0.0.1",
        f"--port={port}",
        f"--model-server={model_server_address}",
    ]
    environment = quiet_environment(
        **{f"AIDETECT_GATEWAY_{name.upper()}": value for name, value in settings.items()}
    )
    return ManagedProcess(command, log_path, environment)


def answers(url: str, status: int = 200) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return httpx.get(url, timeout=5.0).status_code == status
        except httpx.HTTPError:
            return False

    return check
