"""The served network of a recipe computes what LOSO measured: Keras model == fitted head on features."""

from __future__ import annotations

import itertools
from pathlib import Path

import keras
import numpy as np
import pytest

from common.preprocessing import IMAGE_SIZE
from training import features, models, recipes

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def extractor_and_images() -> tuple[keras.Model, keras.Model, np.ndarray]:
    keras.utils.set_random_seed(3)
    extractor = features.build_extractor("efficientnet_lite0", weights=None)
    tapped = extractor.get_layer(models.BASE_LAYER)
    pixels = np.random.default_rng(0).integers(0, 256, (4, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    return extractor, tapped, pixels


@pytest.mark.parametrize(
    ("head", "test_time_flip"), [("logistic", False), ("reference", False), ("logistic", True)]
)
def test_keras_model_reproduces_the_fitted_head(
    extractor_and_images: tuple[keras.Model, keras.Model, np.ndarray],
    head: str,
    test_time_flip: bool,
    tmp_path: Path,
) -> None:
    extractor, tapped, pixels = extractor_and_images
    features = np.asarray(extractor(pixels))
    rng = np.random.default_rng(1)
    columns = np.sort(rng.choice(features.shape[1], 50, replace=False))
    widths = [50, 8, 1] if head == "reference" else [50, 1]
    layers = [
        [
            rng.normal(size=(inputs, outputs)).astype(np.float32) * 0.1,
            rng.normal(size=outputs).astype(np.float32),
        ]
        for inputs, outputs in itertools.pairwise(widths)
    ]
    fitted = recipes.FittedHead(
        head, columns, features[:, columns].mean(0), features[:, columns].std(0) + 1e-3, layers
    )
    model = models.build_statistics_classifier(
        "efficientnet_lite0", columns.tolist(), fitted.feature_mean, fitted.feature_scale, layers,
        weights=None, test_time_flip=test_time_flip,
    )  # fmt: skip
    model.get_layer(models.BASE_LAYER).set_weights(tapped.get_weights())
    expected = fitted.logits(features)
    if test_time_flip:
        expected = (expected + fitted.logits(np.asarray(extractor(pixels[:, :, ::-1])))) / 2
    outputs = models.logit_model(model).predict(pixels, verbose=0)
    np.testing.assert_allclose(np.asarray(outputs["logit"]).reshape(-1), expected, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(outputs["probability"], 1 / (1 + np.exp(-outputs["logit"])), atol=1e-6)

    model.save(tmp_path / "model.keras")
    reloaded = models.load_classifier(tmp_path / "model.keras")
    np.testing.assert_allclose(reloaded.predict(pixels, verbose=0), outputs["probability"], atol=1e-6)


def test_combined_backbones_compute_the_head_on_their_statistics_side_by_side(tmp_path: Path) -> None:
    """Two backbones in one model == the head on the two extractors' statistics concatenated,
    with the columns features.groups_for picks for the combined name (the FeatureStore's layout)."""
    keras.utils.set_random_seed(5)
    parts = ("efficientnet_lite0", "efficientnet_lite1")
    combined = models.BACKBONE_SEPARATOR.join(parts)
    pixels = np.random.default_rng(2).integers(0, 256, (2, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    tapped, statistics = [], []
    for part in parts:
        extractor = features.build_extractor(part, weights=None)
        tapped.append(extractor.get_layer(models.BASE_LAYER))
        statistics.append(np.asarray(extractor(pixels)))
    features_side_by_side = np.concatenate(statistics, axis=1)

    groups = features.groups_for(combined)
    widths = [features.groups_for(part).columns(recipes.STAGE_GROUPS) for part in parts]
    first_width = sum(features.groups_for(parts[0]).widths)
    columns = groups.columns(recipes.STAGE_GROUPS)
    np.testing.assert_array_equal(columns, np.concatenate([widths[0], widths[1] + first_width]))
    assert sum(groups.widths) == features_side_by_side.shape[1]

    rng = np.random.default_rng(4)
    layers = [
        [rng.normal(size=(len(columns), 8)).astype(np.float32) * 0.05, rng.normal(size=8).astype(np.float32)],
        [rng.normal(size=(8, 1)).astype(np.float32) * 0.1, rng.normal(size=1).astype(np.float32)],
    ]
    selected = features_side_by_side[:, columns]
    fitted = recipes.FittedHead("reference", columns, selected.mean(0), selected.std(0) + 1e-3, layers)
    model = models.build_statistics_classifier(
        combined, columns.tolist(), fitted.feature_mean, fitted.feature_scale, layers, weights=None
    )
    for part, base in zip(parts, tapped, strict=True):
        model.get_layer(f"{models.BASE_LAYER}_{part}").set_weights(base.get_weights())
    outputs = models.logit_model(model).predict(pixels, verbose=0)
    expected = fitted.logits(features_side_by_side)
    np.testing.assert_allclose(np.asarray(outputs["logit"]).reshape(-1), expected, rtol=1e-3, atol=1e-3)

    model.save(tmp_path / "model.keras")
    reloaded = models.load_classifier(tmp_path / "model.keras")
    np.testing.assert_allclose(reloaded.predict(pixels, verbose=0), outputs["probability"], atol=1e-6)


@pytest.mark.parametrize(
    "name", ["efficientnet_lite0+efficientnet_lite0", "efficientnet_lite0+efficientnet_lite9", "+"]
)
def test_a_combined_backbone_name_is_checked(name: str) -> None:
    with pytest.raises(ValueError, match="backbone"):
        models.backbone_parts(name)


def test_the_feature_store_puts_a_combined_backbones_parts_side_by_side(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    computed: list[tuple[str, str]] = []

    def fake_extract(examples: object, backbone: str, view: str, cache_dir: Path) -> np.ndarray:
        computed.append((backbone, view))
        return np.full((3, 2 if backbone.endswith("lite1") else 4), float(len(backbone)), dtype=np.float32)

    monkeypatch.setattr(features, "extract", fake_extract)
    store = features.FeatureStore([], tmp_path)
    combined = store.get("efficientnet_lite2+efficientnet_lite1", "clean")
    assert computed == [("efficientnet_lite2", "clean"), ("efficientnet_lite1", "clean")]
    parts = [store.get("efficientnet_lite2", "clean"), store.get("efficientnet_lite1", "clean")]
    np.testing.assert_array_equal(combined, np.concatenate(parts, axis=1))
    assert combined.shape == (3, 6)
    # The combined matrix did not keep its parts in memory: asked alone, they come from the cache again.
    assert computed == [("efficientnet_lite2", "clean"), ("efficientnet_lite1", "clean")] * 2
    # Parts already in memory are used as they are.
    swapped = store.get("efficientnet_lite1+efficientnet_lite2", "clean")
    np.testing.assert_array_equal(swapped, np.concatenate(parts[::-1], axis=1))
    assert len(computed) == 4
