"""Reading a version's `model_card.json` (written by export/model_card.py): the one reader."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from common.signatures import MODEL_CARD_FILE

logger = logging.getLogger(__name__)


def read_model_card(version_dir: Path) -> dict[str, Any] | None:
    """The card of the version at `version_dir`; None when it is missing, unreadable or not an object."""
    path = Path(version_dir) / MODEL_CARD_FILE
    try:
        card = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        logger.warning("no readable model card at %s: %s", path, error)
        return None
    return card if isinstance(card, dict) else None
