"""An export stopped by SIGTERM (a timeout, `kill`) leaves no staging folder and no version."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.repository import REPO_ROOT

pytestmark = pytest.mark.model


def test_sigterm_during_export_leaves_nothing_behind(tiny_run: Path, tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    model_dir = models_dir / "ai_detector"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "export.export",
            str(tiny_run),
            "--models-dir",
            str(models_dir),
            "--variant",
            "fp32",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while not (model_dir.is_dir() and any(model_dir.glob(".export-*"))):
            assert process.poll() is None, "the export ended before its staging folder appeared"
            assert time.monotonic() < deadline, "no staging folder within 300 s"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) != 0
    finally:
        if process.poll() is None:
            process.kill()
    assert list(model_dir.iterdir()) == []
