"""The canary split: which share of unpinned requests goes to the canary version label.

From settings (`canary_label`, `canary_percent`), or, when `canary_file` is set, from a JSON file
`{"canary_label": "canary", "canary_percent": 10.0}` that is re-read when it changes, so a rollout
(k8s/rollout.py, through a mounted ConfigMap) moves traffic without restarting the gateway. A file
that is missing or invalid keeps the last good split and is logged, never crashes a request.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.settings import VERSION_LABEL_PATTERN, Settings

logger = logging.getLogger(__name__)

RECHECK_SECONDS = 1.0  # stat the file at most this often


@dataclass(frozen=True)
class CanarySplit:
    label: str
    percent: float  # 0 = off

    @property
    def enabled(self) -> bool:
        return self.percent > 0


class CanarySplitError(ValueError):
    """The canary file's content is not a valid split."""


def parse_split(text: str, default_label: str) -> CanarySplit:
    try:
        content = json.loads(text)
    except ValueError as error:
        raise CanarySplitError(f"not JSON: {error}") from error
    if not isinstance(content, dict):
        raise CanarySplitError("expected a JSON object")
    label = content.get("canary_label", default_label)
    percent = content.get("canary_percent", 0.0)
    if not isinstance(label, str) or not VERSION_LABEL_PATTERN.match(label):
        raise CanarySplitError(f"canary_label {label!r} is not a version label")
    if isinstance(percent, bool) or not isinstance(percent, int | float) or not 0.0 <= percent <= 100.0:
        raise CanarySplitError(f"canary_percent {percent!r} is not a number in [0, 100]")
    return CanarySplit(label, float(percent))


class CanarySplitSource:
    """The current split: fixed from settings, or followed from `settings.canary_file`."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = settings.canary_file
        self.stable_label = settings.version_label
        self._split = CanarySplit(settings.canary_label, settings.canary_percent)
        self._clock = clock
        self._checked_at = float("-inf")
        self._file_state: tuple[int, int] | None = None  # (mtime_ns, size) of the last read
        self._lock = threading.Lock()

    def current(self) -> CanarySplit:
        if self.path is None:
            return self._split
        with self._lock:
            now = self._clock()
            if now - self._checked_at >= RECHECK_SECONDS:
                self._checked_at = now
                self._reload()
            return self._split

    def _reload(self) -> None:
        assert self.path is not None
        try:
            status = self.path.stat()
            state = (status.st_mtime_ns, status.st_size)
            if state == self._file_state:
                return
            split = parse_split(self.path.read_text(), self._split.label)
        except (OSError, CanarySplitError) as error:
            if self._file_state is not None or self._split.enabled:
                logger.warning("canary file %s unusable (%s); keeping %s", self.path, error, self._split)
            self._file_state = None
            return
        if split.enabled and split.label == self.stable_label:
            logger.warning("canary file %s names the stable label %r; ignored", self.path, split.label)
            return
        self._file_state = state
        if split != self._split:
            logger.info("canary split now %g%% -> label %r (from %s)", split.percent, split.label, self.path)
        self._split = split
