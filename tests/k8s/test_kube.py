"""The kubectl calls of a cluster rollout, against a fake `kubectl` on PATH (the cluster is the edge).

The fake records its arguments and answers `ls` and `get configmap` like a cluster would; what
is checked is the command lines: what they change and in which order.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from common import model_config
from k8s.errors import KubectlError, RolloutStateError
from k8s.kube import Kubectl
from k8s.rollout_steps import ConfigStore
from tests.k8s.rollout_support import write_stable_config

FAKE_KUBECTL = """#!/bin/bash
echo "$*" >> "$FAKE_KUBECTL_LOG"
case "$*" in
  *"exec model-publisher -- ls -1 /models/ai_detector/3"*) printf 'saved_model.pb\\nvariables\\n' ;;
  *"exec model-publisher -- ls -1 /models/ai_detector"*) printf '1\\n2\\n.publish-2\\nREADME\\n' ;;
  *"get configmap tf-serving-models"*) cat "$FAKE_CONFIGMAP" ;;
esac
"""


@pytest.fixture
def fake_kubectl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    binary = tmp_path / "bin" / "kubectl"
    binary.parent.mkdir()
    binary.write_text(FAKE_KUBECTL)
    binary.chmod(binary.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "kubectl.log"
    log.touch()
    monkeypatch.setenv("PATH", f"{binary.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_KUBECTL_LOG", str(log))
    return log


def test_configmap_edits_are_merge_patches_of_one_key(fake_kubectl: Path) -> None:
    Kubectl("aidetect", context="prod").patch_configmap(
        "gateway-traffic", "traffic.json", '{"canary_percent": 5}'
    )
    (line,) = fake_kubectl.read_text().splitlines()
    assert line.startswith(
        "--context prod --namespace aidetect patch configmap gateway-traffic --type merge --patch "
    )
    assert json.loads(line.split("--patch ", 1)[1]) == {"data": {"traffic.json": '{"canary_percent": 5}'}}


def test_publish_copies_to_a_dot_folder_then_renames_once(fake_kubectl: Path, tmp_path: Path) -> None:
    export = tmp_path / "export"
    export.mkdir()
    (export / "saved_model.pb").write_bytes(b"graph")
    version = Kubectl("aidetect").publish(export, "model-publisher", "/models/ai_detector")
    assert version == 3
    calls = [line.removeprefix("--namespace aidetect ") for line in fake_kubectl.read_text().splitlines()]
    assert calls == [
        "exec model-publisher -- ls -1 /models/ai_detector",
        "exec model-publisher -- rm -rf /models/ai_detector/.publish-3",
        f"cp {export} model-publisher:/models/ai_detector/.publish-3",
        'exec model-publisher -- sh -c test ! -e "$1" && mv "$0" "$1" '
        "/models/ai_detector/.publish-3 /models/ai_detector/3",
        "exec model-publisher -- ls -1 /models/ai_detector/3",
    ]


def test_a_cluster_config_that_differs_from_the_file_stops_the_rollout(
    fake_kubectl: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "models.config"
    write_stable_config(path, 1)
    answer = tmp_path / "configmap.json"
    monkeypatch.setenv("FAKE_CONFIGMAP", str(answer))
    store = ConfigStore(path, "ai_detector", kubectl=Kubectl("aidetect"))

    answer.write_text(json.dumps({"data": {"models.config": path.read_text()}}))
    store.check_cluster_matches()
    other = model_config.load(path)
    model_config.add_version(other, "ai_detector", 2)
    answer.write_text(json.dumps({"data": {"models.config": model_config.dumps(other)}}))
    with pytest.raises(RolloutStateError, match=r"does not hold the same models\.config"):
        store.check_cluster_matches()

    store.apply(model_config.load(path), servers=[])
    last = fake_kubectl.read_text().splitlines()[-1]
    assert "patch configmap tf-serving-models --type merge" in last


def test_missing_kubectl_names_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(KubectlError, match="package: kubectl"):
        Kubectl("aidetect").run("version")
