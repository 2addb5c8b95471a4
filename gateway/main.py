"""The gateway app: `create_app(settings=None)`, its lifespan, and the per-request context.

Run it with `python -m gateway` (configures logging once, then uvicorn) or
`uvicorn --factory gateway.main:create_app`. Nothing happens at import: the gRPC channel and the
decoding threads are made in the lifespan, kept on `app.state`, and closed on shutdown.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import quote

import swagger_ui_bundle
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from gateway import api
from gateway.errors import register_error_handlers
from gateway.metrics import GatewayMetrics, StageTimings
from gateway.model_client import CURRENT_REQUEST_ID, ModelClient
from gateway.security import AccessControl
from gateway.settings import Settings, get_settings
from gateway.traffic import CanarySplitSource
from gateway.uploads import ImageDecoder, MemoryBudget
from gateway.verdict import BandSource

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("gateway.access")

REQUEST_ID_HEADER = "x-request-id"
# A caller's request id is reused only when it is short and plain (it ends up in logs).
REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
DOCS_ASSETS_PATH = "/docs-assets"


def loggable_path(path: str) -> str:
    """The request path percent-encoded again for the log: a `%0A` a client sends decodes to a
    newline, which would start a forged log line; spaces, controls and non-ASCII are encoded too."""
    return quote(path, safe="/:@!$&'()*+,;=-._~")


class RequestContextMiddleware:
    """Request id (reused from x-request-id or made), in-flight gauge, request counter, and the one
    latency line per request with its stage timings."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics, max_header_count: int = 100) -> None:
        self.app = app
        self.metrics = metrics
        self.max_header_count = max_header_count

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if len(scope["headers"]) > self.max_header_count:
            response = JSONResponse(
                {"success": False, "error": f"too many header fields: at most {self.max_header_count}"},
                status_code=431,
            )
            await response(scope, receive, send)
            self.metrics.observe_request("unmatched", 431)
            return
        incoming = dict(scope["headers"]).get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1")
        request_id = incoming if REQUEST_ID_PATTERN.match(incoming) else uuid.uuid4().hex
        timings = StageTimings(self.metrics)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        request_id_token = CURRENT_REQUEST_ID.set(request_id)  # sent to the model server (gRPC metadata)
        state["timings"] = timings
        status_code = 500  # unless a response starts: an exception escaped the handlers

        async def send_with_request_id(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
                MutableHeaders(scope=message).append(REQUEST_ID_HEADER, request_id)
            await send(message)

        started = time.perf_counter()
        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_request_id)
        finally:
            CURRENT_REQUEST_ID.reset(request_id_token)
            self.metrics.in_flight.dec()
            elapsed = time.perf_counter() - started
            if timings.seconds:  # a prediction route: its stages were timed
                timings.record("total", elapsed)
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.observe_request(route, status_code)
            access_logger.info(
                "request_id=%s method=%s path=%s status=%d duration_ms=%.1f %s",
                request_id,
                scope["method"],
                loggable_path(scope["path"]),
                status_code,
                elapsed * 1000,
                timings.summary(),
            )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    metrics = GatewayMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = ModelClient(settings, metrics)
        await client.start()
        decoder = ImageDecoder(
            threads=settings.decode_threads,
            max_pixels=settings.max_pixels,
            memory_budget_bytes=settings.decode_memory_budget_bytes,
            retry_after_seconds=settings.retry_after_seconds,
            read_provenance=settings.read_provenance,
        )
        app.state.model_client = client
        app.state.decoder = decoder
        app.state.canary_split.start()
        logger.info(
            "gateway up: model server %s, model %r, label %r, signature %r, canary %s",
            settings.model_server_address,
            settings.model_name,
            settings.version_label or "(latest)",
            settings.signature_name,
            f"from {settings.canary_file}"
            if settings.canary_file
            else f"{settings.canary_percent:g}% -> {settings.canary_label!r}"
            if settings.canary_enabled
            else "off",
        )
        logger.info(
            "security: API keys %s, rate limit %s, X-Forwarded-For %s, decode memory budget %d MiB",
            f"on ({len(settings.api_keys)})" if settings.api_keys_enabled else "off",
            f"{settings.rate_limit_per_minute:g}/min burst {settings.rate_limit_burst}"
            if settings.rate_limit_enabled
            else "off",
            f"trusted from {','.join(settings.forwarded_allow_ips)}"
            if settings.forwarded_allow_ips
            else "ignored",
            settings.decode_memory_budget_bytes >> 20,
        )
        try:
            yield
        finally:
            await client.close()
            decoder.close()
            app.state.canary_split.close()

    app = FastAPI(
        title="aidetect gateway",
        summary="Is this image AI-generated? Upload it.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # served below from local files: no CDN is reachable
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.access_control = AccessControl(settings, metrics)
    app.state.canary_split = CanarySplitSource(settings)
    metrics.canary_percent.set_function(lambda: app.state.canary_split.current().percent)
    app.state.upload_budget = MemoryBudget(settings.upload_memory_budget_bytes)
    app.state.bands = BandSource(settings.model_card_directory)
    register_error_handlers(app)
    app.include_router(api.router)
    app.mount("/static", StaticFiles(directory=api.STATIC_DIRECTORY), name="static")
    app.mount(DOCS_ASSETS_PATH, StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API",
            swagger_js_url=f"{DOCS_ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS_PATH}/favicon-32x32.png",
        )

    app.add_middleware(RequestContextMiddleware, metrics=metrics, max_header_count=settings.max_header_count)
    if settings.forwarded_allow_ips:
        # Outermost, so the rate limits and the access log see the client, not the proxy.
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.forwarded_allow_ips)
    return app
