"""The rollout's typed errors. The CLI (k8s/rollout.py) maps them to messages and exit codes in one place."""

from __future__ import annotations


class RolloutError(Exception):
    """A rollout step cannot go on; the message says what to do."""


class PublishError(RolloutError):
    """An exported version cannot be published into the model volume."""


class RolloutStateError(RolloutError):
    """models.config is not in a state this step can start from (e.g. a canary of another version)."""


class ModelServerError(RolloutError):
    """A model server refused a request (e.g. HandleReloadConfigRequest answered an error)."""


class WaitTimeoutError(RolloutError):
    """Something the rollout waits for (a version AVAILABLE, a label moved) did not happen in time."""


class MetricsError(RolloutError):
    """The canary's metrics cannot be read (endpoint down, metric missing, bad answer)."""


class KubectlError(RolloutError):
    """kubectl failed or is missing."""
