"""Shared fixtures: where the real data lives (../shared, beside the repo; never copied in)."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.repository import SHARED_DATA, SHARED_UPLOADS


@pytest.fixture(scope="session")
def ai_vs_real_dir() -> Path:
    path = SHARED_DATA
    if not (path / "manifest.csv").is_file():
        pytest.skip(f"real data not found at {path} (expected ../shared beside the repo)")
    return path


@pytest.fixture(scope="session")
def uploads_dir() -> Path:
    path = SHARED_UPLOADS
    if not (path / "manifest.csv").is_file():
        pytest.skip(f"upload samples not found at {path}")
    return path
