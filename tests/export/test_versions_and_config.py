"""The serving/models.config helper CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from common import model_config
from common.repository import REPO_ROOT
from export.serving_config import app


@pytest.fixture()
def config_file(tmp_path: Path) -> Path:
    """The repository's config, rewritten to serve version 1 as stable: the starting point of the edits."""
    path = tmp_path / "models.config"
    shutil.copy(REPO_ROOT / "serving" / "models.config", path)
    entry_text = path.read_text()
    served = model_config.model(model_config.load(path))
    version = list(served.model_version_policy.specific.versions)
    assert version and dict(served.version_labels) == {"stable": version[0]}, entry_text
    path.write_text(
        entry_text.replace(f"versions: {version[0]}", "versions: 1").replace(
            f"value: {version[0]}", "value: 1"
        )
    )
    return path


def test_the_repository_config_serves_a_committed_version() -> None:
    config = model_config.load(REPO_ROOT / "serving" / "models.config")
    entry = model_config.model(config)
    served = list(entry.model_version_policy.specific.versions)
    assert served == [dict(entry.version_labels)["stable"]]
    for version in served:
        assert (REPO_ROOT / "models" / "ai_detector" / str(version) / "saved_model.pb").is_file()


@pytest.fixture()
def models_dir(tmp_path: Path) -> Path:
    """Exported versions 1 and 2 as the CLI checks them (a saved_model.pb file is all it reads)."""
    for version in (1, 2):
        folder = tmp_path / "models" / "ai_detector" / str(version)
        folder.mkdir(parents=True)
        (folder / "saved_model.pb").write_bytes(b"")
    return tmp_path / "models"


def invoke(*arguments: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(arguments))
    return result.exit_code, result.output


def test_canary_rollout_edits(config_file: Path, models_dir: Path) -> None:
    config = ("--config", str(config_file))
    code, output = invoke("show", *config)
    assert code == 0 and "ai_detector: /models/ai_detector | policy specific [1] | labels stable=1" in output

    code, output = invoke("add-version", "2", *config, "--models-dir", str(models_dir))
    assert code == 0 and "policy specific [1, 2]" in output
    code, output = invoke("set-label", "canary", "2", *config)
    assert code == 0 and "labels canary=2, stable=1" in output
    code, output = invoke("remove-version", "2", *config)
    assert code == 1 and "still has labels" in output, "a labelled version stays loaded"
    code, output = invoke("set-label", "stable", "2", *config)
    code, output = invoke("remove-label", "canary", *config)
    code, output = invoke("remove-version", "1", *config)
    assert code == 0 and "policy specific [2] | labels stable=2" in output

    saved = model_config.load(config_file)
    entry = model_config.model(saved)
    assert entry.base_path == "/models/ai_detector"
    assert list(entry.model_version_policy.specific.versions) == [2]
    assert dict(entry.version_labels) == {"stable": 2}


def test_refusals_leave_the_file_unchanged(config_file: Path, models_dir: Path) -> None:
    config = ("--config", str(config_file))
    before = config_file.read_text()
    code, output = invoke("add-version", "9", *config, "--models-dir", str(models_dir))
    assert code == 1 and "no exported SavedModel" in output
    code, output = invoke("set-label", "canary", "2", *config)
    assert code == 1 and "not loaded" in output
    code, output = invoke("set-policy", "latest", *config)
    assert code == 1 and "remove them first" in output
    code, output = invoke("set-label", "stable", "1", *config, "--name", "no_such_model")
    assert code == 1 and "not in the config" in output
    assert config_file.read_text() == before


def test_version_policies(config_file: Path) -> None:
    config = ("--config", str(config_file))
    code, output = invoke("add-version", "4", *config, "--allow-missing")
    assert code == 0 and "specific [1, 4]" in output
    code, output = invoke("set-policy", "specific", "--versions", "1", *config)
    assert code == 0 and "specific [1]" in output
    invoke("remove-label", "stable", *config)
    code, output = invoke("set-policy", "latest", "--num-versions", "2", *config)
    assert code == 0 and "policy latest 2" in output
    code, output = invoke("set-policy", "all", *config)
    assert code == 0 and "policy all" in output
