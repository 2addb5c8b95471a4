"""`make run`: the local model server and the gateway on loopback, until Ctrl-C.

    python -m gateway.run_local [--gateway-port 8000] [--grpc-port 8500] [--rest-port 8501]
                                [--models ./models] [--model-config serving/models.config]
                                [--mixed-precision auto|on|off]

Starts `python -m serving.server` with `serving/models.config` (its `/models/...` base paths
mapped onto the repository's `models/` folder, the local server's one deviation from the
production container) and `python -m gateway` pointed at it; waits until the gateway's /ready
answers 200; prints the URL. Ctrl-C, SIGTERM or SIGHUP (the terminal closed) stops the gateway,
then the model server, and waits for both; further signals meanwhile are ignored. If the launcher
itself is killed, the kernel sends both children SIGTERM (Linux's parent-death signal), so no
server outlives it. Exits 1 when either cannot start, showing why.
"""

from __future__ import annotations

import enum
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from common.machine import computes_bfloat16
from common.model_config import DEFAULT_MODEL_NAME
from common.processes import (
    LOOPBACK,
    READY_TIMEOUT_SECONDS,
    STOP_TIMEOUT_SECONDS,
    LaunchError,
    ManagedProcess,
    StopRequestedError,
    answers_200,
    check_models,
    raise_stop,
    stack_commands,
    stop_process,
)
from common.repository import CPU_SESSION_CONFIG_FILE, DEFAULT_BATCHING_FILE, REPO_ROOT, SERVING_FOLDER

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class MixedPrecision(enum.StrEnum):
    """TF Serving's bfloat16 session config (serving/session_config.cpu.pbtxt) for the local server.

    Off by default, fp32 as production serves: versions 3 and 4 missed the accuracy rule under it
    (version 3 by one image, version 4 with 1.15% of the validation labels flipped); version 5
    passes it and runs 1.3-1.8x faster (`python -m loadtest.benchmark mixed-precision`,
    docs/performance.md). `auto` turns it on only where the CPU computes bfloat16 natively
    (AVX512-BF16 or AMX)."""

    off = "off"
    auto = "auto"
    on = "on"


@dataclass(frozen=True)
class RunOptions:
    gateway_port: int = 8000
    grpc_port: int = 8500
    rest_port: int = 8501
    models: Path = REPO_ROOT / "models"
    model_config: Path = SERVING_FOLDER / "models.config"
    model_name: str = DEFAULT_MODEL_NAME
    ready_timeout: float = READY_TIMEOUT_SECONDS
    mixed_precision: MixedPrecision = MixedPrecision.off

    def session_config_file(self) -> Path | None:
        """TF Serving's session config when mixed precision is wanted (see MixedPrecision)."""
        wanted = self.mixed_precision is MixedPrecision.on or (
            self.mixed_precision is MixedPrecision.auto and computes_bfloat16()
        )
        return CPU_SESSION_CONFIG_FILE if wanted else None


