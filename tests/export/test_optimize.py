"""Graph rewrites of the export variants, on a small Keras network with non-trivial batch norms."""

from __future__ import annotations

import numpy as np
import pytest

from common.preprocessing import IMAGE_SIZE

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def small_network():  # type: ignore[no-untyped-def]
    """uint8 image -> logit with both conv patterns of the backbones: conv+bias+BN (ResNet50) and
    depthwise conv+BN (EfficientNet-Lite0), with random batch-norm statistics."""
    import keras

    keras.utils.set_random_seed(3)
    image = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), dtype="uint8", name="image")
    features = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(image)
    features = keras.layers.Conv2D(8, 3, strides=4, use_bias=True)(features)
    features = keras.layers.BatchNormalization(epsilon=1e-3)(features)
    features = keras.layers.ReLU(6.0)(features)
    features = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, use_bias=False)(features)
    features = keras.layers.BatchNormalization(epsilon=1e-3)(features)
    features = keras.layers.GlobalAveragePooling2D()(features)
    logit = keras.layers.Dense(1)(features)
    network = keras.Model(image, logit)
    rng = np.random.default_rng(0)
    for layer in network.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            channels = layer.gamma.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, channels),
                    rng.normal(0, 0.5, channels),
                    rng.normal(0, 0.5, channels),
                    rng.uniform(0.5, 2.0, channels),
                ]
            )
    return network


def test_batch_norms_fold_into_the_convolutions_without_changing_the_output(small_network) -> None:  # type: ignore[no-untyped-def]
    from collections import Counter

    import tensorflow as tf

    from export.optimize import fold_batch_norms, freeze_network, graph_def_function

    images = np.random.default_rng(1).integers(0, 256, (4, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    expected = np.asarray(small_network(images, training=False))
    graph_def, input_name, output_name = freeze_network(small_network)
    folded, folds = fold_batch_norms(graph_def, [output_name])
    assert folds == 2
    operations = Counter(node.op for node in folded.node)
    assert operations["Rsqrt"] == 0 and operations["BiasAdd"] >= 2
    assert operations["Conv2D"] == 1 and operations["DepthwiseConv2dNative"] == 1
    served = graph_def_function(folded, input_name, output_name)(tf.constant(images)).numpy()
    np.testing.assert_allclose(served, expected, rtol=1e-4, atol=1e-4)


def measured(ms_at_1: float, images_per_second_at_32: float, max_difference: float, flips: int = 0) -> dict:
    return {
        "speed": {
            "1": {"ms_per_batch": ms_at_1, "images_per_second": 1000 / ms_at_1},
            "32": {
                "ms_per_batch": 32000 / images_per_second_at_32,
                "images_per_second": images_per_second_at_32,
            },
        },
        "agreement": {"count": 500, "max_abs_probability_difference": max_difference, "label_flips": flips},
    }


def test_the_fastest_variant_within_the_tolerance_is_chosen() -> None:
    from export.optimize import Tolerance, choose_variant

    results = {
        "fp32": measured(20.0, 60.0, 1e-7),
        "frozen": measured(12.0, 110.0, 1e-6),
        "folded": measured(10.0, 130.0, 0.02),  # fastest, but outside the tolerance
    }
    assert choose_variant(results, Tolerance()) == "frozen"
    results["folded"]["agreement"]["max_abs_probability_difference"] = 0.004
    assert choose_variant(results, Tolerance()) == "folded"
    results["folded"]["agreement"]["label_flips"] = 1
    assert choose_variant(results, Tolerance()) == "frozen"


def test_fp32_stays_unless_another_variant_is_clearly_faster() -> None:
    from export.optimize import Tolerance, choose_variant

    results = {"fp32": measured(20.0, 60.0, 0.0), "frozen": measured(19.5, 61.0, 1e-7)}
    assert choose_variant(results, Tolerance()) == "fp32"


def test_no_variant_within_the_tolerance_is_an_error() -> None:
    from export.errors import NoVariantPassedError
    from export.optimize import Tolerance, choose_variant

    results = {"fp32": measured(20.0, 60.0, 1e-7, flips=0), "folded": measured(10.0, 130.0, 1e-6)}
    with pytest.raises(NoVariantPassedError):
        choose_variant(results, Tolerance(max_abs_probability_difference=1e-9))
