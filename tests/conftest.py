"""Shared fixtures: where the real data lives (../shared, beside the repo; never copied in)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def ai_vs_real_dir() -> Path:
    path = SHARED_DATA / "ai-vs-real"
    if not (path / "manifest.csv").is_file():
        pytest.skip(f"real data not found at {path} (expected ../shared beside the repo)")
    return path


@pytest.fixture(scope="session")
def uploads_dir() -> Path:
    path = SHARED_DATA / "uploads"
    if not (path / "manifest.csv").is_file():
        pytest.skip(f"upload samples not found at {path}")
    return path
