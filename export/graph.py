"""The served graph: the contract's signatures (serving, bytes, explain) around a network of images to logits.

`ServingModule` takes any *network* callable (uint8 [N, 256, 256, 3] -> logit [N, 1]): the Keras
classifier itself (plain fp32 export), or a frozen / optimized graph (see export.optimize). The
signatures add what clients need on top: the calibrated probability sigmoid(logit / T), the raw
logit, the decision threshold and the label, so no client has to know T or the threshold.

The bytes signature decodes inside the graph. It reproduces common.preprocessing's canonical
normalization: JPEG decoded with the accurate integer DCT (Pillow's default; the fast DCT TensorFlow
uses by default is off by up to 14 levels), alpha composited over white, the longest side scaled
down to 384 with an antialiased Lanczos-3 filter, the centred 256x256 window with mirrored edges.
What it does not do: EXIF orientation (Pillow rotates, the graph does not), TIFF, and Pillow's
DCT-scaled JPEG decoding of very large files. The stated tolerance is in export.validate and
tests/export/test_bytes_parity.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tensorflow as tf

from common import signatures
from common.preprocessing import (
    DATASET_JPEG_QUALITY,
    DATASET_MAX_SIDE,
    DEFAULT_MAX_PIXELS,
    IMAGE_SIZE,
    save_like_dataset,
)

Network = Callable[[tf.Tensor], tf.Tensor]


@dataclass(frozen=True)
class TensorContract:
    """dtype and shape of one signature tensor; -1 is the batch dimension."""

    dtype: tf.DType
    shape: tuple[int, ...]

    def describe(self) -> dict[str, Any]:
        return {"dtype": self.dtype.name, "shape": list(self.shape)}


_OUTPUTS = {
    signatures.OUTPUT_PROBABILITY: TensorContract(tf.float32, (-1,)),
    signatures.OUTPUT_LOGIT: TensorContract(tf.float32, (-1,)),
    signatures.OUTPUT_THRESHOLD: TensorContract(tf.float32, (-1,)),
    signatures.OUTPUT_LABEL: TensorContract(tf.int32, (-1,)),
}

# signature name -> (inputs, outputs): checked by the validation gate, written into the model card.
SIGNATURE_CONTRACT: dict[str, tuple[dict[str, TensorContract], dict[str, TensorContract]]] = {
    signatures.SERVING_SIGNATURE: (
        {signatures.IMAGE_INPUT: TensorContract(tf.uint8, (-1, IMAGE_SIZE, IMAGE_SIZE, 3))},
        _OUTPUTS,
    ),
    signatures.BYTES_SIGNATURE: (
        {signatures.BYTES_INPUT: TensorContract(tf.string, (-1,))},
        _OUTPUTS,
    ),
    signatures.EXPLAIN_SIGNATURE: (
        {signatures.IMAGE_INPUT: TensorContract(tf.uint8, (-1, IMAGE_SIZE, IMAGE_SIZE, 3))},
        _OUTPUTS
        | {
            signatures.OUTPUT_HEATMAP: TensorContract(
                tf.float32, (-1, signatures.EXPLAIN_GRID, signatures.EXPLAIN_GRID)
            )
        },
    ),
}
# The explain signature's occlusion: a cell keeps its colours and layout but loses its fine detail
# (a box blur of this many pixels), which is what the detector's low-level statistics read.
OCCLUSION_BLUR_PIXELS = 9

_WHITE = 255.0


def header_pixel_count(image_bytes: tf.Tensor) -> tf.Tensor:
    """Width x height read from the file header (JPEG, PNG, GIF, BMP; 0 for other formats), int64.

    Lets the graph refuse a decompression bomb before decoding it, as the gateway does with Pillow.
    """

    def byte_values(start: int, length: int) -> tf.Tensor:
        raw = tf.io.decode_raw(tf.strings.substr(image_bytes, start, length), tf.uint8)
        return tf.cast(raw, tf.int64)

    def big_endian(start: int, length: int) -> tf.Tensor:
        values = byte_values(start, length)
        return tf.reduce_sum(
            values * tf.constant([256**power for power in reversed(range(length))], tf.int64)
        )

    def little_endian(start: int, length: int) -> tf.Tensor:
        values = byte_values(start, length)
        return tf.reduce_sum(values * tf.constant([256**power for power in range(length)], tf.int64))

    def jpeg() -> tf.Tensor:
        shape = tf.cast(tf.io.extract_jpeg_shape(image_bytes), tf.int64)
        return shape[0] * shape[1]

    def png() -> tf.Tensor:
        return big_endian(16, 4) * big_endian(20, 4)

    def gif() -> tf.Tensor:
        return little_endian(6, 2) * little_endian(8, 2)

    def bmp() -> tf.Tensor:
        height = little_endian(22, 4)
        # A negative (top-down) height is stored as two's complement.
        height = tf.where(height >= 2**31, 2**32 - height, height)
        return little_endian(18, 4) * height

    length = tf.strings.length(image_bytes)
    magic = tf.strings.substr(image_bytes, 0, tf.minimum(length, 8))
    return tf.case(
        [
            (tf.io.is_jpeg(image_bytes), jpeg),
            (tf.logical_and(length >= 24, tf.equal(magic, b"\x89PNG\r\n\x1a\n")), png),
            (
                tf.logical_and(
                    length >= 10, tf.strings.regex_full_match(tf.strings.substr(magic, 0, 6), "GIF8[79]a")
                ),
                gif,
            ),
            (tf.logical_and(length >= 26, tf.equal(tf.strings.substr(magic, 0, 2), b"BM")), bmp),
        ],
        default=lambda: tf.constant(0, tf.int64),
        exclusive=False,
    )


def _to_rgb(image: tf.Tensor) -> tf.Tensor:
    """uint8 [H, W, 1..4] -> float32 RGB [H, W, 3], alpha composited over white (as common.preprocessing)."""
    pixels = tf.cast(image, tf.float32)
    opaque = tf.fill(tf.shape(pixels)[:2], _WHITE)
    branches = [
        lambda: (tf.concat([pixels[..., :1]] * 3, axis=-1), opaque),  # grey
        lambda: (tf.concat([pixels[..., :1]] * 3, axis=-1), pixels[..., 1]),  # grey + alpha
        lambda: (pixels[..., :3], opaque),  # RGB
        lambda: (pixels[..., :3], pixels[..., 3]),  # RGBA
    ]
    color, alpha = tf.switch_case(tf.shape(pixels)[-1] - 1, branches)
    alpha = alpha[..., tf.newaxis] / _WHITE
    rgb = color * alpha + _WHITE * (1.0 - alpha)
    return tf.ensure_shape(rgb, [None, None, 3])


def decode_image_bytes(image_bytes: tf.Tensor, max_pixels: int = DEFAULT_MAX_PIXELS) -> tf.Tensor:
    """One encoded file (scalar string) -> uint8 [256, 256, 3], as common.preprocessing.decode_and_resize.

    Undecodable bytes and images over `max_pixels` raise InvalidArgumentError, which TF Serving
    answers as INVALID_ARGUMENT.
    """
    within_limit = tf.debugging.assert_less_equal(
        header_pixel_count(image_bytes),
        tf.constant(max_pixels, tf.int64),
        message=f"image has more than {max_pixels} pixels",
    )
    # The check must run before the decoder: nothing else orders them in the graph, and a bomb that
    # is decoded first takes gigabytes before the check fails.
    with tf.control_dependencies([within_limit]):
        pixels = tf.cond(
            tf.io.is_jpeg(image_bytes),
            # Pillow decodes JPEG with the accurate integer DCT; TensorFlow's default is the fast one.
            lambda: tf.cast(_decode_jpeg(image_bytes), tf.float32),
            lambda: _to_rgb(tf.io.decode_image(image_bytes, channels=0, expand_animations=False)),
        )
    return canonical_window(pixels, jpeg_in_dataset_form(image_bytes))


def _decode_jpeg(image_bytes: tf.Tensor) -> tf.Tensor:
    return tf.io.decode_jpeg(image_bytes, channels=3, dct_method="INTEGER_ACCURATE")


def _dataset_jpeg_markers() -> tuple[bytes, bytes]:
    """(quantization segments, colour components of the frame header) that Pillow writes at the data
    set's quality: the byte runs every data set file holds."""
    from PIL import Image

    data, position, quantization, components = save_like_dataset(Image.new("RGB", (8, 8))), 2, b"", b""
    while data[position] == 0xFF and data[position + 1] != 0xDA:  # segments up to the scan
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        segment = data[position : position + 2 + length]
        if segment[1] == 0xDB:
            quantization += segment
        elif segment[1] == 0xC0:
            components = segment[-10:]  # 3 components: Y 2x2, Cb 1x1, Cr 1x1 (4:2:0)
        position += 2 + length
    return quantization, components


