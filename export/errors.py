"""Typed export errors; the CLI maps each to a message and exit code in one place (export.export).

A run folder that cannot be read raises training.run_folder's RunFolderError / RunDataError
(ValueErrors), mapped by the same handler."""

from __future__ import annotations


class ExportError(Exception):
    """Base class: the export could not produce a servable version."""


class VersionExistsError(ExportError):
    """The requested version folder already exists; versions are never overwritten."""


class ValidationFailedError(ExportError):
    """The exported SavedModel did not reproduce the Keras model, or broke the signature contract."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("export validation failed:\n  - " + "\n  - ".join(problems))
        self.problems = problems


class NoVariantPassedError(ExportError):
    """No export variant reproduced the Keras model within the tolerance (not even plain fp32)."""
