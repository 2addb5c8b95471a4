"""Where the model looked: the model server's heatmap laid over the image it saw (issue 16).

The heatmap comes from the exported model's `explain_image` signature (export/graph.py: blur
occlusion on an 8x8 grid, the change of the logit when a cell loses its fine detail), computed by
the model server; the gateway, which loads no TensorFlow, only draws it over the canonical
256x256 image the model received: red where the detail pushes the score toward AI-generated,
blue where it pushes toward a real photo, transparent where it changes nothing.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from common.preprocessing import IMAGE_SIZE

METHOD = (
    "blur occlusion on an 8x8 grid: for each cell, the model's logit minus its logit when that cell "
    "loses its fine detail (positive: the detail there pushes the score toward AI-generated)"
)
MAX_ALPHA = 0.65
OVERLAY_QUALITY = 85
TOWARD_AI = np.array([220.0, 40.0, 30.0])
TOWARD_REAL = np.array([30.0, 90.0, 220.0])


def overlay(pixels: np.ndarray, heatmap: np.ndarray) -> bytes:
    """JPEG of `pixels` (uint8 [256, 256, 3]) with `heatmap` (float [8, 8]) drawn over it."""
    scale = float(np.max(np.abs(heatmap)))
    normalized = heatmap / scale if scale > 0 else np.zeros_like(heatmap)
    # Bilinear upsampling of the signed map (mode F keeps the sign and the fractions).
    smooth = np.asarray(
        Image.fromarray(normalized.astype(np.float32), mode="F").resize(
            (IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR
        )
    )[..., np.newaxis]
    colour = np.where(smooth > 0, TOWARD_AI, TOWARD_REAL)
    alpha = MAX_ALPHA * np.abs(smooth)
    blended = pixels.astype(np.float64) * (1 - alpha) + colour * alpha
    buffer = io.BytesIO()
    Image.fromarray(np.clip(np.round(blended), 0, 255).astype(np.uint8)).save(
        buffer, format="JPEG", quality=OVERLAY_QUALITY
    )
    return buffer.getvalue()


def explanation(pixels: np.ndarray, heatmap: np.ndarray) -> dict[str, object]:
    """The `explanation` field of an answer: the raw heatmap, the overlay as a data URL, the method."""
    encoded = base64.b64encode(overlay(pixels, heatmap)).decode("ascii")
    return {
        "heatmap": np.round(heatmap.astype(np.float64), 4).tolist(),
        "overlay": f"data:image/jpeg;base64,{encoded}",
        "method": METHOD,
    }
