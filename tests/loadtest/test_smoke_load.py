"""Smoke load: `python -m loadtest.run` starts the real stack (local model server + gateway on free
loopback ports, a tiny contract model), runs both Locust users for a few seconds, and writes its
reports. Checks that the pipeline works under concurrency: every request answered, nothing failed.
No timing assertion: the latency limit is switched off (`--p95-limit-ms 0`); latency is judged by
`make loadtest` and the benchmark on a quiet machine.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.repository import REPO_ROOT
from tests.serving.local_server_support import build_tiny_saved_model, config_text

MODEL_NAME = "ai_detector"

pytestmark = [pytest.mark.integration, pytest.mark.model]


@pytest.fixture(scope="module")
def tiny_model_repository(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(models folder, models.config) with the tiny contract model as version 1, labelled stable."""
    root = tmp_path_factory.mktemp("loadtest-model")
    build_tiny_saved_model(root / "models" / MODEL_NAME / "1", bias=0.0)
    config_file = root / "models.config"
    config_file.write_text(
        config_text(
            [
                {
                    "name": MODEL_NAME,
                    "base_path": f"/models/{MODEL_NAME}",
                    "policy": "specific { versions: 1 }",
                    "labels": {"stable": 1},
                }
            ]
        )
    )
    return root / "models", config_file


def test_smoke_load_on_the_real_stack(
    tiny_model_repository: tuple[Path, Path], uploads_dir: Path, tmp_path: Path
) -> None:
    models, config_file = tiny_model_repository
    results = tmp_path / "results"
    environment = {key: value for key, value in os.environ.items() if not key.startswith("AIDETECT_")}
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtest.run",
            "--users=4",
            "--spawn-rate=4",
            "--duration=6s",
            "--wait-min-seconds=0.1",
            "--wait-max-seconds=0.3",
            f"--models-directory={models}",
            f"--model-config-file={config_file}",
            f"--uploads-directory={uploads_dir}",
            f"--results-directory={results}",
            "--p95-limit-milliseconds=0",
        ],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    (run_folder,) = results.iterdir()
    for name in (
        "locust_report.html",
        "locust_stats.csv",
        "locust_stats_history.csv",
        "locust_failures.csv",
        "requests.csv",
        "latency.png",
        "summary.json",
        "logs/gateway.log",
        "logs/model_server.log",
    ):
        assert (run_folder / name).is_file() and (run_folder / name).stat().st_size > 0, name

    summary = json.loads((run_folder / "summary.json").read_text())
    assert summary["passed"] is True, summary["reasons"]
    assert summary["started_stack"] is True
    by_name = {item["name"]: item for item in summary["requests"]}
    # Both users ran: uploads through the gateway, and Predict on both signatures of the model server.
    assert set(by_name) >= {"POST /predict", "Predict serving_default", "all requests"}, by_name
    assert all(item["failures"] == 0 for item in summary["requests"])
    assert by_name["POST /predict"]["requests"] >= 4

    with (run_folder / "requests.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and all(row["error"] == "" for row in rows)
    # Locust's own stats saw no failure either.
    with (run_folder / "locust_stats.csv").open(newline="") as handle:
        aggregated = [row for row in csv.DictReader(handle) if row["Name"] == "Aggregated"]
    assert aggregated and aggregated[0]["Failure Count"] == "0"
    assert (run_folder / "latency.png").read_bytes().startswith(b"\x89PNG")
