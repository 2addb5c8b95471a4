"""Typed export errors; the CLI maps each to a message and exit code in one place (export.export)."""

from __future__ import annotations


class ExportError(Exception):
    """Base class: the export could not produce a servable version."""


class RunFolderError(ExportError):
    """The training run folder lacks something the export needs (model, config, evaluation)."""


class ReferenceDataError(ExportError):
    """The real images needed to validate the export (the run's validation split) are missing."""


class VersionExistsError(ExportError):
    """The requested version folder already exists; versions are never overwritten."""


class ValidationFailedError(ExportError):
    """The exported SavedModel did not reproduce the Keras model, or broke the signature contract."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("export validation failed:\n  - " + "\n  - ".join(problems))
        self.problems = problems


class NoVariantPassedError(ExportError):
    """No export variant reproduced the Keras model within the tolerance (not even plain fp32)."""
