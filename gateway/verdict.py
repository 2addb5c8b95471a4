"""The three-way verdict (`ai`, `real`, `inconclusive`): provenance first, then the pixel score's band.

The rule (docs/provenance.md, and the OpenAPI description of `verdict`):

1. A provenance finding that declares generation by an AI model (`implies == "ai"`: a valid C2PA
   manifest declaring a trained-algorithmic source, the IPTC digital source type in the XMP,
   generator parameters) decides `ai`, whatever the pixel score; the reason names it.
2. Otherwise the calibrated pixel score decides with the model's band: `ai` at or above `ai_from`,
   `real` below `real_below`, `inconclusive` between. The band is fitted on validation data so the
   error rate among decided answers meets a stated target (export/verdict_band.py), and it ships
   in the model card of that version: never set in the gateway. A model without a band (or a
   gateway that cannot read the card) gets the two-way answer at the model's own threshold.
3. Missing metadata proves nothing (most sites strip it on upload): the reason says so.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from common import model_card
from gateway.provenance import Finding

Verdict = Literal["ai", "real", "inconclusive"]
CARD_KEY = "verdict_band"
NOT_READ_NOTE = "this gateway does not read the file's metadata (read_provenance is off)"
NO_METADATA_NOTE = (
    "no metadata in the file declares generative AI (its absence proves nothing: most sites strip it)"
)


@dataclass(frozen=True)
class Band:
    """Pixel scores in [real_below, ai_from) are inconclusive."""

    real_below: float
    ai_from: float
    target_error: float

    def to_dict(self) -> dict[str, float]:
        return {"real_below": self.real_below, "ai_from": self.ai_from, "target_error": self.target_error}

    @classmethod
    def from_card(cls, card: dict[str, Any] | None) -> Band | None:
        entry = (card or {}).get(CARD_KEY)
        if not isinstance(entry, dict):
            return None
        try:
            band = cls(float(entry["real_below"]), float(entry["ai_from"]), float(entry["target_error"]))
        except (KeyError, TypeError, ValueError):
            return None
        return band if 0.0 <= band.real_below <= band.ai_from <= 1.0 else None


class BandSource:
    """The band of each model version, read from its model card (versions never change, so a card
    once found is kept; a version whose card is not readable yet is asked again next time)."""

    def __init__(self, model_card_directory: Path | None) -> None:
        self.directory = model_card_directory
        self._found: dict[int, Band | None] = {}
        self._lock = threading.Lock()

    def band(self, version: int) -> Band | None:
        if self.directory is None:
            return None
        with self._lock:
            if version in self._found:
                return self._found[version]
        card = model_card.read_model_card(self.directory / str(version))
        if card is None:
            return None
        band = Band.from_card(card)
        with self._lock:
            self._found[version] = band
        return band


def decide(
    findings: Iterable[Finding] | None, score: float, threshold: float, band: Band | None
) -> tuple[Verdict, str]:
    """(verdict, the reason in plain words) by the rule of this module's docstring; `findings` None:
    the gateway did not read the metadata (settings.read_provenance off)."""
    for finding in findings or ():
        if finding.implies == "ai":
            return "ai", (
                f"decided by the file's own metadata ({finding.kind.replace('_', ' ')}: see provenance), "
                f"whatever the pixel score ({score:.3f})"
            )
    if band is None:
        verdict: Verdict = "ai" if score >= threshold else "real"
        side = "at or above" if verdict == "ai" else "below"
        reason = (
            f"pixel score {score:.3f} is {side} the model's threshold {threshold:.3f} "
            "(this model ships no inconclusive band)"
        )
    elif score >= band.ai_from:
        verdict, reason = "ai", f"pixel score {score:.3f} is at or above {band.ai_from:.3f}"
    elif score < band.real_below:
        verdict, reason = "real", f"pixel score {score:.3f} is below {band.real_below:.3f}"
    else:
        verdict = "inconclusive"
        reason = (
            f"pixel score {score:.3f} lies in the model's inconclusive band [{band.real_below:.3f}, "
            f"{band.ai_from:.3f}): outside it, at most {band.target_error:.0%} of the validation "
            "images were answered wrongly"
        )
    return verdict, f"{reason}; {NO_METADATA_NOTE if findings is not None else NOT_READ_NOTE}"
