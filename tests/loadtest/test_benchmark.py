"""The benchmark runs end to end on tiny models and writes its section into a markdown file.

Numbers from this run mean nothing (tiny models, a few seconds per step, busy CI cores); the
real measurement is `python -m loadtest.benchmark` on a quiet machine (loadtest/README.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from common.preprocessing import IMAGE_SIZE
from common.repository import CPU_SESSION_CONFIG_FILE
from loadtest import benchmark, benchmark_report
from tests.serving.local_server_support import build_tiny_saved_model

pytestmark = [pytest.mark.integration, pytest.mark.model, pytest.mark.slow]


def write_tiny_keras_model(path: Path) -> None:
    """A Keras classifier with the project's input and output (uint8 image -> probability)."""
    import keras

    images = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), dtype="uint8", name="image")
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255.0)(images))
    probability = keras.layers.Dense(1, activation="sigmoid", name="probability")(features)
    path.parent.mkdir(parents=True, exist_ok=True)
    keras.Model(images, probability).save(path)


def test_benchmark_measures_every_system_and_writes_its_section(uploads_dir: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    build_tiny_saved_model(models / "ai_detector" / "1", bias=0.0)
    keras_model = tmp_path / "run" / "model.keras"
    write_tiny_keras_model(keras_model)
    document = tmp_path / "performance.md"
    document.write_text(
        "# Performance\n\nprose before\n\n"
        f"{benchmark_report.BEGIN_MARKER}\nold numbers\n{benchmark_report.END_MARKER}\n\nprose after\n"
    )
    work = tmp_path / "work"
    result = CliRunner().invoke(
        benchmark.app,
        [
            "systems",
            "--models=starter",
            f"--models-dir={models}",
            f"--starter-keras={keras_model}",
            f"--uploads={uploads_dir}",
            "--repeats=1",
            "--step-seconds=2",
            "--warmup-seconds=0.5",
            "--search-steps=1",
            "--concurrency=4",
            "--raw-seconds=0.3",
            "--raw-batch-sizes=1,2",
            f"--session-configs={CPU_SESSION_CONFIG_FILE}",
            f"--work-dir={work}",
            f"--output={document}",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output

    text = document.read_text()
    assert text.startswith("# Performance\n\nprose before\n") and text.endswith("\n\nprose after\n")
    assert "old numbers" not in text and text.count(benchmark_report.BEGIN_MARKER) == 1
    for row in (
        "raw SavedModel in process",
        "decode + canonical normalization + model in one process",
        "gateway + model server, batching",
        "session config `serving/session_config.cpu.pbtxt`",
        "no server-side batching",
        "Stack saturation ÷ decode + normalization + model ceiling",
    ):
        assert row in text, row
    assert "baseline: one FastAPI process" in text
    assert "Where the time goes" in text
    assert "Reproduce: `python -m loadtest.benchmark systems --models=starter --models-dir=" in text

    (results_file,) = work.glob("*/benchmark.json")
    results = json.loads(results_file.read_text())
    systems = {entry["system"]: entry for entry in results["systems"]}
    assert set(systems) == {"stack", "stack-session_config.cpu", "stack-nobatch", "baseline"}
    for entry in systems.values():
        # Every system answered every request of the saturation step (no failures, only slow answers).
        assert entry["saturation"]["completed"] > 0 and entry["saturation"]["failed"] == 0
        assert len(entry["rate_steps"]) == 1
    # The stack's stage breakdown came from its own metrics.
    stages = systems["stack"]["saturation"]["stages_ms"]
    assert stages["requests"] > 0 and stages["decode"] > 0
    assert set(results["raw"][0]["batch_sizes"]) == {"1", "2"}
    with_decoding = results["raw"][0]["with_decoding"]
    assert set(with_decoding["batch_sizes"]) == {"1", "2"} and with_decoding["best_images_per_second"] > 0
