"""The serving benchmark script runs end to end on a tiny model and writes its report.

Numbers from this run mean nothing (tiny model, busy CI cores); the real measurement is run
by hand on a quiet machine (serving/README.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from serving import benchmark
from tests.serving.local_server_support import build_tiny_saved_model

pytestmark = [pytest.mark.integration, pytest.mark.model]


def test_benchmark_writes_a_report(tmp_path: Path) -> None:
    version_dir = tmp_path / "model" / "1"
    build_tiny_saved_model(version_dir, bias=0.0)
    batching = tmp_path / "batching.config"
    batching.write_text("# comment\nmax_batch_size { value: 4 }\nbatch_timeout_micros { value: 1000 }\n")
    output = tmp_path / "report.md"
    exit_code = benchmark.main(
        [
            f"--model-version-dir={version_dir}",
            f"--batching-parameters-file={batching}",
            "--concurrency",
            "1",
            "2",
            "--requests-per-client=3",
            "--raw-calls=3",
            "--raw-batch-sizes",
            "2",
            "--images=4",
            f"--output={output}",
        ]
    )
    assert exit_code == 0
    report = output.read_text()
    assert "## Raw SavedModel, in process" in report
    rows = [line for line in report.splitlines() if line.startswith(("| off |", "| on |"))]
    assert [row.split("|")[1:3] for row in rows] == [
        [" off ", " 1 "],
        [" off ", " 2 "],
        [" on ", " 1 "],
        [" on ", " 2 "],
    ]
    assert all(row.rstrip("| ").endswith("0") for row in rows)  # no errors
    assert "max_batch_size { value: 4 }" in report and "# comment" not in report
