"""The canary split: which share of unpinned requests goes to the canary version label.

From settings (`canary_label`, `canary_percent`), or, when `canary_file` is set, from a JSON file
`{"canary_label": "canary", "canary_percent": 10.0}` that a thread re-reads when it changes, so a
rollout (k8s/rollout.py, through a mounted ConfigMap) moves traffic without restarting the
gateway. Requests only read the last split: no file I/O on the request path. Only a small regular
file of UTF-8 JSON is read (a FIFO, a device or a 300 MiB file is refused without reading it); a
file that is unusable keeps the last good split, is logged, and makes /ready fail until it is
fixed. A missing file means no change.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

from gateway.settings import VERSION_LABEL_PATTERN, Settings

logger = logging.getLogger(__name__)

RECHECK_SECONDS = 1.0  # the thread stats the file this often
MAX_FILE_BYTES = 64 * 1024  # a split is ~60 bytes


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
    except (ValueError, RecursionError) as error:
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


def read_small_text(path: Path) -> str:
    """A small regular file's UTF-8 text; anything else raises CanarySplitError (OSError if
    the file cannot be opened). Checked on the open descriptor, so a FIFO never blocks a read."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(descriptor, "rb") as stream:
        status = os.fstat(stream.fileno())
        if not stat.S_ISREG(status.st_mode):
            raise CanarySplitError("not a regular file")
        if status.st_size > MAX_FILE_BYTES:
            raise CanarySplitError(f"{status.st_size:,} bytes; a split file is at most {MAX_FILE_BYTES:,}")
        data = stream.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise CanarySplitError(f"over {MAX_FILE_BYTES:,} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CanarySplitError(f"not UTF-8 text ({error})") from error


class CanarySplitSource:
    """The current split: fixed from settings, or followed from `settings.canary_file` by a thread
    (`start`/`close`, the app's lifespan); `refresh` is one pass of that thread."""

    def __init__(self, settings: Settings) -> None:
        self.path = settings.canary_file
        self.stable_label = settings.version_label
        self._split = CanarySplit(settings.canary_label, settings.canary_percent)
        self._file_state: tuple[int, int, int] | None = None  # (inode, mtime_ns, size) last read
        self.problem: str | None = None  # why the file is unusable now, for /ready
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def current(self) -> CanarySplit:
        return self._split

    def start(self) -> None:
        if self.path is None or self._thread is not None:
            return
        self.refresh()
        self._thread = threading.Thread(target=self._follow, name="canary-file", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _follow(self) -> None:
        while not self._stop.wait(RECHECK_SECONDS):
            self.refresh()

    def refresh(self) -> None:
        if self.path is None:
            return
        try:
            status = self.path.stat()
            state = (status.st_ino, status.st_mtime_ns, status.st_size)
            if state == self._file_state and self.problem is None:
                return
            split = parse_split(read_small_text(self.path), self._split.label)
            if split.enabled and split.label == self.stable_label:
                raise CanarySplitError(f"it names the stable label {split.label!r}")
        except FileNotFoundError:
            self._file_state, self.problem = None, None  # no file: no change
            return
        except (OSError, CanarySplitError) as error:
            problem = f"canary file {self.path} unusable ({error}); keeping {self._split}"
            if problem != self.problem:
                logger.warning("%s", problem)
            self.problem = problem
            return
        self._file_state, self.problem = state, None
        if split != self._split:
            logger.info("canary split now %g%% -> label %r (from %s)", split.percent, split.label, self.path)
        self._split = split
