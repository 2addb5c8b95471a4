"""The load test's settings: one pydantic `Settings`, read from `AIDETECT_LOADTEST_*` environment variables.

`python -m loadtest.run` builds it with :func:`get_settings` and lets its command-line options
override single fields (`make loadtest USERS=20` passes `--users 20`).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from common.model_config import DEFAULT_MODEL_NAME
from common.repository import REPO_ROOT, SERVING_FOLDER, SHARED_UPLOADS

ENV_PREFIX = "AIDETECT_LOADTEST_"
UPLOADS_DIRECTORY = SHARED_UPLOADS
# The target this project promises: 95% of requests answered within 200 ms.
P95_TARGET_MILLISECONDS = 200.0

# Locust user class names (loadtest/locustfile.py).
GATEWAY_USER = "GatewayUser"
GRPC_USER = "GrpcPredictUser"
USER_CLASSES = (GATEWAY_USER, GRPC_USER)


class Settings(BaseSettings):
    """Headless Locust run against the gateway (and the model server); fails on a p95 over the
    limit or any failed request. Every option is also an AIDETECT_LOADTEST_* variable."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=None, extra="ignore",
        cli_kebab_case=True, cli_prog_name="python -m loadtest.run",
    )  # fmt: skip

    # Load shape: simulated users, how many start per second, how long the test runs (Locust's
    # time strings: 90s, 5m, 1h30m).
    users: int = Field(default=10, ge=1)
    spawn_rate: float = Field(default=2.0, gt=0)
    duration: str = Field(default="60s", pattern=r"^(\d+[hms])+$|^\d+$")
    # Think time of each user between two requests, uniform in [min, max] seconds. Zero and zero
    # makes every user send back to back (a closed loop at full speed).
    wait_min_seconds: float = Field(default=0.5, ge=0)
    wait_max_seconds: float = Field(default=1.5, ge=0)
    # Comma-separated in the environment: AIDETECT_LOADTEST_USER_CLASSES=GatewayUser
    user_classes: Annotated[list[str], NoDecode] = Field(default_factory=lambda: list(USER_CLASSES))

    # The system under test. No gateway URL: the local stack (model server + gateway) is started
    # on free loopback ports from `models_directory` and `model_config_file`, and stopped after.
    gateway_url: str | None = None
    # Where the gRPC user sends Predict; with a gateway URL and no address, the gRPC user is skipped.
    model_server_address: str | None = None
    model_name: str = DEFAULT_MODEL_NAME
    # Version label the gRPC user asks for ("" = the latest version), as the gateway does by default.
    version_label: str = "stable"
    models_directory: Path = REPO_ROOT / "models"
    model_config_file: Path = SERVING_FOLDER / "models.config"
    uploads_directory: Path = UPLOADS_DIRECTORY

    # Verdict: the run fails when any request fails or a p95 exceeds this (0 = no latency check).
    p95_limit_milliseconds: float = Field(default=P95_TARGET_MILLISECONDS, ge=0)
    # Reports go to <results_directory>/<UTC timestamp>/.
    results_directory: Path = REPO_ROOT / "results" / "loadtest"
    stack_ready_timeout_seconds: float = Field(default=300.0, gt=0)

    @field_validator("user_classes", mode="before")
    @classmethod
    def split_user_classes(cls, value: object) -> object:
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    @field_validator("user_classes")
    @classmethod
    def check_user_classes(cls, names: list[str]) -> list[str]:
        unknown = sorted(set(names) - set(USER_CLASSES))
        if unknown or not names:
            raise ValueError(f"user classes are some of {', '.join(USER_CLASSES)}; got {names}")
        return names

    @model_validator(mode="after")
    def check_wait(self) -> Settings:
        if self.wait_max_seconds < self.wait_min_seconds:
            raise ValueError("wait_max_seconds must be at least wait_min_seconds")
        return self


@lru_cache
def get_settings() -> Settings:
    """The settings from the environment (cached; the CLI and tests build their own with overrides)."""
    return Settings()
