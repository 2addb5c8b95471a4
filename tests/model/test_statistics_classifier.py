"""The served network of a recipe computes what LOSO measured: Keras model == fitted head on features."""

from __future__ import annotations

import itertools
from pathlib import Path

import keras
import numpy as np
import pytest

from common.preprocessing import IMAGE_SIZE
from training import models, recipes

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def extractor_and_images() -> tuple[keras.Model, keras.Model, np.ndarray]:
    keras.utils.set_random_seed(3)
    tapped = models.build_tapped_base("efficientnet_lite0", None)
    images = keras.Input(shape=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype="uint8")
    normalized = models.BackboneNormalization("lite")(images)
    extractor = keras.Model(images, models.ChannelStatistics()(tapped(normalized, training=False)))
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
