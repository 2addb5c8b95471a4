"""The original design, kept as the benchmark's baseline: one FastAPI process that loads the Keras
model when it starts and calls `model.predict` on each upload inside the request handler.

    python -m loadtest.baseline_app --keras-model runs/efficientnet_lite0/model.keras --port 8100

This is how the system worked before the split into gateway + model server: no model server, no
batching across requests, inference on the event loop (an `async` handler calling the blocking
`model.predict`, so requests run one after another), the Keras model (not the exported graph).
It answers the same `POST /predict` (multipart `file`) with the original JSON
`{"success": true, "ai_probability": 85.42, "filename": "x.jpg"}`. For a fair comparison it
decodes with the same shared preprocessing as the gateway; everything else is the original's.
Not for production: it exists to be measured against.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, File, Request, UploadFile
from fastapi.responses import JSONResponse
from pydantic import Field
from pydantic_settings import BaseSettings, CliApp, SettingsConfigDict

from common.logs import configure_logging
from common.preprocessing import ImageInputError, decode_and_resize

logger = logging.getLogger("loadtest.baseline_app")


class BaselineSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="AIDETECT_BASELINE_", env_file=None, extra="ignore",
        cli_kebab_case=True, cli_prog_name="python -m loadtest.baseline_app",
    )  # fmt: skip

    keras_model: Path
    host: str = "127.0.0.1"
    port: int = Field(default=8100, ge=0, le=65535)


@lru_cache
def get_settings() -> BaselineSettings:
    return BaselineSettings()  # type: ignore[call-arg]  # keras_model comes from the environment


def create_app(settings: BaselineSettings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from training.models import load_classifier  # TensorFlow: only when the app starts

        app.state.model = load_classifier(settings.keras_model)
        logger.info("loaded %s", settings.keras_model)
        yield

    app = FastAPI(title="aidetect baseline (the original design)", lifespan=lifespan)

    @app.exception_handler(ImageInputError)
    async def refuse_image(request: Request, error: ImageInputError) -> JSONResponse:
        return JSONResponse({"success": False, "error": str(error)}, status_code=400)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/predict")
    async def predict(request: Request, file: Annotated[UploadFile, File()]) -> dict[str, Any]:
        contents = await file.read()
        pixels = decode_and_resize(contents)
        # The original's call: Keras predict on a batch of one, blocking the event loop.
        probability = float(request.app.state.model.predict(pixels[np.newaxis], verbose=0)[0][0])
        return {
            "success": True,
            "ai_probability": round(probability * 100.0, 2),
            "filename": file.filename,
        }

    return app


def main(argv: list[str] | None = None) -> None:
    # AIDETECT_BASELINE_* variables, each overridden by its option (--keras-model, --host, --port).
    settings = CliApp.run(BaselineSettings, cli_args=argv)
    configure_logging(stream=sys.stderr)
    import uvicorn

    # uvicorn's access log stays on, as in the original (the gateway writes one line per request too).
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port)


if __name__ == "__main__":
    main()
