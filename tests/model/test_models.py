"""The backbone builder and the reference head."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from common.preprocessing import IMAGE_SIZE
from training import models

pytestmark = pytest.mark.model


@pytest.mark.parametrize("backbone", ["resnet50", "efficientnet_lite0"])
def test_classifier_has_the_reference_head_and_a_frozen_base(backbone: str) -> None:
    model = models.build_classifier(backbone, weights=None)
    models.compile_classifier(model)
    assert model.input.dtype == "uint8" and tuple(model.input.shape) == (None, IMAGE_SIZE, IMAGE_SIZE, 3)
    base = model.get_layer(models.BASE_LAYER)
    assert not base.trainable
    hidden = model.get_layer("hidden")
    assert hidden.units == 150 and hidden.activation.__name__ == "relu"
    assert hidden.kernel_regularizer.get_config()["l2"] == pytest.approx(0.01)
    assert model.get_layer("dropout").rate == 0.5
    assert model.get_layer(models.LOGIT_LAYER).units == 1
    assert model.get_layer(models.PROBABILITY_LAYER).activation.__name__ == "sigmoid"
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    assert float(model.optimizer.learning_rate) == pytest.approx(1e-3)
    assert isinstance(model.loss, keras.losses.BinaryCrossentropy)
    trainable = {weight.path.split("/")[0] for weight in model.trainable_weights}
    assert trainable == {"hidden", "logit"}


def test_probability_is_sigmoid_of_logit_and_save_load_round_trip(tmp_path: Path) -> None:
    model = models.build_classifier("efficientnet_lite0", weights=None)
    images = np.random.default_rng(0).integers(0, 256, (2, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    outputs = models.logit_model(model).predict(images, verbose=0)
    assert np.allclose(outputs["probability"], 1 / (1 + np.exp(-outputs["logit"])), atol=1e-6)
    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = models.load_classifier(path)
    assert np.allclose(reloaded.predict(images, verbose=0), outputs["probability"], atol=1e-6)


def test_resnet50_reads_a_local_weights_file(tmp_path: Path) -> None:
    base = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(224, 224, 3))
    weights_path = tmp_path / "resnet50_notop.weights.h5"
    base.save_weights(weights_path)
    model = models.build_classifier("resnet50", weights=str(weights_path))
    loaded = model.get_layer(models.BASE_LAYER).get_layer("conv1_conv").kernel.numpy()
    assert np.array_equal(loaded, base.get_layer("conv1_conv").kernel.numpy())


def test_missing_weights_file_and_unknown_backbone_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        models.build_classifier("resnet50", weights=str(tmp_path / "missing.h5"))
    with pytest.raises(ValueError, match="unknown backbone"):
        models.build_classifier("vgg16", weights=None)


@pytest.mark.parametrize(("backbone", "blocks"), [("resnet50", 1), ("efficientnet_lite0", 3)])
def test_fine_tuning_unfreezes_only_top_blocks_without_batch_norm(backbone: str, blocks: int) -> None:
    model = models.build_classifier(backbone, weights=None)
    count = models.unfreeze_top_blocks(model, backbone, blocks)
    base = model.get_layer(models.BASE_LAYER)
    trainable = [layer for layer in base.layers if layer.trainable]
    assert count == len(trainable) > 0
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in trainable)
    assert len(trainable) < len(base.layers) / 3  # the lower blocks stay frozen