def check_port_free(port: int, what: str, option: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As the servers themselves bind: connections of a previous run still in TIME_WAIT
        # (the readiness polls leave some) must not make a port look taken.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((LOOPBACK, port))
        except OSError as error:
            raise LaunchError(
                f"port {port} ({what}) is in use ({error}); choose another with {option}"
            ) from error


def stack_processes(arguments: RunOptions) -> tuple[ManagedProcess, ManagedProcess]:
    """The model server and the gateway of `make run`, writing to this terminal; both get SIGTERM
    if the launcher dies."""
    stack = stack_commands(
        arguments.grpc_port,
        arguments.rest_port,
        arguments.gateway_port,
        arguments.models,
        arguments.model_name,
        arguments.model_config,
        batching_file=DEFAULT_BATCHING_FILE if DEFAULT_BATCHING_FILE.is_file() else None,
        session_config_file=arguments.session_config_file(),
    )
    return (
        ManagedProcess(
            "model server", stack.server.command(), environment=stack.environment, terminate_with_parent=True
        ),
        ManagedProcess(
            "gateway", stack.gateway.command(), environment=stack.environment, terminate_with_parent=True
        ),
    )


def stop(process: ManagedProcess) -> None:
    if process.process is None:
        return
    code, killed = stop_process(process.process)
    if killed:
        print(f"{process.name} did not stop within {STOP_TIMEOUT_SECONDS:.0f} s; killed it", flush=True)
    # uvicorn re-raises the SIGTERM it handled once it has shut down, so -SIGTERM is a clean stop too.
    clean = code in (0, -signal.SIGTERM)
    print(f"{process.name} stopped {'cleanly' if clean else f'with exit code {code}'}", flush=True)


def run(arguments: RunOptions) -> int:
    check_models(arguments.models, arguments.model_name, arguments.model_config)
    check_port_free(arguments.grpc_port, "model server gRPC", "--grpc-port")
    check_port_free(arguments.rest_port, "model server REST", "--rest-port")
    check_port_free(arguments.gateway_port, "gateway", "--gateway-port")
    for stop_signal in STOP_SIGNALS:
        signal.signal(stop_signal, raise_stop)
    gateway_url = f"http://{LOOPBACK}:{arguments.gateway_port}"
    model_server, gateway = stack_processes(arguments)
    model_server.start()
    gateway.start()
    exit_code = 0
    try:
        deadline = time.monotonic() + arguments.ready_timeout
        while not answers_200(f"{gateway_url}/ready"):
            for process in (model_server, gateway):
                if not process.running:
                    raise LaunchError(
                        f"the {process.name} exited with code {process.returncode} (its log is above)"
                    )
            if time.monotonic() > deadline:
                raise LaunchError(
                    f"{gateway_url}/ready did not answer 200 within {arguments.ready_timeout:.0f} s"
                )
            time.sleep(1.0)
        print(
            f"\naidetect is ready: open {gateway_url}/  (API docs: {gateway_url}/docs; Ctrl-C stops)\n",
            flush=True,
        )
        while model_server.running and gateway.running:
            time.sleep(1.0)
        raise LaunchError("a process exited on its own (its log is above)")
    except StopRequestedError as request:
        print(f"\n{request.args[0]}: stopping", flush=True)
    except LaunchError as error:
        print(f"run_local: {error}", file=sys.stderr, flush=True)
        exit_code = 1
    finally:
        # Ignore a second Ctrl-C (or SIGTERM, SIGHUP) while the children finish their shutdown.
        for stop_signal in STOP_SIGNALS:
            signal.signal(stop_signal, signal.SIG_IGN)
        stop(gateway)
        stop(model_server)
    return exit_code


def main(
    gateway_port: Annotated[int, typer.Option(help="gateway HTTP port")] = RunOptions.gateway_port,
    grpc_port: Annotated[int, typer.Option(help="model server gRPC port")] = RunOptions.grpc_port,
    rest_port: Annotated[int, typer.Option(help="model server REST port")] = RunOptions.rest_port,
    models: Annotated[Path, typer.Option(help="folder mapped to /models")] = RunOptions.models,
    model_config: Annotated[Path, typer.Option(help="TF Serving models.config")] = RunOptions.model_config,
    model_name: Annotated[str, typer.Option(help="the model the gateway asks for")] = RunOptions.model_name,
    ready_timeout: Annotated[float, typer.Option(help="wait for /ready, s")] = RunOptions.ready_timeout,
    mixed_precision: Annotated[
        MixedPrecision,
        typer.Option(help="bfloat16 mixed precision (auto: where the CPU has it natively)"),
    ] = RunOptions.mixed_precision,
) -> None:
    """`make run`: the local model server and the gateway on loopback, until Ctrl-C."""
    options = RunOptions(
        gateway_port, grpc_port, rest_port, models, model_config, model_name, ready_timeout, mixed_precision
    )
    try:
        exit_code = run(options)
    except LaunchError as error:
        print(f"run_local: {error}", file=sys.stderr)
        exit_code = 1
    raise typer.Exit(exit_code)


if __name__ == "__main__":
    typer.run(main)
