"""The local model server: TF Serving's gRPC and REST APIs in one process (ARCHITECTURE.md contract 4).

    python -m serving.server --model_config_file=serving/models.config \\
        --model_base_path_prefix_map=/models=./models --port=8500 --rest_api_port=8501 \\
        --enable_batching --batching_parameters_file=serving/batching.cpu.config \\
        --monitoring_config_file=serving/monitoring.config

Flags use TF Serving's names (`--flag=value` or `--flag value`; booleans also bare). SIGTERM
or SIGINT stops accepting requests, lets the ones in flight finish (up to
--shutdown_grace_seconds) and exits 0. The process exits 1 when the first config cannot be
served (e.g. a label on a version that does not load), as TF Serving refuses to start.
See serving/README.md for what is implemented and what is not.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from common import model_config
from common.logs import configure_logging
from serving.batching import BatchingOptions, BatchScheduler
from serving.grpc_api import HealthReporter, create_grpc_server, server_credentials
from serving.metrics import ServerMetrics, prometheus_path_from_monitoring_config
from serving.model_manager import ModelManager
from serving.rest_api import create_rest_app
from serving.runtime import RuntimeFactory, configure_tensorflow_threads, load_runtime, read_session_config
from serving.server_config import parse_prefix_map, validate_config
from serving.settings import ServerSettings, get_settings

logger = logging.getLogger("serving.server")


class StartupError(RuntimeError):
    """The server cannot start: bad flags or config files, or a port that is taken."""


def initial_model_config(settings: ServerSettings) -> tuple[model_config.ModelServerConfig, str]:
    """The first config and the config file's text.

    From --model_config_file, else from --model_name and --model_base_path."""
    if settings.model_config_file is not None:
        try:
            text = settings.model_config_file.read_text()
            config = model_config.parse(text)
        except (OSError, model_config.ModelConfigError) as error:
            raise StartupError(
                f"cannot read the model config file {settings.model_config_file}: {error}"
            ) from error
        return config, text
    if settings.model_base_path:
        return model_config.new_config(settings.model_name, settings.model_base_path), ""
    raise StartupError("give --model_config_file, or --model_base_path (with --model_name)")


class _RestServer:
    """uvicorn in a thread of its own (it installs no signal handlers off the main thread)."""

    def __init__(self, app: Any, host: str, port: int, grace_seconds: float) -> None:
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=max(1, int(grace_seconds)),
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="rest", daemon=True)

    def start(self) -> None:
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise StartupError("the REST server did not start (is the port taken?)")
            time.sleep(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.ident is not None:
            self._thread.join()


class ModelServer:
    """gRPC + REST + model manager + batching, started and stopped together."""

    def __init__(self, settings: ServerSettings, runtime_factory: RuntimeFactory = load_runtime) -> None:
        self.settings = settings
        self.metrics = ServerMetrics()
        self.fatal_error: Exception | None = None
        self.stopped = threading.Event()
        self._config, self._config_text = initial_model_config(settings)
        try:
            validate_config(self._config)
            if settings.tensorflow_session_config_file is not None and runtime_factory is load_runtime:
                runtime_factory = partial(
                    load_runtime, session_config=read_session_config(settings.tensorflow_session_config_file)
                )
            prefix_map = parse_prefix_map(settings.model_base_path_prefix_map)
            batching = (
                BatchingOptions.from_file(settings.batching_parameters_file)
                if settings.batching_parameters_file
                else BatchingOptions()
            )
            credentials = (
                server_credentials(settings.ssl_config_file.read_text()) if settings.ssl_config_file else None
            )
            prometheus_path = (
                prometheus_path_from_monitoring_config(settings.monitoring_config_file.read_text())
                if settings.monitoring_config_file
                else None
            )
        except Exception as error:  # any bad flag or file ends the start, with its message
            raise StartupError(str(error)) from error
        self.batch_scheduler = BatchScheduler(batching, self.metrics) if settings.enable_batching else None
        self.manager = ModelManager(
            runtime_factory=runtime_factory,
            metrics=self.metrics,
            prefix_map=prefix_map,
            batch_scheduler=self.batch_scheduler,
            enable_warmup=settings.enable_model_warmup,
            warmup_iterations=settings.num_request_iterations_for_warmup,
            max_load_retries=settings.max_num_load_retries,
            load_retry_interval_seconds=settings.load_retry_interval_micros / 1e6,
            allow_labels_for_unavailable_models=settings.allow_version_labels_for_unavailable_models,
            file_system_poll_seconds=settings.file_system_poll_wait_seconds,
            load_threads=settings.num_load_threads,
        )
        self.health = HealthReporter(self.manager)
        self.manager.add_listener(self.health.update)
        try:
            self._grpc_server = create_grpc_server(
                self.manager,
                self.metrics,
                self.health,
                address=f"{settings.host}:{settings.port}",
                max_message_bytes=settings.grpc_max_message_bytes,
                max_threads=settings.grpc_max_threads,
                as_tensor_content=settings.enable_serialization_as_tensor_content,
                allow_reload=settings.enable_reload_config_rpc,
                credentials=credentials,
                channel_arguments=settings.grpc_channel_arguments,
                socket_path=settings.grpc_socket_path,
            )
        except (RuntimeError, ValueError) as error:
            raise StartupError(str(error)) from error
        self._rest_server = (
            _RestServer(
                create_rest_app(
                    self.manager,
                    self.metrics,
                    prometheus_path,
                    settings.grpc_max_message_bytes,
                    settings.rest_api_timeout_in_ms / 1000 if settings.rest_api_timeout_in_ms else None,
                ),
                settings.host,
                settings.rest_api_port,
                settings.shutdown_grace_seconds,
            )
            if settings.rest_api_port
            else None
        )
        self._batching_options = batching

    def start(self) -> None:
        configure_tensorflow_threads(
            self.settings.tensorflow_intra_op_parallelism, self.settings.tensorflow_inter_op_parallelism
        )
        if self.batch_scheduler is not None:
            logger.info("Batching on: %s", self._batching_options)
            self.batch_scheduler.start()
        # Models first, ports after: a client that connects early hears UNAVAILABLE (loading).
        self.manager.start(
            self._config,
            on_fatal=self._fail,
            config_file=self.settings.model_config_file,
            config_file_text=self._config_text,
            config_file_poll_seconds=self.settings.model_config_file_poll_wait_seconds,
        )
        self.manager.wait_until_registered()
        self._grpc_server.start()
        logger.info("Running gRPC ModelServer at %s:%d ...", self.settings.host, self.settings.port)
        if self._rest_server is not None:
            self._rest_server.start()
            logger.info(
                "Exporting HTTP/REST API at %s:%d ...", self.settings.host, self.settings.rest_api_port
            )

    def _fail(self, error: Exception) -> None:
        logger.error("Failed to start server. Error: %s", error)
        self.fatal_error = error
        self.stopped.set()

    def stop(self) -> None:
        """Stop accepting, let requests in flight finish (grace period), then free everything."""
        logger.info(
            "Shutting down: finishing requests in flight (grace %.0f s)", self.settings.shutdown_grace_seconds
        )
        self.health.shut_down()
        grpc_stopped = self._grpc_server.stop(self.settings.shutdown_grace_seconds)
        if self._rest_server is not None:
            self._rest_server.stop()
        grpc_stopped.wait()
        if self.batch_scheduler is not None:
            self.batch_scheduler.stop()
        self.manager.stop()
        logger.info("Server stopped")


# ---------------------------------------------------------------- command line


def _boolean(text: str) -> bool:
    lowered = text.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {text!r}")


TF_SERVING_FLAGS_FILE = Path(__file__).with_name("tf_serving_flags.txt")
# TF Serving flags this server cannot honour when they are switched on: refused, with the reason.
CANNOT_APPLY = {"prefer_tflite_model": "TFLite models are outside the local model server's surface"}
WITHOUT_EFFECT = "ignored:"  # argparse dest prefix of the flags accepted without a local effect


def _flags_file_version() -> str:
    for line in TF_SERVING_FLAGS_FILE.read_text().splitlines():
        if line.startswith("# version:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def tf_serving_flags() -> list[str]:
    """Every flag of the pinned TF Serving version (serving/tf_serving_flags.txt)."""
    lines = TF_SERVING_FLAGS_FILE.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def argument_parser() -> argparse.ArgumentParser:
    """TF Serving's whole flag set: the settings' fields, and every other TF Serving flag accepted
    (logged as without local effect, e.g. GPU memory or TPU options), so TF Serving's command lines
    run here unchanged."""
    parser = argparse.ArgumentParser(
        prog="python -m serving.server",
        description="TF-Serving-compatible local model server (gRPC + REST). Flags as TF Serving's.",
        allow_abbrev=False,
    )
    defaults = ServerSettings.model_fields
    for name, field in defaults.items():
        annotation = field.annotation
        help_text = field.description or ""
        if annotation is bool:
            parser.add_argument(
                f"--{name}", type=_boolean, nargs="?", const=True, default=None, help=help_text
            )
        else:
            parser.add_argument(f"--{name}", default=None, help=help_text)
    for name in tf_serving_flags():
        if name not in defaults:
            refused = f" (refused when on: {CANNOT_APPLY[name]})" if name in CANNOT_APPLY else ""
            parser.add_argument(
                f"--{name}", dest=WITHOUT_EFFECT + name, nargs="?", const="true", default=None,
                help=f"TF Serving's flag, without effect on the local server{refused}",
            )  # fmt: skip
    return parser


@dataclass(frozen=True)
class CommandLine:
    overrides: dict[str, Any]  # settings given on the command line (the environment keeps the rest)
    without_effect: dict[str, str]  # TF Serving flags accepted that mean nothing here


def parse_command_line(argv: Sequence[str] | None) -> CommandLine:
    parser = argument_parser()
    given = {name: value for name, value in vars(parser.parse_args(argv)).items() if value is not None}
    without_effect = {
        name.removeprefix(WITHOUT_EFFECT): value
        for name, value in given.items()
        if name.startswith(WITHOUT_EFFECT)
    }
    for name, value in without_effect.items():
        if name in CANNOT_APPLY and value.lower() not in {"0", "false", "no", "off"}:
            parser.error(f"--{name}={value}: {CANNOT_APPLY[name]}")
    overrides = {name: value for name, value in given.items() if not name.startswith(WITHOUT_EFFECT)}
    return CommandLine(overrides, without_effect)


def parse_arguments(argv: Sequence[str] | None) -> dict[str, Any]:
    """Only the settings given, so the environment keeps the rest."""
    return parse_command_line(argv).overrides


def main(argv: Sequence[str] | None = None) -> int:
    command_line = parse_command_line(argv)
    try:
        settings = get_settings(**command_line.overrides)
    except ValueError as error:
        print(f"invalid settings: {error}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, stream=sys.stderr)  # TF Serving logs to stderr
    if "version" in command_line.without_effect:  # TF Serving prints its version and exits
        print(
            f"TensorFlow ModelServer: aidetect's local model server, TF Serving {_flags_file_version()} flags"
        )
        return 0
    for name, value in command_line.without_effect.items():
        logger.warning(
            "--%s=%s: accepted (a TF Serving flag) but without effect on the local server", name, value
        )
    stop_requested = threading.Event()

    def request_stop(signal_number: int, frame: FrameType | None) -> None:
        logger.info("Received %s", signal.Signals(signal_number).name)
        stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        server = ModelServer(settings)
    except StartupError as error:
        logger.error("Failed to start server. Error: %s", error)
        return 1
    try:
        server.start()
    except StartupError as error:
        logger.error("Failed to start server. Error: %s", error)
        server.stop()
        return 1
    while not (stop_requested.is_set() or server.stopped.is_set()):
        stop_requested.wait(0.5)
    server.stop()
    return 1 if server.fatal_error is not None else 0


if __name__ == "__main__":
    sys.exit(main())
