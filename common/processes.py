"""Starting, watching and stopping the project's own processes: the one launcher.

`make run` (gateway.run_local), the load test's stack, the benchmarks and the tests all start the
local model server and the gateway through :class:`ModelServerFlags` / :class:`GatewayFlags`
(typed command lines) and :class:`ManagedProcess` (start, readiness, stop), with one port rule
(:func:`free_port`) and one stop policy: SIGTERM, then SIGKILL after
:data:`STOP_TIMEOUT_SECONDS`, longer than the model server's default shutdown grace (30 s) so a
clean shutdown is never cut short.
"""

from __future__ import annotations

import ctypes
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType

from common import model_versions
from common.repository import REPO_ROOT, SERVING_FOLDER

LOOPBACK = "127.0.0.1"
READY_TIMEOUT_SECONDS = 300.0  # TensorFlow's import and a model load on a small, shared CPU
STOP_TIMEOUT_SECONDS = 60.0
DEFAULT_MONITORING_FILE = SERVING_FOLDER / "monitoring.config"


# Where free_port looks first: below the kernel's ephemeral range, which outgoing connections draw
# from: a port chosen there can be taken by any client socket before the server binds it (a test
# once failed so: "address already in use" on a port the OS had handed out a second earlier).
PORT_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST_PORT = 10_000


_handed_out: set[int] = set()  # never the same port twice from one process (callers bind later)


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nothing listens on right now and not handed out before by this process: a random
    one below the ephemeral range that binds, else one the OS picks."""
    try:
        ephemeral_low = int(PORT_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = LOWEST_PORT
    below = range(LOWEST_PORT, ephemeral_low)
    for port in [*random.sample(below, k=min(20, len(below))), 0, 0, 0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
            bound = int(probe.getsockname()[1])
        if bound not in _handed_out:
            _handed_out.add(bound)
            return bound
    raise OSError(f"no free TCP port on {host}")


def log_tail(path: Path | None, lines: int = 40) -> str:
    if path is None or not path.is_file():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def service_environment(**extra: str) -> dict[str, str]:
    """The environment for a child: ours, unbuffered output, TensorFlow's C++ logs at warnings, `extra`."""
    environment = dict(os.environ)
    environment.update(
        PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL=environment.get("TF_CPP_MIN_LOG_LEVEL", "2"), **extra
    )
    return environment


def answers_200(url: str, timeout: float = 5.0) -> bool:
    """Whether GET `url` answers 200 now (readiness probes: /ready, /health)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def wait_until(
    condition: Callable[[], bool],
    timeout: float,
    what: str,
    log: Path | None = None,
    processes: Sequence[ManagedProcess] = (),
    interval: float = 0.5,
) -> None:
    """Poll `condition`; TimeoutError after `timeout` s, ProcessExitedError as soon as one of
    `processes` has exited (with the end of its log either way)."""
    deadline = time.monotonic() + timeout
    while not condition():
        for process in processes:
            if not process.running:
                raise ProcessExitedError(
                    f"the {process.name} exited with code {process.returncode} while waiting until {what}:\n"
                    f"{process.log_tail()}"
                )
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:.0f} s\n{log_tail(log)}")
        time.sleep(interval)


class ProcessExitedError(RuntimeError):
    """A managed process ended while it was expected to run."""


def stop_process(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT_SECONDS) -> tuple[int, bool]:
    """SIGTERM, wait up to `timeout` s, then SIGKILL: (exit code, whether it had to be killed)."""
    killed = False
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            killed = True
    return process.returncode, killed


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _before_exec(parent: int) -> None:
    """In the child, before exec: SIGTERM when `parent` dies, however it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0 or os.getppid() != parent:
        os._exit(1)  # no parent-death signal, or the launcher is already gone: do not start


@dataclass
class ManagedProcess:
    """One child process of ours. `log_path` None: it writes to our own stdout (make run)."""

    name: str
    command: list[str]
    log_path: Path | None = None
    environment: dict[str, str] = field(default_factory=service_environment)
    # Its own session: a terminal's Ctrl-C reaches only the launcher, which stops children in order.
    new_session: bool = True
    terminate_with_parent: bool = False  # Linux only: the child gets SIGTERM when we die
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        if self.running:
            return self
        parent = os.getpid() if self.terminate_with_parent and sys.platform == "linux" else None
        log = None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                self.command,
                cwd=REPO_ROOT,
                env=self.environment,
                stdout=log,
                stderr=subprocess.STDOUT if log is not None else None,
                start_new_session=self.new_session,
                preexec_fn=partial(_before_exec, parent) if parent is not None else None,
            )
        finally:
            if log is not None:
                log.close()
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> int | None:
        """Stop it (see :func:`stop_process`); the exit code, None if it never started."""
        if self.process is None:
            return None
        code, _ = stop_process(self.process, timeout)
        self.process = None
        return code

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)


