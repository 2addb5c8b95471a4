"""FastAPI dependencies: the app's long-lived objects (made in the lifespan), as Annotated aliases.

Every dependency is `async def`, even those that only read an attribute: FastAPI runs a plain
`def` dependency in its thread pool, one thread hop per dependency per request (eight on
`POST /predict`), which a profile of the gateway under load showed as its largest framework cost.

Tests replace the model client with `app.dependency_overrides[get_model_client]`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Header, Query, Request

from common import model_versions
from gateway.errors import InvalidParameterError
from gateway.metrics import GatewayMetrics, StageTimings
from gateway.model_client import ModelClient, Routing
from gateway.settings import VERSION_LABEL_PATTERN, Settings
from gateway.traffic import CanarySplit, CanarySplitSource
from gateway.uploads import ImageDecoder, UploadHold
from gateway.verdict import BandSource

# TF Serving's version numbers are int64: a larger one cannot even be put in the request.
MAX_MODEL_VERSION = 2**63 - 1


async def get_settings_of_app(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_model_client(request: Request) -> ModelClient:
    client: ModelClient = request.app.state.model_client
    return client


async def get_decoder(request: Request) -> ImageDecoder:
    decoder: ImageDecoder = request.app.state.decoder
    return decoder


async def get_metrics(request: Request) -> GatewayMetrics:
    metrics: GatewayMetrics = request.app.state.metrics
    return metrics


async def get_bands(request: Request) -> BandSource:
    bands: BandSource = request.app.state.bands
    return bands


async def get_canary_split(request: Request) -> CanarySplit:
    source: CanarySplitSource = request.app.state.canary_split
    return source.current()


async def get_upload_hold(request: Request) -> AsyncIterator[UploadHold]:
    """The request's share of the upload budget, given back once the request is answered."""
    settings: Settings = request.app.state.settings
    hold = UploadHold(request.app.state.upload_budget, settings.retry_after_seconds)
    try:
        yield hold
    finally:
        hold.release()


async def get_timings(request: Request) -> StageTimings:
    # Made per request by the request-context middleware, which logs them at the end.
    timings: StageTimings = request.state.timings
    return timings


SettingsDep = Annotated[Settings, Depends(get_settings_of_app)]
ModelClientDep = Annotated[ModelClient, Depends(get_model_client)]
DecoderDep = Annotated[ImageDecoder, Depends(get_decoder)]
MetricsDep = Annotated[GatewayMetrics, Depends(get_metrics)]
TimingsDep = Annotated[StageTimings, Depends(get_timings)]
CanarySplitDep = Annotated[CanarySplit, Depends(get_canary_split)]
UploadHoldDep = Annotated[UploadHold, Depends(get_upload_hold)]
BandsDep = Annotated[BandSource, Depends(get_bands)]
ExplainDep = Annotated[
    bool,
    Query(
        description="also answer where the model looked: a heatmap from the model's explain signature "
        "(65 network passes per image: seconds on a CPU), off by default"
    ),
]


async def get_routing(
    settings: SettingsDep,
    split: CanarySplitDep,
    version: Annotated[int | None, Query(ge=1, description="pin a model version number")] = None,
    label: Annotated[str | None, Query(description="pin a version label, e.g. 'stable' or 'canary'")] = None,
    x_model_version: Annotated[
        str | None, Header(description="pin a version number or label (same as the query parameters)")
    ] = None,
) -> Routing:
    """Where a request goes: pinned by header/query, else settings' label or, by the image's
    bytes, the canary (Routing.target)."""
    if x_model_version:
        pinned = x_model_version.strip()
        if model_versions.is_version_name(pinned):  # not "²": str.isdigit() is true for it, int() fails
            if label or (version is not None and version != int(pinned)):
                raise InvalidParameterError("X-Model-Version and the query pin different model versions")
            version = int(pinned)
        else:
            if version is not None or (label and label != pinned):
                raise InvalidParameterError("X-Model-Version and the query pin different model versions")
            label = pinned
    if version is not None and label:
        raise InvalidParameterError("pin either a model version or a version label, not both")
    if version is not None and not 1 <= version <= MAX_MODEL_VERSION:
        raise InvalidParameterError(
            f"model versions are integers from 1 to {MAX_MODEL_VERSION}, got {version}"
        )
    if label and not VERSION_LABEL_PATTERN.match(label):
        raise InvalidParameterError("version labels are 1-64 letters, digits, '-' or '_'")
    return Routing(settings, split, version=version, label=label or None)


RoutingDep = Annotated[Routing, Depends(get_routing)]
