"""Frozen-backbone features, computed once per image and view and cached: what LOSO heads are fitted on.

A detector of generated images needs low-level statistics more than the last layer's semantics
(issue 12's probe), so the features are, for each *tap* (the output of EfficientNet-Lite stages
1..5 and of the head), the per-channel mean and standard deviation over the image
(:class:`ChannelStatistics`); the head's means are the classic pooled features. The same layer is
part of the served model (:func:`training.models.build_statistics_classifier`), so a head fitted on
cached features is the head of the exported network, computed the same way.

Views: the canonical image (``clean``), its mirror image (``flip``), and perturbations of the
decoded original applied to both classes alike before the canonical normalization (``jpeg``:
re-encoded at a random quality 60-95; ``rescale``: downscaled x0.5-0.9, bicubic; ``blur``:
Gaussian sigma 0.3-1.5), seeded per image, for training that cannot lean on compression or
resampling history. ``legacy224`` is the starter model's preprocessing (centre square, bilinear
224x224), kept only to measure today's recipe side by side.

Cache: ``<cache>/<backbone>/<view>.npz`` with the image paths and a key over the paths, file
sizes, backbone, view, the canonical geometry and ``FEATURES_VERSION``; a stale cache is
recomputed, never silently reused.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from PIL import Image

from common import preprocessing
from training import evaluate
from training.data import Example

logger = logging.getLogger("training.features")

VIEWS = ("clean", "flip", "jpeg", "rescale", "blur", "legacy224")
BATCH_SIZE = 32
LEGACY_SIZE = 224
FOLD_FROM_IMAGES = 500
# Part of the cache key: bump it whenever taps, views or statistics change what a feature means.
FEATURES_VERSION = 1


@dataclass(frozen=True)
class FeatureGroups:
    """Column ranges of the feature matrix: per tap, its channel means and standard deviations."""

    names: tuple[str, ...]  # e.g. "stage1_mean", "stage1_std", ..., "head_mean", "head_std"
    widths: tuple[int, ...]

    def columns(self, selected: Sequence[str]) -> np.ndarray:
        unknown = set(selected) - set(self.names)
        if unknown:
            raise ValueError(f"unknown feature groups {sorted(unknown)}; known: {list(self.names)}")
        edges = np.concatenate([[0], np.cumsum(self.widths)])
        return np.concatenate(
            [
                np.arange(edges[index], edges[index + 1])
                for index, name in enumerate(self.names)
                if name in selected
            ]
        )


def feature_groups(tapped_base: object) -> FeatureGroups:
    """Column layout of :func:`build_extractor`'s output for a base from models.build_tapped_base."""
    from training.models import TAP_NAMES

    names, widths = [], []
    for tap, output in zip(TAP_NAMES, tapped_base.outputs, strict=True):  # type: ignore[attr-defined]
        names += [f"{tap}_mean", f"{tap}_std"]
        widths += [int(output.shape[-1])] * 2
    return FeatureGroups(tuple(names), tuple(widths))


def _rng_for(example: Example, view: str) -> np.random.Generator:
    seed = int.from_bytes(hashlib.sha256(f"{example.path.name}|{view}".encode()).digest()[:8], "little")
    return np.random.default_rng(seed)


def legacy_square_224(image: Image.Image) -> np.ndarray:
    """The starter model's preprocessing (centre square, bilinear 224): for today's recipe only."""
    side = min(image.size)
    left, top = (image.size[0] - side) // 2, (image.size[1] - side) // 2
    square = image.crop((left, top, left + side, top + side))
    return np.asarray(square.resize((LEGACY_SIZE, LEGACY_SIZE), Image.Resampling.BILINEAR), dtype=np.uint8)


def view_pixels(example: Example, view: str) -> np.ndarray:
    """uint8 pixels of one example in one view (the canonical image, perturbed as the view says).

    The perturbed views are not compressed again after the perturbation (step 4 of the canonical
    normalization): they were measured and the shipped model trained that way.
    """
    if view in ("clean", "flip"):
        pixels = preprocessing.decode_and_resize(example.path.read_bytes())
        return np.ascontiguousarray(pixels[:, ::-1]) if view == "flip" else pixels
    image = preprocessing.open_image(example.path.read_bytes())
    if view == "legacy224":
        return legacy_square_224(image)
    rng = _rng_for(example, view)
    # The robustness evaluation's perturbations (training.evaluate), at random strengths.
    if view == "jpeg":
        image = evaluate.jpeg(int(rng.integers(60, 96)))(image)
    elif view == "rescale":
        image = evaluate.downscale(float(rng.uniform(0.5, 0.9)))(image)
    elif view == "blur":
        image = evaluate.blur(float(rng.uniform(0.3, 1.5)))(image)
    else:
        raise ValueError(f"unknown view {view!r}; known: {VIEWS}")
    return preprocessing.resize_to_model_input(image, recompress=False)


