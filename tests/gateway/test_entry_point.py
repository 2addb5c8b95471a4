"""`python -m gateway`: TF Serving's protos without TensorFlow's runtime (fast start, small process)."""

from __future__ import annotations

import subprocess
import sys

from tests.gateway.processes import REPO_ROOT, quiet_environment

CHECK = """
import sys
from gateway.__main__ import use_tensorflow_protos_only
assert use_tensorflow_protos_only()
from gateway.main import create_app
from gateway.settings import Settings
app = create_app(Settings())
assert "tensorflow.python" not in sys.modules, "TensorFlow's runtime was imported"
assert use_tensorflow_protos_only() is False  # once only
print("ok")
"""


def test_gateway_process_imports_only_the_protos() -> None:
    result = subprocess.run(
        [sys.executable, "-c", CHECK],
        cwd=REPO_ROOT,
        env=quiet_environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


def test_help_explains_itself() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and "AIDETECT_GATEWAY_" in result.stdout
