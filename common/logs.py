"""Logging, configured once per process at its entry point: one line format for every service and tool.

Lines are plain text, greppable by `request_id=` in the gateway. The services write to stdout,
except the model server, which writes to stderr as TF Serving does.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def configure_logging(level: str | int = "INFO", stream: TextIO | None = None) -> None:
    """Replace any earlier configuration (`force`): the entry point's settings decide."""
    logging.basicConfig(
        level=level.upper() if isinstance(level, str) else level,
        format=LOG_FORMAT,
        stream=sys.stdout if stream is None else stream,
        force=True,
    )
