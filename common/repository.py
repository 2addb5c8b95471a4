"""The repository itself: where it is, where ../shared is, and which commit the code runs from."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVING_FOLDER = REPO_ROOT / "serving"  # models.config, batching and monitoring configs
DEFAULT_BATCHING_FILE = SERVING_FOLDER / "batching.cpu.config"  # what `make run` and the CPU image use
# --tensorflow_session_config_file: bfloat16 mixed precision on CPUs (AVX512-BF16/AMX), float16 on GPUs.
CPU_SESSION_CONFIG_FILE = SERVING_FOLDER / "session_config.cpu.pbtxt"
GPU_SESSION_CONFIG_FILE = SERVING_FOLDER / "session_config.gpu.pbtxt"
# ../shared beside the repository: data and reference material, never copied into the repository.
SHARED_ROOT = REPO_ROOT.parent / "shared"
SHARED_DATA = SHARED_ROOT / "data" / "ai-vs-real"  # labelled images, manifest, splits
SHARED_UPLOADS = SHARED_ROOT / "data" / "uploads"  # original upload files


def code_version() -> str:
    """The commit the code runs from, with `-dirty` when tracked files have uncommitted changes
    (as `git describe --dirty` says it); "unknown" outside a git checkout. Recorded by training,
    export and the benchmarks; light (no TensorFlow import)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")
