"""Settings of the local model server: environment (MODEL_SERVER_*) overridden by the command line.

Field names are TF Serving's flag names wherever TF Serving has the setting, so
`--rest_api_port=8501` and `MODEL_SERVER_REST_API_PORT=8501` mean the same thing. The
fields without a TF Serving flag are ours: `host`, `enable_reload_config_rpc`,
`model_base_path_prefix_map`, `grpc_max_message_bytes`, `shutdown_grace_seconds` and
`log_level`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MODEL_SERVER_", extra="forbid")

    # TF Serving's flags.
    port: int = Field(8500, ge=0, le=65535, description="gRPC port")
    rest_api_port: int = Field(
        8501, ge=0, le=65535, description="REST port; 0 disables REST (as in TF Serving)"
    )
    model_config_file: Path | None = None
    model_config_file_poll_wait_seconds: float = Field(0, ge=0, description="0: read the config file once")
    model_name: str = "default"
    model_base_path: str = ""
    file_system_poll_wait_seconds: float = Field(1, ge=0, description="0: scan base paths once")
    enable_batching: bool = False
    batching_parameters_file: Path | None = None
    monitoring_config_file: Path | None = None
    enable_model_warmup: bool = True
    num_request_iterations_for_warmup: int = Field(1, ge=1)
    max_num_load_retries: int = Field(5, ge=0)
    load_retry_interval_micros: int = Field(60_000_000, ge=0)
    num_load_threads: int = Field(1, ge=0, description="0 means 1 here")
    allow_version_labels_for_unavailable_models: bool = False
    tensorflow_intra_op_parallelism: int = Field(0, ge=0, description="0: one thread per core")
    tensorflow_inter_op_parallelism: int = Field(0, ge=0, description="0: TensorFlow's choice")
    grpc_max_threads: int = Field(64, ge=1)
    enable_grpc_healthcheck_service: bool = True
    enable_serialization_as_tensor_content: bool = False
    ssl_config_file: Path | None = Field(
        None, description="TF Serving's SSLConfig text proto: TLS for gRPC, mutual with client_verify"
    )
    tensorflow_session_config_file: Path | None = Field(
        None,
        description="a text ConfigProto for every model's TensorFlow session (e.g. graph rewrite "
        "options such as auto mixed precision), as TF Serving reads it",
    )
    grpc_socket_path: str = Field("", description="also serve gRPC on this Unix domain socket")
    grpc_channel_arguments: str = Field(
        "", description="gRPC server arguments, key=value[,key=value...] (integers where they parse)"
    )
    rest_api_timeout_in_ms: int = Field(30_000, ge=0, description="REST request deadline; 0: none")

    # Ours.
    host: str = Field(
        "127.0.0.1", description="address both servers bind: loopback unless a deployment says otherwise"
    )
    enable_reload_config_rpc: bool = Field(
        False,
        description="accept HandleReloadConfigRequest (off: PERMISSION_DENIED; edit the config file instead)",
    )
    model_base_path_prefix_map: str = Field(
        "",
        description="PREFIX=FOLDER[,...]: read base paths under PREFIX from FOLDER (e.g. /models=./models)",
    )
    grpc_max_message_bytes: int = Field(64 * 1024 * 1024, ge=4 * 1024 * 1024)
    shutdown_grace_seconds: float = Field(30, ge=0)
    log_level: str = "INFO"

    @field_validator("log_level")
    @classmethod
    def _known_log_level(cls, value: str) -> str:
        value = value.upper()
        if value not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError(f"unknown log level {value!r}")
        return value


def get_settings(**overrides: Any) -> ServerSettings:
    """Settings from the environment, then `overrides` (the command line, or a test)."""
    return ServerSettings(**overrides)
