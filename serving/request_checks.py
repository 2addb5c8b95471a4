"""TF Serving's checks of a request, with its messages: the model name (every request), and a
Predict's input aliases and dtypes and output filter against the signature. ModelManager applies
them to what both APIs route through it; the REST API checks a status URL's model name itself."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from common import tensors
from serving.errors import InvalidArgumentError
from serving.runtime import SignatureSpec


def require_model_name(model_name: str) -> None:
    """An empty model name is the request's fault (TF Serving: INVALID_ARGUMENT), not a missing model."""
    if not model_name:
        raise InvalidArgumentError("Missing model name in request.")


def validate_inputs(spec: SignatureSpec, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """TF Serving's input checks and messages: aliases and dtypes (shapes are the graph's business)."""
    given, expected = set(inputs), set(spec.inputs)
    if len(given) != len(expected):
        raise InvalidArgumentError(
            f"input size does not match signature: {len(given)}!={len(expected)} "
            f"len({{{','.join(sorted(given))}}}) != len({{{','.join(sorted(expected))}}}). "
            f"Sent extra: {{{','.join(sorted(given - expected))}}}. "
            f"Missing but required: {{{','.join(sorted(expected - given))}}}."
        )
    checked: dict[str, np.ndarray] = {}
    for alias in sorted(inputs):
        tensor_spec = spec.inputs.get(alias)
        if tensor_spec is None:
            raise InvalidArgumentError(
                f"input tensor alias not found in signature: {alias}. "
                f"Inputs expected to be in the set {{{','.join(sorted(expected))}}}."
            )
        array = inputs[alias]
        if array.dtype.kind == "S":
            array = array.astype(object)
        if array.dtype != tensor_spec.numpy_dtype:
            raise InvalidArgumentError(
                f"input {alias} must be {tensor_spec.dtype_name} "
                f"but {tensors.numpy_dtype_name(array.dtype)} was given"
            )
        # No shape check: TF Serving feeds the tensor to the session as it came (its own tests send
        # `x` shaped [1] to half_plus_two's [-1,1] signature and expect y=[3.0]); a shape the graph
        # cannot run fails there, as INVALID_ARGUMENT (serving/runtime.py).
        checked[alias] = array
    return checked


def validate_output_filter(spec: SignatureSpec, output_filter: Sequence[str]) -> list[str]:
    if not output_filter:
        return sorted(spec.outputs)
    seen: list[str] = []
    for alias in output_filter:
        if alias not in spec.outputs:
            raise InvalidArgumentError(
                f"output tensor alias not found in signature: {alias} "
                f"Outputs expected to be in the set {{{','.join(sorted(spec.outputs))}}}."
            )
        if alias in seen:
            raise InvalidArgumentError(f"duplicate output tensor alias: {alias}")
        seen.append(alias)
    return seen
