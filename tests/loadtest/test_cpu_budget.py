"""The CPU budget runs end to end on a tiny model and writes its section into a markdown file.

The numbers of this run mean nothing (a tiny model, seconds per step, busy CI cores); what is
checked is that every process's CPU is measured and accounted, and the report is written.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from common.preprocessing import DATASET_MAX_SIDE, decode_and_resize, in_dataset_form, open_header
from loadtest import benchmark, cpu_budget
from loadtest.samples import load_uploads
from tests.serving.local_server_support import build_tiny_saved_model


def test_pre_resized_uploads_carry_exactly_the_model_input(uploads_dir: Path) -> None:
    samples = load_uploads(uploads_dir)[:6]
    for sample, upload in zip(samples, cpu_budget.resized_uploads(samples), strict=True):
        stored = upload.sample.data
        assert upload.sample.content_type == "image/jpeg" and stored in upload.body
        assert max(Image.open(io.BytesIO(stored)).size) <= DATASET_MAX_SIDE
        assert in_dataset_form(open_header(stored))
        assert np.array_equal(decode_and_resize(stored), decode_and_resize(sample.data))


def test_cpu_budget_accounts_every_process_and_writes_its_section(uploads_dir: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    build_tiny_saved_model(models / "ai_detector" / "1", bias=0.0)
    document = tmp_path / "performance.md"
    document.write_text(
        "# Performance\n\nprose before\n\n"
        f"{cpu_budget.BEGIN_MARKER}\nold\n{cpu_budget.END_MARKER}\n\nprose after\n"
    )
    result = CliRunner().invoke(
        benchmark.app,
        [
            "cpu-budget",
            "--models=starter",
            f"--models-dir={models}",
            f"--uploads={uploads_dir}",
            "--seconds=2",
            "--repeats=1",
            "--concurrency=4",
            "--raw-seconds=0.3",
            f"--work-dir={tmp_path / 'results'}",
            f"--output={document}",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    text = document.read_text()
    assert text.startswith("# Performance\n\nprose before\n") and text.endswith("\n\nprose after\n")
    assert "\nold\n" not in text and "in the data set's form (<= 384 px JPEG q90)" in text

    (results_file,) = (tmp_path / "results").glob("*/cpu_budget.json")
    results = json.loads(results_file.read_text())
    (model,) = results["models"]
    (entry,) = model["repeats"]
    assert entry["raw"]["batch_sizes"]["1"]["cpu_milliseconds_per_image"] > 0
    assert [step["uploads"] for step in entry["steps"]] == [
        "real uploads",
        "the same images in the data set's form (<= 384 px JPEG q90)",
    ]
    for step in entry["steps"]:
        assert step["completed"] > 0 and step["failed"] == 0
        # Each of the three processes did measurable work for the requests.
        assert all(value > 0 for value in step["cpu_ms_per_request"].values()), step
        # Idle is reported, not bounded here: on a busy machine other processes' CPU and
        # sampling skew can push it below zero (issue 13); the benchmark's report states it.
        assert isinstance(step["idle_ms_per_request"], float) and step["capacity_ms_per_request"] > 0, step
    # Each process is measured under its own name: decoding full-size uploads makes the gateway the
    # busier server with the tiny model, and costs it more than decoding the data set's small JPEGs.
    real, resized = entry["steps"]
    assert real["cpu_ms_per_request"]["gateway"] > real["cpu_ms_per_request"]["model server"]
    assert real["cpu_ms_per_request"]["gateway"] > resized["cpu_ms_per_request"]["gateway"]