def jpeg_in_dataset_form(image_bytes: tf.Tensor) -> tf.Tensor:
    """As common.preprocessing.in_dataset_form (the size is checked in canonical_window): a JPEG
    holding the data set's quality-90 tables and 4:2:0 frame, by their bytes. EXIF orientation is
    not read here, as the graph does not apply it."""

    def holds(marker: bytes) -> tf.Tensor:
        return tf.size(tf.strings.split(image_bytes, sep=marker)) > 1

    quantization, components = _dataset_jpeg_markers()
    return tf.logical_and(tf.io.is_jpeg(image_bytes), tf.logical_and(holds(quantization), holds(components)))


def canonical_window(pixels: tf.Tensor, in_dataset_form: tf.Tensor) -> tf.Tensor:
    """float32 RGB [H, W, 3] -> uint8 canonical image, as common.preprocessing.resize_to_model_input.

    Longest side scaled down to DATASET_MAX_SIDE (Lanczos-3, antialiased), saved as JPEG quality 90
    and decoded again unless the file was already in the data set's form (TensorFlow's encoder and
    Pillow's give the same pixels), then the centred window, short sides mirrored at the edges.
    """
    height, width = tf.shape(pixels)[0], tf.shape(pixels)[1]
    longest = tf.maximum(height, width)
    scale = tf.constant(float(DATASET_MAX_SIDE), tf.float64) / tf.cast(longest, tf.float64)
    # Python's round() in common.preprocessing.dataset_size rounds halves to even, as tf.round does.
    new_height = tf.maximum(1, tf.cast(tf.round(tf.cast(height, tf.float64) * scale), tf.int32))
    new_width = tf.maximum(1, tf.cast(tf.round(tf.cast(width, tf.float64) * scale), tf.int32))
    pixels = tf.cond(
        longest > DATASET_MAX_SIDE,
        lambda: tf.image.resize(pixels, [new_height, new_width], method="lanczos3", antialias=True),
        lambda: pixels,
    )
    pixels = tf.cast(tf.clip_by_value(tf.round(pixels), 0.0, _WHITE), tf.uint8)
    pixels = tf.cond(
        tf.logical_and(in_dataset_form, longest <= DATASET_MAX_SIDE),
        lambda: pixels,
        lambda: _decode_jpeg(
            tf.io.encode_jpeg(pixels, quality=DATASET_JPEG_QUALITY, chroma_downsampling=True)
        ),
    )

    def too_small(image: tf.Tensor) -> tf.Tensor:
        return tf.reduce_any(tf.shape(image)[:2] < IMAGE_SIZE)

    def mirror_once(image: tf.Tensor) -> tf.Tensor:
        # As numpy's "symmetric" padding; a pad can be at most the image's own size, hence the loop.
        shape = tf.shape(image)[:2]
        missing = tf.minimum(tf.maximum(IMAGE_SIZE - shape, 0), shape)
        before = missing // 2
        paddings = tf.stack(
            [
                tf.stack([before[0], missing[0] - before[0]]),
                tf.stack([before[1], missing[1] - before[1]]),
                [0, 0],
            ]
        )
        return tf.pad(image, paddings, mode="SYMMETRIC")

    pixels = tf.while_loop(
        too_small,
        lambda image: [mirror_once(image)],
        [pixels],
        shape_invariants=[tf.TensorShape([None, None, 3])],
    )[0]
    height, width = tf.shape(pixels)[0], tf.shape(pixels)[1]
    top, left = (height - IMAGE_SIZE) // 2, (width - IMAGE_SIZE) // 2
    return tf.ensure_shape(
        pixels[top : top + IMAGE_SIZE, left : left + IMAGE_SIZE], [IMAGE_SIZE, IMAGE_SIZE, 3]
    )


