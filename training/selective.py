"""The inconclusive band of the three-way verdict: selective classification with a stated error rate.

The model answers `ai` for calibrated scores >= `ai_from`, `real` below `real_below`, and
`inconclusive` between (gateway/verdict.py). The band is symmetric in log-odds around the decision
threshold, `logit(threshold) -/+ width`, so one number orders every candidate from the most
cautious (wide) to the boldest (narrow). It is chosen by Learn-then-Test (Angelopoulos, Bates,
Candès, Jordan, Lei, 2021) with fixed-sequence testing: walking from wide to narrow, each width is
accepted while a one-sided binomial test rejects "the error rate among decided answers exceeds
`target_error`" at level `delta`, and the walk stops at the first width it cannot reject; the
narrowest accepted width ships. For new images exchangeable with the calibration images, the error
rate among decided answers is then at most `target_error` with probability at least 1 - `delta`
over the calibration draw. Images from sources the calibration never saw are not exchangeable with
it: the leave-one-source-out report measures how far the guarantee carries there.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import special, stats

TARGET_ERROR = 0.10
# As in the Learn-then-Test paper's experiments; 611 calibration images give little power at 0.05.
DELTA = 0.10
# Widths (log-odds) tried, from the widest to 0 (no band), in steps of 0.5; the walk starts at the
# first one that leaves at least MIN_DECIDED images decided (labels play no part in that start).
# A finer grid stops at the first local fluctuation of a few hundred images (docs/provenance.md).
WIDTHS = np.round(np.arange(6.0, -0.001, -0.5), 2)
MIN_DECIDED = 30


def band_edges(threshold: float, width: float) -> tuple[float, float]:
    """(real_below, ai_from) of the band `width` log-odds either side of `threshold`."""
    centre = float(special.logit(threshold))
    return float(special.expit(centre - width)), float(special.expit(centre + width))


def band_outcome(
    probabilities: np.ndarray, labels: np.ndarray, real_below: float, ai_from: float
) -> dict[str, Any]:
    """How the band answers these images: the share left inconclusive and the errors among the rest."""
    probabilities, labels = np.asarray(probabilities, dtype=np.float64), np.asarray(labels).astype(int)
    said_ai, said_real = probabilities >= ai_from, probabilities < real_below
    decided = said_ai | said_real
    errors = int(np.sum(said_ai & (labels == 0)) + np.sum(said_real & (labels == 1)))
    count, decided_count = len(labels), int(decided.sum())
    return {
        "images": count,
        "decided": decided_count,
        "inconclusive_share": round(1 - decided_count / count, 4) if count else math.nan,
        "decided_errors": errors,
        "decided_error_rate": round(errors / decided_count, 4) if decided_count else None,
        "ai_recall_decided": _share(said_ai & (labels == 1), labels == 1),
        "real_recall_decided": _share(said_real & (labels == 0), labels == 0),
    }


def _share(hits: np.ndarray, among: np.ndarray) -> float | None:
    return round(float(hits.sum() / among.sum()), 4) if among.sum() else None


def fit_band(
    probabilities: np.ndarray,
    labels: np.ndarray,
    threshold: float,
    target_error: float = TARGET_ERROR,
    delta: float = DELTA,
) -> dict[str, Any]:
    """The narrowest band Learn-then-Test accepts on these (calibration) images, with its outcome
    there. `width` None: not even the widest band could be shown to meet the target (every image
    is then inconclusive, `real_below` 0 and `ai_from` 1)."""
    probabilities, labels = np.asarray(probabilities, dtype=np.float64), np.asarray(labels).astype(int)
    accepted: float | None = None
    started = False
    for width in WIDTHS:
        real_below, ai_from = band_edges(threshold, float(width))
        outcome = band_outcome(probabilities, labels, real_below, ai_from)
        if not started and outcome["decided"] < MIN_DECIDED:
            continue  # too few decided images to test anything yet: the walk has not started
        started = True
        # H0: error rate among decided >= target. p-value: P(Binomial(decided, target) <= errors).
        p_value = float(stats.binom.cdf(outcome["decided_errors"], outcome["decided"], target_error))
        if p_value > delta:
            break
        accepted = float(width)
    real_below, ai_from = band_edges(threshold, accepted) if accepted is not None else (0.0, 1.0)
    return {
        "real_below": round(real_below, 6),
        "ai_from": round(ai_from, 6),
        "target_error": target_error,
        "delta": delta,
        "width_log_odds": accepted,
        "rule": (
            f"Learn-then-Test, fixed-sequence binomial tests over band widths in log-odds around the "
            f"threshold: error rate among decided answers <= {target_error:g} with probability "
            f">= {1 - delta:g} for images like the calibration images"
        ),
        "calibration": band_outcome(probabilities, labels, real_below, ai_from),
    }