def build_extractor(backbone: str, weights: str | None = "imagenet") -> Any:
    """uint8 [N, H, W, 3] -> float32 [N, features]: the statistics of every tap, concatenated (the
    tapped base is the layer named `training.models.BASE_LAYER`)."""
    import keras

    from training import models

    base = models.build_tapped_base(backbone, weights)  # refuses backbones without taps
    images = keras.Input(shape=(None, None, 3), dtype="uint8")
    normalized = models.BackboneNormalization(models.backbone_spec(backbone).normalization)(images)
    return keras.Model(images, models.ChannelStatistics()(base(normalized, training=False)))


def folded_function(model: object, image_size: int) -> Callable[[tf.Tensor], tf.Tensor]:
    """`model` frozen with its batch norms folded into the convolutions (export.optimize): ~25% faster."""
    from export.optimize import fold_batch_norms, freeze_network, graph_def_function

    graph_def, input_name, output_name = freeze_network(model, image_size)
    folded, _ = fold_batch_norms(graph_def, [output_name.split(":")[0]])
    return graph_def_function(folded, input_name, output_name)


def _cache_key(examples: Sequence[Example], backbone: str, view: str) -> str:
    """What the features depend on: files, backbone, view, canonical geometry, FEATURES_VERSION."""
    digest = hashlib.sha256(
        f"{backbone}|{view}|{FEATURES_VERSION}|{preprocessing.IMAGE_SIZE}|{preprocessing.DATASET_MAX_SIDE}|"
        f"{preprocessing.DRAFT_MARGIN}|".encode()
    )
    for example in examples:
        # Resolved: `../shared/data` and `/work/shared/data` are the same files, one cache.
        digest.update(f"{example.path.resolve()}|{example.path.stat().st_size}|".encode())
    return digest.hexdigest()


def extract(examples: Sequence[Example], backbone: str, view: str, cache_dir: Path) -> np.ndarray:
    """float32 [len(examples), features] for one backbone and view, from the cache when it is current."""
    cache_path = cache_dir / backbone / f"{view}.npz"
    key = _cache_key(examples, backbone, view)
    if cache_path.is_file():
        with np.load(cache_path) as cached:
            if str(cached["key"]) == key:
                return np.asarray(cached["features"])
        logger.info("%s is stale: recomputing", cache_path)
    model = build_extractor(backbone)
    image_size = LEGACY_SIZE if view == "legacy224" else preprocessing.IMAGE_SIZE
    # Folding costs ~10 s of graph work and pays off only over many images.
    extractor = (
        folded_function(model, image_size) if len(examples) >= FOLD_FROM_IMAGES else tf.function(model)
    )
    batches = []
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=2) as pool:
        for start in range(0, len(examples), BATCH_SIZE):
            chunk = examples[start : start + BATCH_SIZE]
            pixels = np.stack(list(pool.map(lambda example: view_pixels(example, view), chunk)))
            batches.append(np.asarray(extractor(tf.constant(pixels)), dtype=np.float32))
            if (start // BATCH_SIZE) % 20 == 0:
                logger.info(
                    "%s/%s: %d/%d images, %.0f s", backbone, view, start + len(chunk), len(examples),
                    time.monotonic() - started,
                )  # fmt: skip
    features = np.concatenate(batches)
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = cache_path.with_suffix(".tmp.npz")
    np.savez(
        temporary, features=features, key=key, paths=np.asarray([str(example.path) for example in examples])
    )
    temporary.replace(cache_path)
    logger.info(
        "%s/%s: %d images in %.0f s -> %s",
        backbone,
        view,
        len(examples),
        time.monotonic() - started,
        cache_path,
    )
    return features


@functools.cache
def groups_for(backbone: str) -> FeatureGroups:
    """The column layout of `backbone`'s features (builds the base without weights: cheap).

    A combined backbone's layout is its parts' side by side: a group name selects that group in
    every part.
    """
    from training import models

    parts = [feature_groups(models.build_tapped_base(part, None)) for part in models.backbone_parts(backbone)]
    names = tuple(name for part in parts for name in part.names)
    return FeatureGroups(names, tuple(width for part in parts for width in part.widths))


class FeatureStore:
    """Features per (backbone, view) for one list of examples, computed once and cached on disk."""

    def __init__(self, examples: Sequence[Example], cache_dir: Path) -> None:
        self.examples = list(examples)
        self.cache_dir = cache_dir
        self._loaded: dict[tuple[str, str], np.ndarray] = {}

    def get(self, backbone: str, view: str) -> np.ndarray:
        """float32 [images, features]; a combined backbone's are its parts' side by side (each part
        cached on disk; in memory only the matrix asked for, so a part is not held twice)."""
        from training.models import backbone_parts

        if (backbone, view) not in self._loaded:
            parts = [
                self._loaded[(part, view)]
                if (part, view) in self._loaded
                else extract(self.examples, part, view, self.cache_dir)
                for part in backbone_parts(backbone)
            ]
            self._loaded[(backbone, view)] = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
        return self._loaded[(backbone, view)]
