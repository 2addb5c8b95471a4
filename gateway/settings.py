"""The gateway's settings: one pydantic `Settings`, read from `AIDETECT_GATEWAY_*` environment variables.

Built by :func:`get_settings` (never at import) so tests and `create_app(settings)` can pass their own.
`.env.example` at the repository root lists every variable with its default.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from common.model_config import CANARY_LABEL, DEFAULT_MODEL_NAME, STABLE_LABEL
from common.preprocessing import DEFAULT_MAX_PIXELS
from common.signatures import SERVING_SIGNATURE

ENV_PREFIX = "AIDETECT_GATEWAY_"
MEBIBYTE = 1024 * 1024

# TF Serving accepts labels made of letters, digits, '-' and '_'; the same rule keeps
# user-supplied labels (header / query) out of logs and metric labels when they are odd.
VERSION_LABEL_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class Settings(BaseSettings):
    """The aidetect HTTP gateway: web page, /predict, /predict/batch, /ready, /metrics, /docs.

    Every setting is an AIDETECT_GATEWAY_* environment variable (.env.example lists them),
    overridden by the option of the same name.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=None, extra="ignore",
        cli_kebab_case=True, cli_prog_name="python -m gateway",
    )  # fmt: skip

    # Where the gateway listens (`python -m gateway`). Loopback by default; the container sets 0.0.0.0.
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    log_level: str = "INFO"
    # The HTTP server (`python -m gateway`, uvicorn with the h11 parser, which can bound a
    # request's head): request line + headers at most this many bytes (else 400 and closed)...
    max_request_head_bytes: int = Field(default=64 * 1024, ge=4096)
    # ... and at most this many header fields (else 431).
    max_header_count: int = Field(default=100, ge=16)
    # A connection must send a complete request head this soon after opening (or after its last
    # response), else it is closed: silent and byte-a-second clients do not hold descriptors.
    request_head_timeout_seconds: float = Field(default=10.0, gt=0)
    # An upload's body must arrive within this many seconds in all (20 MiB at ~1.5 Mbit/s), with no
    # pause longer than the idle limit; else 408 and the bytes read so far are dropped.
    request_body_timeout_seconds: float = Field(default=120.0, gt=0)
    request_body_idle_seconds: float = Field(default=15.0, gt=0)
    # Connections and requests in progress at once; beyond, new requests get 503.
    limit_concurrency: int = Field(default=512, ge=8)
    # On SIGTERM, requests in flight get this long to finish; below the pod's grace period (30 s).
    graceful_shutdown_seconds: int = Field(default=20, ge=1)

    # The model server (TF Serving or the local server) and what to ask it for. Any gRPC target:
    # `host:port`, `dns:///tf-serving-headless:8510` (every address the name resolves to), or
    # `ipv4:127.0.0.2:8500,127.0.0.3:8500`; with several addresses, every Predict is balanced over
    # the ready ones by `model_server_load_balancing` (gRPC's `round_robin`, or `pick_first`).
    model_server_address: str = "127.0.0.1:8500"
    model_server_load_balancing: Literal["round_robin", "pick_first"] = "round_robin"
    model_name: str = DEFAULT_MODEL_NAME
    # Version label used when a request pins nothing; "" asks for the latest loaded version.
    version_label: str = STABLE_LABEL
    signature_name: str = SERVING_SIGNATURE
    # Canary: this percentage of unpinned requests goes to `canary_label` instead (0 = off).
    canary_label: str = CANARY_LABEL
    canary_percent: float = Field(default=0.0, ge=0.0, le=100.0)
    # Optional JSON file {"canary_label": ..., "canary_percent": ...} re-read when it changes (a mounted
    # ConfigMap that k8s/rollout.py edits): it then overrides the two settings above at run time.
    canary_file: Path | None = None

    # gRPC: a deadline on every call, retries only on UNAVAILABLE, bounded messages.
    request_timeout_seconds: float = Field(default=10.0, gt=0)
    readiness_timeout_seconds: float = Field(default=2.0, gt=0)
    max_retries: int = Field(default=2, ge=0, le=10)
    retry_backoff_seconds: float = Field(default=0.1, ge=0)
    max_message_bytes: int = Field(default=64 * MEBIBYTE, ge=MEBIBYTE)
    # Signature metadata is cached this long per version label (labels can move).
    metadata_cache_seconds: float = Field(default=30.0, ge=0)
    # Sent as Retry-After with every 503.
    retry_after_seconds: int = Field(default=5, ge=1)

    # Uploads: per-file byte limit (enforced while reading), pixel limit (checked before decoding).
    max_upload_bytes: int = Field(default=20 * MEBIBYTE, ge=1024)
    max_pixels: int = Field(default=DEFAULT_MAX_PIXELS, ge=1)
    max_batch_files: int = Field(default=16, ge=1, le=256)
    # The whole body of POST /predict/batch (all files together).
    max_batch_bytes: int = Field(default=64 * MEBIBYTE, ge=1024)
    # Threads that decode images off the event loop (Pillow releases the GIL while decoding);
    # one more decodes large images (gateway/uploads.py).
    decode_threads: int = Field(default=2, ge=1, le=64)
    # Memory all decodes in progress may hold, estimated from headers: a 50-megapixel image needs
    # ~420 MiB, so one such image and several small ones fit; with the gateway's own ~300 MiB this
    # stays under the pod's 1,536 MiB limit (docs/reliability.md). Over it: 503 + Retry-After.
    decode_memory_budget_bytes: int = Field(default=768 * MEBIBYTE, ge=16 * MEBIBYTE)
    # Upload bytes all requests may hold together while they are read and answered (a stalled
    # batch upload holds up to max_batch_bytes until its deadline). Over it: 503 + Retry-After.
    upload_memory_budget_bytes: int = Field(default=256 * MEBIBYTE, ge=MEBIBYTE)

    # Read what the upload's own metadata says about its origin (C2PA, IPTC/XMP, EXIF, generator
    # parameters: gateway/provenance.py). Off: the pixel score alone decides, and the answer says so.
    read_provenance: bool = True

    # A folder of `<version>/model_card.json` (the model's base path, when the gateway can see it):
    # GET /v1/model then includes the card. Optional; TF Serving does not serve assets over gRPC.
    model_card_directory: Path | None = None

    # Security, off by default for local use: API keys (header X-API-Key) and per-client rate limits.
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    rate_limit_per_minute: float = Field(default=0.0, ge=0.0)
    rate_limit_burst: int = Field(default=10, ge=1)
    # Where the limits' counters live: "" (this process) or a Redis URL (redis://host:6379/0)
    # that every gateway replica shares, so the limit holds whatever the replica count.
    rate_limit_storage_url: str = ""
    # Behind a proxy (the ingress): the addresses or networks (CIDR) of the proxies trusted to set
    # X-Forwarded-For. From a trusted peer, the client is the right-most address that is not a
    # trusted proxy (uvicorn's ProxyHeadersMiddleware), so entries a client forges on the left
    # change nothing. Empty: the header is ignored and the peer address is the client.
    forwarded_allow_ips: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator("api_keys", "forwarded_allow_ips", mode="before")
    @classmethod
    def split_comma_separated(cls, value: object) -> object:
        # AIDETECT_GATEWAY_API_KEYS="key-one,key-two": a comma-separated list is easier to set than JSON.
        # A value that is set but holds no item (" , ") is refused below, never read as "off".
        if isinstance(value, str):
            if value.strip() and not value.replace(",", "").strip():
                raise ValueError("the list holds only commas and blanks: leave it empty to turn it off")
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("forwarded_allow_ips")
    @classmethod
    def check_networks(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError as error:
                raise ValueError(f"forwarded_allow_ips: {value!r} is not an IP address or network") from error
        return values

    @field_validator("canary_file", "model_card_directory", mode="before")
    @classmethod
    def empty_path_is_none(cls, value: object) -> object:
        # `AIDETECT_GATEWAY_CANARY_FILE=` (as in .env.example) means "not set", not the current folder.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("version_label", "canary_label")
    @classmethod
    def check_label(cls, value: str) -> str:
        if value and not VERSION_LABEL_PATTERN.match(value):
            raise ValueError(f"version labels are letters, digits, '-' and '_', got {value!r}")
        return value

    @field_validator("api_keys")
    @classmethod
    def refuse_short_keys(cls, keys: list[str]) -> list[str]:
        short = [key for key in keys if len(key) < 16]
        if short:
            raise ValueError(f"{len(short)} API key(s) shorter than 16 characters: use long random keys")
        return keys

    @model_validator(mode="after")
    def check_canary(self) -> Settings:
        if self.canary_percent > 0 and self.canary_label == self.version_label:
            raise ValueError("canary_label must differ from version_label when canary_percent > 0")
        return self

    @property
    def canary_enabled(self) -> bool:
        return self.canary_percent > 0

    @property
    def api_keys_enabled(self) -> bool:
        return bool(self.api_keys)

    @property
    def rate_limit_enabled(self) -> bool:
        return self.rate_limit_per_minute > 0


@lru_cache
def get_settings() -> Settings:
    """The process's settings from the environment (cached; tests pass their own to create_app)."""
    return Settings()
