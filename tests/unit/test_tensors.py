"""The one numpy <-> TensorProto codec (common.tensors): what TensorFlow writes it reads, what it writes
TensorFlow reads, with TensorFlow's fill rules, and it refuses tensors it cannot hold."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

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
