"""TF Serving's version-folder rule (common.model_versions): export, model server, rollout."""

from __future__ import annotations

from pathlib import Path

from common import model_versions


def test_only_integer_folders_are_versions_and_the_next_is_max_plus_one(tmp_path: Path) -> None:
    model_dir = tmp_path / "ai_detector"
    assert model_versions.versions(model_dir) == [] and model_versions.next_version(model_dir) == 1
    assert model_versions.version_folders(tmp_path / "missing") == {}
    for name in (
        "1",
        "3",
        "10",
        "007",
        ".export-abc123",
        ".tmp-13",
        "13.partial",
        "abc",
        "latest",
        "2.tmp",
        "\u00b2",
    ):
        (model_dir / name).mkdir(parents=True)
    (model_dir / "14").write_text("a file, not a version")
    assert model_versions.versions(model_dir) == [1, 3, 7, 10]
    assert model_versions.version_folders(model_dir)[7] == model_dir / "007"
    assert model_versions.next_version(model_dir) == 11


def test_version_names_are_ascii_digits_only() -> None:
    assert model_versions.is_version_name("12")
    for name in ("", "\u00b2", "\u0663", "1.0", "-1", " 1", "v1"):  # superscript two, Arabic-Indic three
        assert not model_versions.is_version_name(name), name
