"""Fixtures of the reliability tests: the contract model, real uploads, and a running stack.

`AIDETECT_FUZZ_SCALE` (default 1) multiplies the random mutations and property examples, and
`AIDETECT_FUZZ_SEED` (default 0) picks them: `make fuzz` runs these same tests larger, with a
new seed. `AIDETECT_RELIABILITY_RESULTS`, when set, is a folder where the tests write what
they tried and found as JSON (`make fuzz` and docs/reliability.md use it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.gateway.processes import REPO_ROOT
from tests.reliability.load import Upload
from tests.reliability.stack import Stack, batching_parameters, build_stack, running, stable_label_config

CONTENT_TYPES = {".jpeg": "image/jpeg", ".jpg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}


@dataclass(frozen=True)
class FuzzSettings:
    scale: int
    seed: int
    results: Path | None

    @classmethod
    def from_environment(cls) -> FuzzSettings:
        """Also read at import by property tests, whose decorators need the scale."""
        results = os.environ.get("AIDETECT_RELIABILITY_RESULTS")
        return cls(
            scale=max(1, int(os.environ.get("AIDETECT_FUZZ_SCALE", "1"))),
            seed=int(os.environ.get("AIDETECT_FUZZ_SEED", "0")),
            results=Path(results) if results else None,
        )

    def record(self, name: str, summary: dict[str, object]) -> None:
        """Write `summary` as <results>/<name>.json when a results folder is set."""
        if self.results is None:
            return
        self.results.mkdir(parents=True, exist_ok=True)
        (self.results / f"{name}.json").write_text(
            json.dumps({"scale": self.scale, "seed": self.seed, **summary}, indent=2) + "\n"
        )


@pytest.fixture(scope="session")
def fuzz() -> FuzzSettings:
    return FuzzSettings.from_environment()


@pytest.fixture(scope="session")
def contract_model_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One version of the contract model (export graph, brightness network), copied by each stack."""
    from tests.gateway.tiny_model import write_tiny_model  # TensorFlow: only when needed

    return write_tiny_model(tmp_path_factory.mktemp("contract-model") / "ai_detector", version=1)


@pytest.fixture(scope="session")
def real_uploads(uploads_dir: Path) -> list[Upload]:
    """The real upload samples under 200 KB (the fault tests' traffic: many requests, little CPU)."""
    return [
        (path.name, path.read_bytes(), CONTENT_TYPES[path.suffix])
        for path in sorted(uploads_dir.iterdir())
        if path.suffix in CONTENT_TYPES and path.stat().st_size < 200_000
    ]


@pytest.fixture(scope="session")
def production_like_stack(
    contract_model_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """Model server with the production config shape (version 1, label stable) and the CPU
    batching parameters; the gateway with its default settings. For the bad-input tests."""
    batching = (REPO_ROOT / "serving" / "batching.cpu.config").read_text()
    stack = build_stack(
        tmp_path_factory.mktemp("production-like"),
        contract_model_template,
        stable_label_config(1),
        batching=batching or batching_parameters(),
    )
    with running(stack):
        yield stack
