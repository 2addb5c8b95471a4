"""The local model server and the gateway as real processes on free loopback ports, with the
handles the reliability tests need: SIGKILL, SIGTERM, restart, resident memory, logs.

Built on tests/gateway/processes.py (the same commands as `make run`); the model directory is
a folder of the test's own, so versions can be dropped in and taken out.
"""

from __future__ import annotations

import shutil
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from tests.gateway.processes import (
    START_TIMEOUT_SECONDS,
    ManagedProcess,
    answers,
    free_port,
    gateway_process,
    model_server_process,
    wait_until,
)
from tests.serving.local_server_support import MODEL_NAME, config_text

MEBIBYTE = 1024 * 1024


def latest_policy_config() -> str:
    """TF Serving's default policy: the highest version serves, a new one replaces it."""
    return config_text(
        [{"name": MODEL_NAME, "base_path": f"/models/{MODEL_NAME}", "policy": "latest { num_versions: 1 }"}]
    )


def stable_label_config(version: int = 1) -> str:
    """As serving/models.config: one specific version, labelled stable."""
    return config_text(
        [
            {
                "name": MODEL_NAME,
                "base_path": f"/models/{MODEL_NAME}",
                "policy": f"specific {{ versions: {version} }}",
                "labels": {"stable": version},
            }
        ]
    )


def batching_parameters(
    max_batch_size: int = 16, timeout_micros: int = 1000, max_enqueued_batches: int = 64
) -> str:
    return (
        f"max_batch_size {{ value: {max_batch_size} }}\n"
        f"batch_timeout_micros {{ value: {timeout_micros} }}\n"
        f"max_enqueued_batches {{ value: {max_enqueued_batches} }}\n"
        "num_batch_threads { value: 1 }\n"
    )


@dataclass
class Stack:
    workspace: Path
    models_root: Path  # mapped to /models
    model_server: ManagedProcess
    gateway: ManagedProcess
    grpc_port: int
    rest_port: int
    gateway_port: int

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def model_server_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def model_base_path(self) -> Path:
        return self.models_root / MODEL_NAME

    def start(self) -> None:
        self.model_server.start()
        self.gateway.start()
        self.wait_ready()

    def wait_ready(self, timeout: float = START_TIMEOUT_SECONDS) -> None:
        wait_until(
            answers(f"{self.gateway_url}/ready"), timeout, "gateway /ready 200", self.model_server.log_path
        )

    def stop(self) -> None:
        self.gateway.stop()
        self.model_server.stop()

    def model_server_serving(self) -> bool:
        """The model server's own REST status: some version AVAILABLE (the gateway not involved)."""
        try:
            response = httpx.get(f"{self.rest_url}/v1/models/{MODEL_NAME}", timeout=5.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200 and any(
            status.get("state") == "AVAILABLE" for status in response.json().get("model_version_status", [])
        )

    def kill_model_server(self) -> None:
        """SIGKILL: no shutdown code runs, connections drop mid-call."""
        process = self.model_server.process
        assert process is not None, "the model server is not running"
        process.send_signal(signal.SIGKILL)
        process.wait()
        self.model_server.stop()  # forgets the dead process; its exit code is -9

    @staticmethod
    def pid(process: ManagedProcess) -> int:
        assert process.process is not None, "the process is not running"
        return process.process.pid

    def logs(self, lines: int = 60) -> str:
        return "\n".join(
            f"--- {process.log_path.name}\n{process.log_tail(lines)}"
            for process in (self.model_server, self.gateway)
            if process.log_path.exists()
        )


def build_stack(
    workspace: Path,
    template_version: Path,
    config: str,
    *,
    model_server_flags: tuple[str, ...] = (),
    batching: str | None = None,
    **gateway_settings: str,
) -> Stack:
    """Processes not yet started: version 1 copied from `template_version` into a models folder
    of the stack's own, the config written, ports chosen."""
    models_root = workspace / "models"
    (models_root / MODEL_NAME).mkdir(parents=True, exist_ok=True)
    shutil.copytree(template_version, models_root / MODEL_NAME / "1")
    config_file = workspace / "models.config"
    config_file.write_text(config)
    flags = list(model_server_flags)
    if batching is not None:
        batching_file = workspace / "batching.config"
        batching_file.write_text(batching)
        flags += ["--enable_batching", f"--batching_parameters_file={batching_file}"]
    grpc_port, rest_port, gateway_port = free_port(), free_port(), free_port()
    server = model_server_process(
        config_file, models_root, grpc_port, rest_port, workspace / "model_server.log", tuple(flags)
    )
    gateway = gateway_process(
        gateway_port, f"127.0.0.1:{grpc_port}", workspace / "gateway.log", **gateway_settings
    )
    return Stack(workspace, models_root, server, gateway, grpc_port, rest_port, gateway_port)


@contextmanager
def running(stack: Stack) -> Iterator[Stack]:
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


@dataclass
class MemorySampler:
    """Resident memory of some processes, sampled every `interval` seconds in a thread."""

    pids: dict[str, int]
    interval: float = 0.2
    peaks: dict[str, int] = field(default_factory=dict)
    samples: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self._processes = {name: psutil.Process(pid) for name, pid in self.pids.items()}

    def rss(self, name: str) -> int:
        return int(self._processes[name].memory_info().rss)

    def sample(self) -> None:
        now = time.monotonic()
        for name, process in self._processes.items():
            try:
                rss = int(process.memory_info().rss)
            except psutil.Error:
                continue
            self.samples.setdefault(name, []).append((now, rss))
            self.peaks[name] = max(self.peaks.get(name, 0), rss)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> MemorySampler:
        self.sample()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()
