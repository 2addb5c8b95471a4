"""The stack under test: the local model server and the gateway as real processes on free loopback ports.

The command lines and environment are `make run`'s (common.processes.stack_commands builds both),
so the load test measures the same processes with the same flags; only the ports, the log files
and, for the benchmark, the batching parameters differ. Each process is stopped by its own pid
with the launcher's one stop policy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from common import metric_names
from common.model_config import DEFAULT_MODEL_NAME
from common.processes import (
    LOOPBACK,
    READY_TIMEOUT_SECONDS,
    LaunchError,
    ManagedProcess,
    ProcessExitedError,
    StackCommands,
    answers_200,
    check_models,
    free_port,
    stack_commands,
    wait_until,
)
from common.repository import DEFAULT_BATCHING_FILE

# serving/monitoring.config's path, where the model server's Prometheus text is served on the REST port.
MODEL_SERVER_METRICS_PATH = metric_names.TF_SERVING_METRICS_PATH


class StackError(RuntimeError):
    """The stack did not start; the message carries the end of the failing process's log."""


@dataclass
class LocalStack:
    """Model server + gateway from `models_directory` / `model_config_file`, logs in `log_directory`."""

    models_directory: Path
    model_config_file: Path
    log_directory: Path
    model_name: str = DEFAULT_MODEL_NAME
    batching_file: Path | None = DEFAULT_BATCHING_FILE
    extra_server_flags: list[str] = field(default_factory=list)
    session_config_file: Path | None = None  # TF Serving's --tensorflow_session_config_file
    gateway_settings: dict[str, str] = field(default_factory=dict)
    grpc_port: int = field(default_factory=free_port)
    rest_port: int = field(default_factory=free_port)
    gateway_port: int = field(default_factory=free_port)
    processes: dict[str, ManagedProcess] = field(default_factory=dict)

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

    def commands(self) -> StackCommands:
        return stack_commands(
            self.grpc_port,
            self.rest_port,
            self.gateway_port,
            self.models_directory,
            self.model_name,
            self.model_config_file,
            self.batching_file,
            self.extra_server_flags,
            self.gateway_settings,
            self.session_config_file,
        )

    def start(self, ready_timeout_seconds: float = READY_TIMEOUT_SECONDS) -> None:
        """Start both processes and wait until the gateway's /ready answers 200."""
        try:
            check_models(self.models_directory, self.model_name, self.model_config_file)
        except LaunchError as error:
            raise StackError(str(error)) from error
        stack = self.commands()
        for name, command in (("model server", stack.server.command()), ("gateway", stack.gateway.command())):
            self.processes[name] = ManagedProcess(
                name, command, self.log_path(name), stack.environment
            ).start()
        try:
            wait_until(
                lambda: answers_200(f"{self.gateway_url}/ready"),
                ready_timeout_seconds,
                f"{self.gateway_url}/ready answers 200",
                log=self.log_path("model server"),
                processes=list(self.processes.values()),
            )
        except (TimeoutError, ProcessExitedError) as error:
            self.stop()
            raise StackError(str(error)) from error

    def stop(self) -> None:
        """Gateway first (it drains its requests), then the model server."""
        for name in ("gateway", "model server"):
            process = self.processes.pop(name, None)
            if process is not None:
                process.stop()

    def process_ids(self) -> dict[str, int]:
        return {name: process.pid for name, process in self.processes.items() if process.pid is not None}

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
