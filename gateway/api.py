"""The gateway's HTTP routes (ARCHITECTURE.md contract 5). No status-code plumbing here: errors are
raised as typed exceptions and mapped to statuses in gateway/errors.py.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path, PureWindowsPath
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, Response

from common import model_card
from common.preprocessing import ImageInputError
from gateway.dependencies import (
    BandsDep,
    CanarySplitDep,
    DecoderDep,
    ExplainDep,
    MetricsDep,
    ModelClientDep,
    RoutingDep,
    SettingsDep,
    TimingsDep,
    UploadHoldDep,
)
from gateway.errors import GatewayError, NotReadyError, ServerBusyError, UploadTooLargeError, status_for
from gateway.explain import explanation
from gateway.metrics import CONTENT_TYPE, GatewayMetrics, StageTimings
from gateway.model_client import ModelClient, ModelTarget, Prediction, PredictionBatch
from gateway.schemas import (
    ERROR_RESPONSES,
    BatchItem,
    BatchPredictionResponse,
    Explanation,
    HealthResponse,
    ModelInfoResponse,
    PredictionResponse,
    ProvenanceFinding,
    ReadyResponse,
)
from gateway.security import enforce_access
from gateway.settings import Settings
from gateway.uploads import (
    DecodedImage,
    ImageDecoder,
    UploadedFile,
    UploadHold,
    max_body_bytes,
    read_multipart_files,
)
from gateway.verdict import Band, BandSource, decide

logger = logging.getLogger(__name__)

STATIC_DIRECTORY = Path(__file__).resolve().parent / "static"
SINGLE_FILE_FIELD = "file"
BATCH_FILE_FIELDS = ("files", "file")
MAX_FILENAME_CHARACTERS = 255

router = APIRouter()


def multipart_body(field: str, multiple: bool) -> dict[str, Any]:
    """OpenAPI request body of a multipart upload (the routes read the stream themselves, for limits)."""
    file_schema: dict[str, Any] = {"type": "string", "format": "binary"}
    schema = {"type": "array", "items": file_schema} if multiple else file_schema
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "required": [field], "properties": {field: schema}}
                }
            },
        }
    }


def display_filename(filename: str) -> str:
    # Browsers on Windows used to send full paths ("C:\\fakepath\\x.jpg"): keep the base name only.
    return PureWindowsPath(filename).name[:MAX_FILENAME_CHARACTERS] or "upload"


def percent(probability: float) -> float:
    return round(probability * 100.0, 2)


async def read_uploads(
    request: Request,
    settings: Settings,
    timings: StageTimings,
    metrics: GatewayMetrics,
    hold: UploadHold,
    *,
    field_names: tuple[str, ...],
    max_files: int,
    max_body: int,
) -> list[UploadedFile]:
    with timings.measure("read"):
        files = await read_multipart_files(
            request.headers.items(),
            request.stream(),
            field_names=field_names,
            max_files=max_files,
            max_file_bytes=settings.max_upload_bytes,
            max_body_bytes=max_body,
            total_seconds=settings.request_body_timeout_seconds,
            idle_seconds=settings.request_body_idle_seconds,
            hold=hold,
        )
    for file in files:
        metrics.upload_bytes.observe(file.size)
    return files


async def decode(decoder: ImageDecoder, file: UploadedFile, timings: StageTimings) -> DecodedImage:
    decoded = await decoder.decode(bytes(file.data))
    timings.record("decode", decoded.decode_seconds)
    timings.record("resize", decoded.resize_seconds)
    timings.record("provenance", decoded.provenance_seconds)
    return decoded


async def call_model(
    client: ModelClient, images: np.ndarray, target: ModelTarget, timings: StageTimings, explain: bool
) -> PredictionBatch:
    with timings.measure("model_call"):
        return await client.predict(images, target, explain=explain)


def observe(metrics: GatewayMetrics, batch: PredictionBatch, prediction: Prediction) -> None:
    metrics.observe_prediction(
        batch.model_name, batch.model_version, prediction.probability, prediction.label_name
    )


def judged(bands: BandSource, batch: PredictionBatch, row: int, decoded: DecodedImage) -> dict[str, Any]:
    """The verdict, its reason, the provenance findings and (when asked) the heatmap of one image."""
    prediction = batch.predictions[row]
    verdict, reason = decide(
        decoded.provenance, prediction.probability, prediction.threshold, bands.band(batch.model_version)
    )
    return {
        "verdict": verdict,
        "verdict_reason": reason,
        "provenance": [
            ProvenanceFinding.model_validate(finding.to_dict()) for finding in decoded.provenance or ()
        ],
        "explanation": None
        if batch.heatmaps is None
        else Explanation.model_validate(explanation(decoded.pixels, batch.heatmaps[row])),
    }


@router.post(
    "/predict",
    response_model=PredictionResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=multipart_body(SINGLE_FILE_FIELD, multiple=False),
    dependencies=[Depends(enforce_access)],
    summary="Is this image AI-generated? (multipart field `file`)",
)
async def predict(
    request: Request,
    settings: SettingsDep,
    client: ModelClientDep,
    decoder: DecoderDep,
    metrics: MetricsDep,
    timings: TimingsDep,
    routing: RoutingDep,
    hold: UploadHoldDep,
    bands: BandsDep,
    explain: ExplainDep = False,
) -> PredictionResponse:
    (file,) = await read_uploads(
        request,
        settings,
        timings,
        metrics,
        hold,
        field_names=(SINGLE_FILE_FIELD,),
        max_files=1,
        max_body=max_body_bytes(1, settings.max_upload_bytes),
    )
    decoded = await decode(decoder, file, timings)
    batch = await call_model(
        client, decoded.pixels[np.newaxis], routing.target(bytes(file.data)), timings, explain
    )
    prediction = batch.predictions[0]
    observe(metrics, batch, prediction)
    return PredictionResponse(
        ai_probability=percent(prediction.probability),
        filename=display_filename(file.filename),
        score=prediction.probability,
        label=prediction.label_name,  # type: ignore[arg-type]
        threshold=prediction.threshold,
        model_name=batch.model_name,
        model_version=batch.model_version,
        version_label=batch.version_label,
        request_id=request.state.request_id,
        **judged(bands, batch, 0, decoded),
    )


@router.post(
    "/predict/batch",
    response_model=BatchPredictionResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=multipart_body(BATCH_FILE_FIELDS[0], multiple=True),
    dependencies=[Depends(enforce_access)],
    summary="Several images in one request (multipart field `files`; at most 16 by default)",
)
async def predict_batch(
    request: Request,
    settings: SettingsDep,
    client: ModelClientDep,
    decoder: DecoderDep,
    metrics: MetricsDep,
    timings: TimingsDep,
    routing: RoutingDep,
    hold: UploadHoldDep,
    bands: BandsDep,
    explain: ExplainDep = False,
) -> BatchPredictionResponse:
    """Each file gets its own result; a bad file is reported in its item and the others still count.

    The decodable images go to the model server in one Predict call per version they are routed
    to (during a canary, each image meets the version its own bytes choose, as it would alone).
    """
    files = await read_uploads(
        request,
        settings,
        timings,
        metrics,
        hold,
        field_names=BATCH_FILE_FIELDS,
        max_files=settings.max_batch_files,
        max_body=settings.max_batch_bytes,
    )

    async def decode_or_refuse(file: UploadedFile) -> DecodedImage | ImageInputError | GatewayError:
        try:
            return await decode(decoder, file, timings)
        except ImageInputError as error:
            metrics.image_errors.labels(status=str(status_for(error))).inc()
            return error
        except (ServerBusyError, UploadTooLargeError) as error:
            return error  # this file only: the others still get their answers

    outcomes = await asyncio.gather(*(decode_or_refuse(file) for file in files))
    groups: dict[ModelTarget, list[int]] = {}
    for index, (file, outcome) in enumerate(zip(files, outcomes, strict=True)):
        if isinstance(outcome, DecodedImage):
            groups.setdefault(routing.target(bytes(file.data)), []).append(index)
    answers = await asyncio.gather(
        *(
            call_model(
                client,
                np.stack([outcomes[index].pixels for index in indices]),  # type: ignore[union-attr]
                group,
                timings,
                explain,
            )
            for group, indices in groups.items()
        )
    )
    answered: dict[int, tuple[PredictionBatch, int]] = {
        index: (group_batch, row)
        for group_batch, indices in zip(answers, groups.values(), strict=True)
        for row, index in enumerate(indices)
    }
    batch = answers[0] if answers else None  # the batch-level fields: the first version that answered
    results: list[BatchItem] = []
    for index, (file, outcome) in enumerate(zip(files, outcomes, strict=True)):
        filename = display_filename(file.filename)
        if isinstance(outcome, (ImageInputError, GatewayError)):
            results.append(
                BatchItem(success=False, filename=filename, error=str(outcome), status=status_for(outcome))
            )
            continue
        group_batch, row = answered[index]
        prediction = group_batch.predictions[row]
        observe(metrics, group_batch, prediction)
        results.append(
            BatchItem(
                success=True,
                filename=filename,
                ai_probability=percent(prediction.probability),
                score=prediction.probability,
                label=prediction.label_name,  # type: ignore[arg-type]
                threshold=prediction.threshold,
                model_version=group_batch.model_version,
                version_label=group_batch.version_label,
                **judged(bands, group_batch, row, outcome),
            )
        )
    return BatchPredictionResponse(
        model_name=batch.model_name if batch else settings.model_name,
        model_version=batch.model_version if batch else None,
        version_label=batch.version_label if batch else routing.target().version_label,
        request_id=request.state.request_id,
        results=results,
    )


@router.get(
    "/health", response_model=HealthResponse, summary="Liveness: the process answers (touches nothing)"
)
async def health() -> HealthResponse:
    return HealthResponse()


@router.get(
    "/ready",
    response_model=ReadyResponse,
    responses={503: ERROR_RESPONSES[503]},
    summary="Readiness: the version each routed label resolves to is AVAILABLE on the model server",
)
async def ready(
    request: Request, settings: SettingsDep, client: ModelClientDep, split: CanarySplitDep
) -> ReadyResponse:
    problem = request.app.state.canary_split.problem
    if problem is not None:
        raise NotReadyError(
            problem,
            headers={"Retry-After": str(settings.retry_after_seconds)},
            details={"ready": False, "model_name": settings.model_name, "targets": []},
        )
    statuses = [status.to_dict() for status in await client.readiness(split)]
    if not all(status["available"] for status in statuses):
        problems = "; ".join(
            f"{status['target']}: {status['state']} {status['message']}".strip()
            for status in statuses
            if not status["available"]
        )
        raise NotReadyError(
            f"model {settings.model_name!r} is not ready: {problems}",
            headers={"Retry-After": str(settings.retry_after_seconds)},
            details={"ready": False, "model_name": settings.model_name, "targets": statuses},
        )
    return ReadyResponse(ready=True, model_name=settings.model_name, targets=statuses)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics_endpoint(metrics: MetricsDep) -> Response:
    return Response(metrics.exposition(), media_type=CONTENT_TYPE)


@router.get(
    "/v1/model",
    response_model=ModelInfoResponse,
    responses=ERROR_RESPONSES,
    dependencies=[Depends(enforce_access)],
    summary="The model a request would go to: metadata, threshold, canary split, model card",
)
async def model_info(
    settings: SettingsDep, client: ModelClientDep, routing: RoutingDep, split: CanarySplitDep
) -> ModelInfoResponse:
    target = routing.target()
    metadata = await client.metadata(target)
    version, threshold = await client.threshold(target)
    canary = {"label": split.label, "percent": split.percent} if split.enabled else None
    card = read_model_card(settings, version)
    return ModelInfoResponse(
        model_name=metadata.model_name,
        model_version=version,
        version_label=target.version_label,
        signature_name=metadata.signature_name,
        signatures=list(metadata.signature_names),
        input={
            "name": metadata.input_name,
            "dtype": metadata.input_dtype,
            "shape": list(metadata.input_shape),
        },
        outputs=list(metadata.output_names),
        threshold=threshold,
        canary=canary,
        upload_limits={
            "max_upload_bytes": settings.max_upload_bytes,
            "max_pixels": settings.max_pixels,
            "max_batch_files": settings.max_batch_files,
            "max_batch_bytes": settings.max_batch_bytes,
        },
        verdict_band=band.to_dict() if (band := Band.from_card(card)) else None,
        model_card=card,
    )


def read_model_card(settings: Settings, version: int) -> dict[str, Any] | None:
    """model_card.json of `version`, when the gateway can see the model folder (local runs); else None."""
    if settings.model_card_directory is None:
        return None
    return model_card.read_model_card(settings.model_card_directory / str(version))


@router.get("/", include_in_schema=False)
async def web_page() -> FileResponse:
    return FileResponse(STATIC_DIRECTORY / "index.html", media_type="text/html")
