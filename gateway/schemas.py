"""The JSON bodies of the gateway's HTTP API (ARCHITECTURE.md contract 5), as pydantic models for OpenAPI."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class ProvenanceFinding(BaseModel):
    """What the file's own bytes say about where it came from (docs/provenance.md)."""

    kind: Literal[
        "c2pa", "digital_source_type", "generator_parameters", "software", "camera", "metadata_error"
    ]
    finding: str = Field(description="the finding in plain words")
    implies: Literal["ai", "hint_ai", "camera", "none"] = Field(
        description="'ai': declares generation by an AI model and decides the verdict; 'hint_ai': points "
        "to a generator without proving it; 'camera': claims a capture (proves nothing alone); 'none'"
    )


class Explanation(BaseModel):
    """Where the model looked (?explain=true): computed by the model server, drawn by the gateway."""

    heatmap: list[list[float]] = Field(
        description="8x8, row by row from the top: the logit minus the logit when that cell of the model's "
        "256x256 input loses its fine detail (positive: pushes toward AI-generated)"
    )
    overlay: str = Field(
        description="data:image/jpeg;base64 URL: the model's input with the heatmap drawn over it"
    )
    method: str


VERDICT_DESCRIPTION = (
    "'ai', 'real' or 'inconclusive'. A provenance finding that implies 'ai' decides 'ai'; otherwise the "
    "pixel score with the model's inconclusive band (fitted on validation data for a stated error rate "
    "among decided answers, shipped in the model card; without one, the threshold decides). Missing "
    "metadata proves nothing."
)


class PredictionResponse(BaseModel):
    success: Literal[True] = True
    ai_probability: float = Field(
        description="P(AI-generated) in percent, 2 decimals (the original API's field)"
    )
    filename: str
    score: float = Field(description="P(AI-generated), 0..1 (calibrated)")
    label: Literal["ai", "real"] = Field(description="'ai' when score >= threshold")
    threshold: float = Field(
        description="the model's decision threshold on score (from the model's own output)"
    )
    model_name: str
    model_version: int
    version_label: str = Field(description="label that routed the request, 'pinned' or 'latest'")
    request_id: str
    verdict: Literal["ai", "real", "inconclusive"] = Field(description=VERDICT_DESCRIPTION)
    verdict_reason: str = Field(description="why, in plain words")
    provenance: list[ProvenanceFinding] = Field(
        description="what the file's metadata says (C2PA, IPTC/XMP, EXIF, generator parameters)"
    )
    explanation: Explanation | None = Field(default=None, description="with ?explain=true only")


class BatchItem(BaseModel):
    """One file of a batch: a prediction, or why this file was refused (the others still count)."""

    success: bool
    filename: str
    ai_probability: float | None = None
    score: float | None = None
    label: Literal["ai", "real"] | None = None
    threshold: float | None = None
    error: str | None = None
    status: int | None = Field(default=None, description="the HTTP status this file alone would get")
    model_version: int | None = Field(default=None, description="the version that answered for this file")
    version_label: str | None = None
    verdict: Literal["ai", "real", "inconclusive"] | None = Field(
        default=None, description=VERDICT_DESCRIPTION
    )
    verdict_reason: str | None = None
    provenance: list[ProvenanceFinding] | None = None
    explanation: Explanation | None = None


class BatchPredictionResponse(BaseModel):
    success: Literal[True] = True
    model_name: str
    model_version: int | None = Field(description="None when no file of the batch could be decoded")
    version_label: str
    request_id: str
    results: list[BatchItem]


class ErrorResponse(BaseModel):
    success: Literal[False] = False
    error: str
    request_id: str | None = None


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyResponse(BaseModel):
    ready: bool
    model_name: str
    targets: list[dict[str, Any]]


class ModelInfoResponse(BaseModel):
    model_name: str
    model_version: int
    version_label: str
    signature_name: str
    signatures: list[str]
    input: dict[str, Any]
    outputs: list[str]
    threshold: float = Field(description="the decision threshold the model outputs with every prediction")
    canary: dict[str, Any] | None = None
    upload_limits: dict[str, int] = Field(
        description="max_upload_bytes, max_pixels, max_batch_files, max_batch_bytes"
    )
    verdict_band: dict[str, float] | None = Field(
        default=None,
        description="the inconclusive band of this version's pixel score (real_below, ai_from, "
        "target_error), from its model card; None without one",
    )
    model_card: dict[str, Any] | None = Field(
        default=None,
        description="model_card.json of this version, when the gateway can read the model folder",
    )


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "not an image, or a corrupt one; malformed multipart body",
        401: "API keys are enabled and X-API-Key is missing or wrong",
        404: "the pinned model version or label is not served",
        408: "the upload did not arrive in time (stalled or too slow)",
        413: "file or request too large, too many pixels, or too many files",
        415: "an image format that is not supported",
        422: "no file in the request, or an invalid parameter (or explain=true for a model version "
        "exported without the explain signature)",
        429: "rate limited (see Retry-After)",
        502: "the model server answered outside the contract",
        503: (
            "the model server or model is unavailable, or the gateway is decoding too many "
            "large images (see Retry-After)"
        ),
        504: "the model server did not answer in time",
    }.items()
}