@dataclass(frozen=True)
class ModelServerFlags:
    """The local model server's command line, in TF Serving's flag names (serving/server.py)."""

    grpc_port: int
    rest_port: int
    model_config_file: Path
    models_root: Path | None = None  # mapped onto /models, the base-path prefix of models.config
    batching_file: Path | None = None
    monitoring_file: Path | None = None
    session_config_file: Path | None = None  # TF Serving's session ConfigProto (mixed precision)
    host: str = LOOPBACK
    extra: tuple[str, ...] = ()

    def command(self) -> list[str]:
        command = [
            sys.executable,
            "-m",
            "serving.server",
            f"--host={self.host}",
            f"--port={self.grpc_port}",
            f"--rest_api_port={self.rest_port}",
            f"--model_config_file={self.model_config_file}",
        ]
        if self.models_root is not None:
            command.append(f"--model_base_path_prefix_map=/models={Path(self.models_root).resolve()}")
        if self.batching_file is not None:
            command += [
                "--enable_batching",
                f"--batching_parameters_file={Path(self.batching_file).resolve()}",
            ]
        if self.monitoring_file is not None:
            command.append(f"--monitoring_config_file={self.monitoring_file}")
        if self.session_config_file is not None:
            command.append(f"--tensorflow_session_config_file={self.session_config_file}")
        return [*command, *self.extra]

    @property
    def grpc_address(self) -> str:
        return f"{self.host}:{self.grpc_port}"


@dataclass(frozen=True)
class GatewayFlags:
    """The gateway's command line (`python -m gateway`); everything else is AIDETECT_GATEWAY_* settings."""

    port: int
    model_server: str
    host: str = LOOPBACK

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "gateway",
            f"--host={self.host}",
            f"--port={self.port}",
            f"--model-server-address={self.model_server}",
        ]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def gateway_settings(**settings: str) -> dict[str, str]:
    """Gateway settings as the environment variables its settings object reads."""
    return {f"AIDETECT_GATEWAY_{name.upper()}": value for name, value in settings.items()}


@dataclass(frozen=True)
class StackCommands:
    """`make run`'s two processes: their command lines and the environment both start with."""

    server: ModelServerFlags
    gateway: GatewayFlags
    environment: dict[str, str]


def stack_commands(
    grpc_port: int,
    rest_port: int,
    gateway_port: int,
    models: Path,
    model_name: str,
    model_config_file: Path,
    batching_file: Path | None,
    extra_server_flags: Sequence[str] = (),
    settings: dict[str, str] | None = None,
    session_config_file: Path | None = None,
) -> StackCommands:
    """The local model server (models.config's /models mapped onto `models`, serving/'s monitoring
    config when present) and the gateway pointed at it, reading the model cards in `models`.
    `make run` and the load test's stack both start exactly these; `settings` are more gateway
    settings (gateway_settings)."""
    server = ModelServerFlags(
        grpc_port=grpc_port,
        rest_port=rest_port,
        model_config_file=model_config_file,
        models_root=models,
        batching_file=batching_file,
        monitoring_file=DEFAULT_MONITORING_FILE if DEFAULT_MONITORING_FILE.is_file() else None,
        session_config_file=session_config_file,
        extra=tuple(extra_server_flags),
    )
    environment = service_environment(
        # The gateway can read the model cards here (GET /v1/model shows them).
        AIDETECT_GATEWAY_MODEL_CARD_DIRECTORY=str((models / model_name).resolve()),
        AIDETECT_GATEWAY_MODEL_NAME=model_name,
        **gateway_settings(**(settings or {})),
    )
    return StackCommands(
        server, GatewayFlags(port=gateway_port, model_server=server.grpc_address), environment
    )


class LaunchError(RuntimeError):
    """Something prevents the local stack from starting; the message says what to do."""


def check_models(models: Path, model_name: str, config: Path) -> None:
    """The model config exists and the model has at least one exported version."""
    if not config.is_file():
        raise LaunchError(f"model config {config} not found")
    model_folder = models / model_name
    if not model_versions.versions(model_folder):
        raise LaunchError(f"no model version in {model_folder}: export one first (see export/README.md)")


class StopRequestedError(Exception):
    """Ctrl-C, SIGTERM or SIGHUP arrived (see :func:`raise_stop`)."""


def raise_stop(signal_number: int, frame: FrameType | None) -> None:
    """A signal handler that turns the signal into StopRequestedError, for an orderly shutdown."""
    raise StopRequestedError(signal.Signals(signal_number).name)
