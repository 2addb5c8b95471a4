"""The stack under test: the local model server and the gateway as real processes on free loopback ports.

The commands come from `gateway/run_local.py` (what `make run` starts), so the load test measures the
same processes with the same flags; only the ports, the log files and, for the benchmark, the
batching parameters differ. Each process is stopped by its own pid (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import TracebackType

from common.model_config import DEFAULT_MODEL_NAME
from gateway import run_local

LOOPBACK = run_local.LOOPBACK
DEFAULT_BATCHING_FILE = run_local.REPO_ROOT / "serving" / "batching.cpu.config"
# serving/monitoring.config's path, where the model server's Prometheus text is served on the REST port.
MODEL_SERVER_METRICS_PATH = "/monitoring/prometheus/metrics"
BATCHING_FLAGS = ("--enable_batching", "--batching_parameters_file=")


class StackError(RuntimeError):
    """The stack did not start; the message carries the end of the failing process's log."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def log_tail(path: Path, lines: int = 30) -> str:
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def with_batching(command: list[str], batching_file: Path | None) -> list[str]:
    """`command` with its batching flags replaced: `batching_file`, or no batching when None."""
    kept = [argument for argument in command if not argument.startswith(BATCHING_FLAGS)]
    if batching_file is None:
        return kept
    return [*kept, "--enable_batching", f"--batching_parameters_file={Path(batching_file).resolve()}"]


@dataclass
class LocalStack:
    """Model server + gateway from `models_directory` / `model_config_file`, logs in `log_directory`."""

    models_directory: Path
    model_config_file: Path
    log_directory: Path
    model_name: str = DEFAULT_MODEL_NAME
    batching_file: Path | None = DEFAULT_BATCHING_FILE
    extra_server_flags: list[str] = field(default_factory=list)
    gateway_settings: dict[str, str] = field(default_factory=dict)
    # Process name ("model server", "gateway") -> the CPUs it may run on (all of them when absent).
    cpu_affinity: dict[str, frozenset[int]] = field(default_factory=dict)
    grpc_port: int = field(default_factory=free_port)
    rest_port: int = field(default_factory=free_port)
    gateway_port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def gateway_url(self) -> str:
        return f"http://{LOOPBACK}:{self.gateway_port}"

    @property
    def model_server_address(self) -> str:
        return f"{LOOPBACK}:{self.grpc_port}"

    @property
    def model_server_metrics_url(self) -> str:
        return f"http://{LOOPBACK}:{self.rest_port}{MODEL_SERVER_METRICS_PATH}"

    def log_path(self, name: str) -> Path:
        return self.log_directory / f"{name.replace(' ', '_')}.log"

    def commands(self) -> dict[str, list[str]]:
        arguments = run_local.parse_arguments(
            [
                f"--gateway-port={self.gateway_port}",
                f"--grpc-port={self.grpc_port}",
                f"--rest-port={self.rest_port}",
                f"--models={self.models_directory}",
                f"--model-config={self.model_config_file}",
                f"--model-name={self.model_name}",
            ]
        )
        server = with_batching(run_local.model_server_command(arguments), self.batching_file)
        return {
            "model server": [*server, *self.extra_server_flags],
            "gateway": run_local.gateway_command(arguments),
        }

    def environment(self) -> dict[str, str]:
        return {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
            "AIDETECT_GATEWAY_MODEL_NAME": self.model_name,
            "AIDETECT_GATEWAY_MODEL_CARD_DIRECTORY": str((self.models_directory / self.model_name).resolve()),
            **{f"AIDETECT_GATEWAY_{name.upper()}": value for name, value in self.gateway_settings.items()},
        }

    def start(self, ready_timeout_seconds: float = run_local.READY_TIMEOUT_SECONDS) -> None:
        """Start both processes and wait until the gateway's /ready answers 200."""
        try:
            run_local.check_models(self.models_directory, self.model_name, self.model_config_file)
        except run_local.LaunchError as error:
            raise StackError(str(error)) from error
        self.log_directory.mkdir(parents=True, exist_ok=True)
        environment = self.environment()
        for name, command in self.commands().items():
            with self.log_path(name).open("ab") as log:
                self.processes[name] = subprocess.Popen(
                    command,
                    cwd=run_local.REPO_ROOT,
                    env=environment,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=(
                        partial(os.sched_setaffinity, 0, self.cpu_affinity[name])
                        if name in self.cpu_affinity
                        else None
                    ),
                )
        deadline = time.monotonic() + ready_timeout_seconds
        while not run_local.is_ready(f"{self.gateway_url}/ready"):
            for name, process in self.processes.items():
                if process.poll() is not None:
                    self.stop()
                    raise StackError(
                        f"the {name} exited with code {process.returncode}:\n{log_tail(self.log_path(name))}"
                    )
            if time.monotonic() > deadline:
                self.stop()
                raise StackError(
                    f"{self.gateway_url}/ready did not answer 200 within {ready_timeout_seconds:.0f} s:\n"
                    f"{log_tail(self.log_path('model server'))}"
                )
            time.sleep(0.5)

    def stop(self) -> None:
        """Gateway first (it drains its requests), then the model server."""
        for name in ("gateway", "model server"):
            process = self.processes.pop(name, None)
            if process is not None:
                run_local.stop(process, name)

    def process_ids(self) -> dict[str, int]:
        return {name: process.pid for name, process in self.processes.items()}

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(
        self,
        exception_type: type[BaseException] | None,
        exception: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