def decode_image_batch(image_bytes: tf.Tensor, max_pixels: int = DEFAULT_MAX_PIXELS) -> tf.Tensor:
    """string [N] -> uint8 [N, 256, 256, 3]."""
    return tf.map_fn(
        lambda one: decode_image_bytes(one, max_pixels),
        image_bytes,
        fn_output_signature=tf.TensorSpec([IMAGE_SIZE, IMAGE_SIZE, 3], tf.uint8),
    )


class _Untracked:
    """Holds the network callable out of tf.Module's tracking: only its graph is saved, via the signatures."""

    def __init__(self, network: Network) -> None:
        self.network = network


class ServingModule(tf.Module):
    """The three signatures of the contract around `network` (serving, bytes, explain).

    `variables_owner` is whatever holds the network's variables (the Keras model for the plain
    export) so tf.saved_model.save writes them; frozen networks have none.
    """

    def __init__(
        self,
        network: Network,
        temperature: float,
        threshold: float,
        variables_owner: Any = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        super().__init__(name="aidetect_serving")
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        self._network = _Untracked(network)
        self.temperature = float(temperature)
        self.threshold = float(threshold)
        self.max_pixels = int(max_pixels)
        if variables_owner is not None:
            self.variables_owner = variables_owner

    def _outputs(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        logit = tf.reshape(tf.cast(self._network.network(images), tf.float32), [-1])
        probability = tf.sigmoid(logit / tf.constant(self.temperature, tf.float32))
        threshold = tf.fill(tf.shape(probability), tf.constant(self.threshold, tf.float32))
        return {
            signatures.OUTPUT_PROBABILITY: probability,
            signatures.OUTPUT_LOGIT: logit,
            signatures.OUTPUT_THRESHOLD: threshold,
            signatures.OUTPUT_LABEL: tf.cast(probability >= threshold, tf.int32),
        }

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 3], tf.uint8, name=signatures.IMAGE_INPUT)
        ]
    )
    def serve_image(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._outputs(image)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=signatures.BYTES_INPUT)])
    def serve_image_bytes(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._outputs(decode_image_batch(image_bytes, self.max_pixels))

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 3], tf.uint8, name=signatures.IMAGE_INPUT)
        ]
    )
    def explain_image(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
        """The serving outputs plus `heatmap`: blur-occlusion sensitivity on an 8x8 grid.

        For each cell, the logit of the image minus the logit of the image whose cell lost its fine
        detail (box blur): positive where the detail pushes the score toward AI-generated. The
        network runs on the 64 variants of one image at a time (65 network passes per image), so
        it works on any network the module wraps, frozen graphs included, and on TF Serving as is.
        """
        outputs = self._outputs(image)
        grid, cell_count = signatures.EXPLAIN_GRID, signatures.EXPLAIN_GRID**2
        cells = tf.reshape(tf.eye(cell_count), [cell_count, grid, grid, 1])
        masks = tf.image.resize(cells, [IMAGE_SIZE, IMAGE_SIZE], method="nearest")  # [64, 256, 256, 1]

        def heatmap(pixels: tf.Tensor) -> tf.Tensor:
            original = tf.cast(pixels, tf.float32)[tf.newaxis]
            blurred = tf.nn.avg_pool2d(original, OCCLUSION_BLUR_PIXELS, 1, "SAME")
            variants = tf.cast(tf.round(original * (1.0 - masks) + blurred * masks), tf.uint8)
            logits = tf.reshape(tf.cast(self._network.network(variants), tf.float32), [grid, grid])
            base = tf.reshape(tf.cast(self._network.network(pixels[tf.newaxis]), tf.float32), [])
            return base - logits

        outputs[signatures.OUTPUT_HEATMAP] = tf.map_fn(
            heatmap, image, fn_output_signature=tf.TensorSpec([grid, grid], tf.float32), parallel_iterations=1
        )
        return outputs

    def signature_functions(self) -> dict[str, Any]:
        return {
            signatures.SERVING_SIGNATURE: self.serve_image.get_concrete_function(),
            signatures.BYTES_SIGNATURE: self.serve_image_bytes.get_concrete_function(),
            signatures.EXPLAIN_SIGNATURE: self.explain_image.get_concrete_function(),
        }


def keras_logit_network(model: Any) -> Any:
    """The classifier cut at its pre-sigmoid `logit` layer: uint8 image -> logit [N, 1]."""
    import keras

    from training.models import LOGIT_LAYER

    # model.input (one tensor, not the one-element list model.inputs): called with one tensor.
    return keras.Model(model.input, model.get_layer(LOGIT_LAYER).output, name="logit_network")


def save_serving_module(module: ServingModule, directory: Path) -> None:
    """Write `module` as a SavedModel with its signatures (the folder must not exist yet)."""
    tf.saved_model.save(module, str(directory), signatures=module.signature_functions())
