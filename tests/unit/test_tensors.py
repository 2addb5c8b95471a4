"""The one numpy <-> TensorProto codec (common.tensors): what TensorFlow writes it reads, what it writes
TensorFlow reads, with TensorFlow's fill rules, and it refuses tensors it cannot hold."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2

from common.tensors import TensorError, to_numpy, to_tensor_proto


@pytest.mark.parametrize(
    "array",
    [
        np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
        np.array([[1.5, -2.25]], dtype=np.float32),
        np.array([1, -7], dtype=np.int32),
        np.array([2**40], dtype=np.int64),
        np.array([True, False]),
        np.array([0.5, 1.0], dtype=np.float16),
        np.array([b"a", b"\x00\xff"], dtype=object),
    ],
)
def test_tensor_protos_agree_with_tensorflow(array: np.ndarray) -> None:
    for as_tensor_content in (False, True):
        proto = to_tensor_proto(array, as_tensor_content=as_tensor_content)
        np.testing.assert_array_equal(tf.make_ndarray(proto), array)
        np.testing.assert_array_equal(to_numpy(proto), array)
    np.testing.assert_array_equal(to_numpy(tf.make_tensor_proto(array)), array)


def test_tensor_proto_fill_rules_follow_tensorflow() -> None:
    splat = tf.make_tensor_proto(7, dtype=tf.uint8, shape=[2, 2])  # one value fills the tensor
    np.testing.assert_array_equal(to_numpy(splat), tf.make_ndarray(splat))
    short = to_tensor_proto(np.array([1.0, 2.0], dtype=np.float32), as_tensor_content=False)
    short.tensor_shape.dim[0].size = 4  # fewer values than elements: padded with the last
    np.testing.assert_array_equal(to_numpy(short), [1.0, 2.0, 2.0, 2.0])
    too_many = to_tensor_proto(np.array([1, 2, 3], dtype=np.int32), as_tensor_content=False)
    too_many.tensor_shape.dim[0].size = 2
    with pytest.raises(TensorError):
        to_numpy(too_many)
    wrong_bytes = to_tensor_proto(np.zeros(4, np.float32), as_tensor_content=True)
    wrong_bytes.tensor_content = wrong_bytes.tensor_content[:-1]
    with pytest.raises(TensorError, match="tensor_content has 15 bytes"):
        to_numpy(wrong_bytes)


def test_predict_request_encodes_arrays_and_keeps_protos_as_they_are() -> None:
    from common.tensors import predict_request

    images = np.arange(12, dtype=np.uint8).reshape(1, 2, 2, 3)
    malformed = tensor_pb2.TensorProto(dtype=types_pb2.DT_UINT8, tensor_content=b"\x01")  # no shape
    request = predict_request(
        "ai_detector",
        {"image": images, "raw": malformed},
        "predict_image_bytes",
        version_label="canary",
        output_filter=["probability"],
    )
    assert request.model_spec.name == "ai_detector"
    assert request.model_spec.signature_name == "predict_image_bytes"
    assert request.model_spec.version_label == "canary" and not request.model_spec.HasField("version")
    np.testing.assert_array_equal(tf.make_ndarray(request.inputs["image"]), images)
    assert request.inputs["raw"] == malformed
    assert list(request.output_filter) == ["probability"]
    pinned = predict_request("ai_detector", {}, version=3)
    assert pinned.model_spec.version.value == 3 and pinned.model_spec.signature_name == "serving_default"
