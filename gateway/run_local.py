"""`make run`: the local model server and the gateway on loopback, until Ctrl-C.

    python -m gateway.run_local [--gateway-port 8000] [--grpc-port 8500] [--rest-port 8501]
                                [--models ./models] [--model-config serving/models.config]

Starts `python -m serving.server` with `serving/models.config` (its `/models/...` base paths
mapped onto the repository's `models/` folder, the local server's one deviation from the
production container) and `python -m gateway` pointed at it; waits until the gateway's /ready
answers 200; prints the URL. Ctrl-C, SIGTERM or SIGHUP (the terminal closed) stops the gateway,
then the model server, and waits for both; further signals meanwhile are ignored. If the launcher
itself is killed, the kernel sends both children SIGTERM (Linux's parent-death signal), so no
server outlives it. Exits 1 when either cannot start, showing why.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType

from common import model_versions
from common.repository import REPO_ROOT

LOOPBACK = "127.0.0.1"
READY_TIMEOUT_SECONDS = 300.0  # TensorFlow imports and a model load on a small, shared CPU
STOP_TIMEOUT_SECONDS = 30.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class LaunchError(RuntimeError):
    """Something prevents the local stack from starting; the message says what to do."""


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m gateway.run_local", description=__doc__.split("\n\n")[0])
    parser.add_argument("--gateway-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8500, help="model server gRPC port")
    parser.add_argument("--rest-port", type=int, default=8501, help="model server REST port")
    parser.add_argument("--models", type=Path, default=REPO_ROOT / "models", help="folder mapped to /models")
    parser.add_argument("--model-config", type=Path, default=REPO_ROOT / "serving" / "models.config")
    parser.add_argument("--model-name", default="ai_detector")
    parser.add_argument("--ready-timeout", type=float, default=READY_TIMEOUT_SECONDS)
    return parser.parse_args(argv)


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


def check_models(models: Path, model_name: str, config: Path) -> None:
    if not config.is_file():
        raise LaunchError(f"model config {config} not found")
    model_folder = models / model_name
    if not model_versions.versions(model_folder):
        raise LaunchError(f"no model version in {model_folder}: export one first (see export/README.md)")


def model_server_command(arguments: argparse.Namespace) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "serving.server",
        f"--host={LOOPBACK}",
        f"--port={arguments.grpc_port}",
        f"--rest_api_port={arguments.rest_port}",
        f"--model_config_file={arguments.model_config}",
        f"--model_base_path_prefix_map=/models={arguments.models.resolve()}",
    ]
    batching = REPO_ROOT / "serving" / "batching.cpu.config"
    if batching.is_file():
        command += ["--enable_batching", f"--batching_parameters_file={batching}"]
    monitoring = REPO_ROOT / "serving" / "monitoring.config"
    if monitoring.is_file():
        command.append(f"--monitoring_config_file={monitoring}")
    return command


def gateway_command(arguments: argparse.Namespace) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gateway",
        f"--host={LOOPBACK}",
        f"--port={arguments.gateway_port}",
        f"--model-server={LOOPBACK}:{arguments.grpc_port}",
    ]


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _terminate_with_parent(parent: int) -> None:
    """In the child, before exec: SIGTERM when the launcher dies, however it dies (SIGKILL too)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0 or os.getppid() != parent:
        os._exit(1)  # no parent-death signal, or the launcher is already gone: do not start


def start(command: list[str], environment: dict[str, str]) -> subprocess.Popen[bytes]:
    # A session of its own: Ctrl-C reaches only this launcher, which then stops the children in order.
    parent = os.getpid()
    return subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env=environment,
        start_new_session=True,
        preexec_fn=(lambda: _terminate_with_parent(parent)) if sys.platform == "linux" else None,
    )


def stop(process: subprocess.Popen[bytes], name: str) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            print(f"{name} did not stop within {STOP_TIMEOUT_SECONDS:.0f} s; killing it", flush=True)
            process.kill()
            process.wait()
    # uvicorn re-raises the SIGTERM it handled once it has shut down, so -SIGTERM is a clean stop too.
    clean = process.returncode in (0, -signal.SIGTERM)
    print(f"{name} stopped {'cleanly' if clean else f'with exit code {process.returncode}'}", flush=True)


def is_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class StopRequestedError(Exception):
    """Ctrl-C or SIGTERM arrived."""


def raise_stop(signal_number: int, frame: FrameType | None) -> None:
    raise StopRequestedError(signal.Signals(signal_number).name)


def run(arguments: argparse.Namespace) -> int:
    check_models(arguments.models, arguments.model_name, arguments.model_config)
    check_port_free(arguments.grpc_port, "model server gRPC", "--grpc-port")
    check_port_free(arguments.rest_port, "model server REST", "--rest-port")
    check_port_free(arguments.gateway_port, "gateway", "--gateway-port")
    environment = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
        # The gateway can read the model cards here (GET /v1/model shows them).
        "AIDETECT_GATEWAY_MODEL_CARD_DIRECTORY": str((arguments.models / arguments.model_name).resolve()),
        "AIDETECT_GATEWAY_MODEL_NAME": arguments.model_name,
    }
    for stop_signal in STOP_SIGNALS:
        signal.signal(stop_signal, raise_stop)
    gateway_url = f"http://{LOOPBACK}:{arguments.gateway_port}"
    model_server = start(model_server_command(arguments), environment)
    gateway = start(gateway_command(arguments), environment)
    exit_code = 0
    try:
        deadline = time.monotonic() + arguments.ready_timeout
        while not is_ready(f"{gateway_url}/ready"):
            for process, name in ((model_server, "model server"), (gateway, "gateway")):
                if process.poll() is not None:
                    raise LaunchError(f"the {name} exited with code {process.returncode} (its log is above)")
            if time.monotonic() > deadline:
                raise LaunchError(
                    f"{gateway_url}/ready did not answer 200 within {arguments.ready_timeout:.0f} s"
                )
            time.sleep(1.0)
        print(
            f"\naidetect is ready: open {gateway_url}/  (API docs: {gateway_url}/docs; Ctrl-C stops)\n",
            flush=True,
        )
        while model_server.poll() is None and gateway.poll() is None:
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
        stop(gateway, "gateway")
        stop(model_server, "model server")
    return exit_code


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    try:
        return run(arguments)
    except LaunchError as error:
        print(f"run_local: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
