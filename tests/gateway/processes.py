"""Real processes on free loopback ports for the integration and browser tests.

The local model server (`python -m serving.server`) and the gateway (`python -m gateway`) run
as they do in `make run`; logs go to files whose tails are shown when a wait fails.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import httpx

from common.processes import (
    GatewayFlags,
    ManagedProcess,
    ModelServerFlags,
    free_port,
    gateway_settings,
    service_environment,
    wait_until,
)
from common.repository import REPO_ROOT

__all__ = ["REPO_ROOT", "free_port", "wait_until"]

# TensorFlow's import and a model load share 2 cores with other jobs: be patient, never flaky.
START_TIMEOUT_SECONDS = 240.0


def quiet_environment(**extra: str) -> dict[str, str]:
    """The launcher's environment without the developer's own AIDETECT_* settings: tests set theirs."""
    environment = {
        key: value for key, value in service_environment().items() if not key.startswith("AIDETECT_")
    }
    environment.update(CUDA_VISIBLE_DEVICES="", **extra)
    return environment


def child_process(
    command: list[str], log_path: Path, environment: dict[str, str] | None = None
) -> ManagedProcess:
    """A child of the test session (the launcher's ManagedProcess, in the session's process group)."""
    return ManagedProcess(
        log_path.stem, command, log_path, environment or quiet_environment(), new_session=False
    )


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
    flags = ModelServerFlags(
        grpc_port=grpc_port,
        rest_port=rest_port,
        model_config_file=config_file,
        models_root=models_root,
        extra=("--shutdown_grace_seconds=2", *extra_flags),
    )
    return child_process(flags.command(), log_path)


def gateway_process(port: int, model_server_address: str, log_path: Path, **settings: str) -> ManagedProcess:
    command = GatewayFlags(port=port, model_server=model_server_address).command()
    return child_process(command, log_path, quiet_environment(**gateway_settings(**settings)))


def answers(url: str, status: int = 200) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return httpx.get(url, timeout=5.0).status_code == status
        except httpx.HTTPError:
            return False

    return check
