"""Rendering the kustomize overlays, shared by the manifest tests and the probe test."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest

from common.repository import REPO_ROOT

K8S = REPO_ROOT / "k8s"
OVERLAYS = ("dev", "prod", "cpu-bf16")


def render(overlay: str) -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail(
            "kubectl is not installed; it renders the manifests (`kubectl kustomize`). "
            "Install the Debian/Ubuntu package `kubectl` (apt-get install kubectl), "
            "or any kubectl >= 1.27 on PATH.",
            pytrace=False,
        )
    finished = subprocess.run(
        [kubectl, "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert finished.returncode == 0, f"kubectl kustomize {overlay} failed:\n{finished.stderr}"
    return finished.stdout


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for candidate in objects:
        if candidate["kind"] == kind and candidate["metadata"]["name"] == name:
            return candidate
    raise AssertionError(f"no {kind}/{name} in the rendered objects")


def container(objects: list[dict[str, Any]], deployment: str, name: str | None = None) -> dict[str, Any]:
    """The container `name` (default: the one named as its Deployment) of a Deployment's pods."""
    spec = find(objects, "Deployment", deployment)["spec"]["template"]["spec"]
    (found,) = [candidate for candidate in spec["containers"] if candidate["name"] == (name or deployment)]
    result: dict[str, Any] = found
    return result
