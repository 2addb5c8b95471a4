"""The stack under test: the local model server and the gateway as real processes on free loopback ports.

The command lines are `make run`'s (common.processes: ModelServerFlags, GatewayFlags, with the same
batching and monitoring files), so the load test measures the same processes with the same flags;
only the ports, the log files and, for the benchmark, the batching parameters differ. Each process
is stopped by its own pid with the launcher's one stop policy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from common import metric_names
from common.model_config import DEFAULT_MODEL_NAME
from common.processes import (
    DEFAULT_MONITORING_FILE,
    LOOPBACK,
    READY_TIMEOUT_SECONDS,
    GatewayFlags,
    LaunchError,
    ManagedProcess,
    ModelServerFlags,
    ProcessExitedError,
    answers_200,
    check_models,
    free_port,
    gateway_settings,
    service_environment,
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
    gateway_settings: dict[str, str] = field(default_factory=dict)
    # Process name ("model server", "gateway") -> the CPUs it may run on (all of them when absent).
    cpu_affinity: dict[str, frozenset[int]] = field(default_factory=dict)
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

    def commands(self) -> dict[str, list[str]]:
        server = ModelServerFlags(
            grpc_port=self.grpc_port,
            rest_port=self.rest_port,
            model_config_file=self.model_config_file,
            models_root=self.models_directory,
            batching_file=self.batching_file,
            monitoring_file=DEFAULT_MONITORING_FILE if DEFAULT_MONITORING_FILE.is_file() else None,
            extra=tuple(self.extra_server_flags),
        )
        return {
            "model server": server.command(),
            "gateway": GatewayFlags(port=self.gateway_port, model_server=server.grpc_address).command(),
        }

    def environment(self) -> dict[str, str]:
        return service_environment(
            AIDETECT_GATEWAY_MODEL_NAME=self.model_name,
            AIDETECT_GATEWAY_MODEL_CARD_DIRECTORY=str((self.models_directory / self.model_name).resolve()),
            **gateway_settings(**self.gateway_settings),
        )

    def start(self, ready_timeout_seconds: float = READY_TIMEOUT_SECONDS) -> None:
        """Start both processes and wait until the gateway's /ready answers 200."""
        try:
            check_models(self.models_directory, self.model_name, self.model_config_file)
        except LaunchError as error:
            raise StackError(str(error)) from error
        environment = self.environment()
        for name, command in self.commands().items():
            self.processes[name] = ManagedProcess(
                name, command, self.log_path(name), environment, cpus=self.cpu_affinity.get(name)
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
