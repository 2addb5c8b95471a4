"""Export variants: the same network written as different graphs, and the rule that picks one.

Variants (all keep every signature; they differ only in the network inside):

- `fp32`: the Keras network with its variables, as tf.saved_model.save writes it. The reference.
- `frozen`: variables turned into constants, so the graph optimizer that runs when the model is
  loaded (in TF Serving and in tf.saved_model.load alike) can constant-fold and fuse across them.
- `folded`: frozen, and every batch norm folded into the convolution before it (scale into the
  filter, shift into a bias), done here on the GraphDef, so the served graph is conv + bias + relu.

Retired after measurement (docs/export.md keeps the numbers): `fp32_xla` and `folded_xla` (XLA on
depthwise convolutions took seconds per batch) and `folded_bf16` (an offline bfloat16 rewrite,
outside the tolerance; mixed precision belongs in TF Serving's session config).

The choice: the fastest variant whose probabilities stay within `Tolerance` of the Keras model on
every validation image; plain `fp32` unless another is clearly (5%) faster.
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import tensorflow as tf
import typer

from common.preprocessing import IMAGE_SIZE
from common.repository import REPO_ROOT
from export.graph import Network, ServingModule, keras_logit_network, save_serving_module


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    freeze: bool = False
    fold_batch_norm: bool = False


VARIANTS: dict[str, Variant] = {
    variant.name: variant
    for variant in (
        Variant("fp32", "Keras network with variables, fp32 (plain tf.saved_model.save)"),
        Variant("frozen", "variables frozen into constants", freeze=True),
        Variant(
            "folded",
            "frozen, batch norm folded into the preceding convolutions",
            freeze=True,
            fold_batch_norm=True,
        ),
    )
}
REFERENCE_VARIANT = "fp32"
AUTO = "auto"
# What `--variant auto` measures and chooses from.
AUTO_CANDIDATES: tuple[str, ...] = tuple(VARIANTS)
# A variant must beat fp32 by this factor to be chosen: the measured run-to-run noise on the
# shared 2-core machine is ~3% (median) to ~7% (90th percentile), see docs/export.md.
MINIMUM_SPEEDUP = 1.05


@dataclass(frozen=True)
class Tolerance:
    """How far an exported graph may drift from the Keras model on the validation images.

    0.01 in probability is 1 point of the percentage the gateway shows, far below the spread of
    the scores the threshold separates; with no label flips the validation metrics (and so the
    threshold's meaning) hold for the served graph as they were measured on Keras. Images whose
    Keras probability lies within export.measure.ON_THRESHOLD of the threshold are not counted:
    the threshold is one of their scores, and float32 rounding alone decides their side.
    """

    max_abs_probability_difference: float = 0.01
    max_label_flips: int = 0

    def problems(self, agreement: Mapping[str, Any]) -> list[str]:
        found = []
        if agreement["max_abs_probability_difference"] > self.max_abs_probability_difference:
            found.append(
                f"max |probability - Keras| = {agreement['max_abs_probability_difference']:.4g} "
                f"> {self.max_abs_probability_difference}"
            )
        if agreement["label_flips"] > self.max_label_flips:
            found.append(
                f"{agreement['label_flips']} of {agreement['count']} labels differ from Keras "
                f"(allowed {self.max_label_flips})"
            )
        return found

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(
            f"unknown export variant {name!r}; choose {AUTO} or one of {sorted(VARIANTS)}"
        ) from None


# ---------------------------------------------------------------- building a variant's network


def build_serving_module(
    classifier: Any, temperature: float, threshold: float, chosen: Variant
) -> ServingModule:
    """The ServingModule of `classifier` (a Keras model from training.models) as `chosen` describes."""
    logit_network = keras_logit_network(classifier)
    if not chosen.freeze:

        def keras_network(images: tf.Tensor) -> tf.Tensor:
            return logit_network(images, training=False)

        network: Network = keras_network
        return ServingModule(network, temperature, threshold, variables_owner=logit_network)

    graph_def, input_name, output_name = freeze_network(logit_network)
    if chosen.fold_batch_norm:
        graph_def, _ = fold_batch_norms(graph_def, [output_name])
    network = graph_def_function(graph_def, input_name, output_name)
    return ServingModule(network, temperature, threshold)


def write_variant(
    model_path: Path, output_dir: Path, variant_name: str, temperature: float, threshold: float
) -> None:
    """Load the Keras classifier at `model_path` and write `variant_name` as a SavedModel."""
    from training.models import load_classifier

    module = build_serving_module(load_classifier(model_path), temperature, threshold, variant(variant_name))
    save_serving_module(module, output_dir)


def write_variant_in_fresh_process(
    model_path: Path, output_dir: Path, variant_name: str, temperature: float, threshold: float
) -> None:
    """write_variant in a child process.

    Building a frozen variant registers its whole graph (constants included) in TensorFlow's
    function library, which a process does not give back: ~1.5 GB per ResNet50 variant. A child
    per variant keeps a process that builds several of them from running out of memory.
    """
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "export.optimize",
            str(Path(model_path).resolve()),
            str(Path(output_dir).resolve()),
            "--variant",
            variant_name,
            "--temperature",
            repr(float(temperature)),
            "--threshold",
            repr(float(threshold)),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        from export.errors import ExportError

        tail = "\n".join(completed.stderr.strip().splitlines()[-15:])
        raise ExportError(f"building variant {variant_name} failed:\n{tail}")


def freeze_network(
    logit_network: Any, image_size: int = IMAGE_SIZE
) -> tuple[tf.compat.v1.GraphDef, str, str]:
    """(GraphDef with variables as constants, input tensor name, output tensor name)."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    def network(image: tf.Tensor) -> tf.Tensor:
        return logit_network(image, training=False)

    concrete = tf.function(network).get_concrete_function(
        tf.TensorSpec([None, image_size, image_size, 3], tf.uint8, name="image")
    )
    frozen = convert_variables_to_constants_v2(concrete)
    return frozen.graph.as_graph_def(), frozen.inputs[0].name, frozen.outputs[0].name


def graph_def_function(graph_def: tf.compat.v1.GraphDef, input_name: str, output_name: str) -> Any:
    """A concrete function running `graph_def` from `input_name` to `output_name`."""

    def import_graph() -> None:
        tf.graph_util.import_graph_def(graph_def, name="")

    wrapped = tf.compat.v1.wrap_function(import_graph, [])
    return wrapped.prune(
        feeds=wrapped.graph.get_tensor_by_name(input_name),
        fetches=wrapped.graph.get_tensor_by_name(output_name),
    )


def _node_name(tensor_name: str) -> str:
    return tensor_name.lstrip("^").split(":")[0]


def _constant_nodes(graph_def: tf.compat.v1.GraphDef) -> set[str]:
    """Nodes whose value depends on no input: constants and pure ops on constants only."""
    nodes = {node.name: node for node in graph_def.node}
    verdict: dict[str, bool] = {}

    def is_constant(name: str) -> bool:
        if name not in verdict:
            node = nodes[name]
            if node.op == "Const":
                verdict[name] = True
            elif node.op in ("Placeholder", "PlaceholderWithDefault") or not node.input:
                verdict[name] = False
            else:
                verdict[name] = False  # guards cycles while recursing
                verdict[name] = all(is_constant(_node_name(source)) for source in node.input)
        return verdict[name]

    return {name for name in nodes if is_constant(name)}


def fold_batch_norms(
    graph_def: tf.compat.v1.GraphDef, output_names: Iterable[str]
) -> tuple[tf.compat.v1.GraphDef, int]:
    """Fold `conv -> [BiasAdd] -> Mul(scale) -> Add(shift)` (Keras batch norm in inference) into conv + bias.

    Keras 3 writes inference batch norm as x * (gamma / sqrt(var + eps)) + (beta - mean * ...),
    so after freezing the scale and shift are constant per-channel tensors. Returns the new
    GraphDef and the number of folds.
    """
    consumers: dict[str, list[Any]] = defaultdict(list)
    for node in graph_def.node:
        for source in node.input:
            if not source.startswith("^"):
                consumers[_node_name(source)].append(node)
    constant = _constant_nodes(graph_def)

    def sole_consumer(name: str, ops: tuple[str, ...]) -> Any:
        following = consumers.get(name, [])
        return following[0] if len(following) == 1 and following[0].op in ops else None

    def other_constant_input(node: Any, name: str) -> str | None:
        sources = [source for source in node.input if not source.startswith("^")]
        if len(sources) != 2 or name not in (_node_name(sources[0]), _node_name(sources[1])):
            return None
        other = sources[1] if _node_name(sources[0]) == name else sources[0]
        return other if _node_name(other) in constant else None

    folds = []
    for node in graph_def.node:
        if node.op not in ("Conv2D", "DepthwiseConv2dNative") or _node_name(node.input[1]) not in constant:
            continue
        if node.attr["data_format"].s not in (b"", b"NHWC"):
            continue
        current, bias = node, None
        bias_add = sole_consumer(current.name, ("BiasAdd",))
        if bias_add is not None and _node_name(bias_add.input[1]) in constant:
            current, bias = bias_add, bias_add.input[1]
        multiply = sole_consumer(current.name, ("Mul",))
        scale = other_constant_input(multiply, current.name) if multiply is not None else None
        if scale is None:
            continue
        add = sole_consumer(multiply.name, ("AddV2", "Add"))
        shift = other_constant_input(add, multiply.name) if add is not None else None
        if shift is None:
            continue
        folds.append((node, bias_add if bias else None, multiply, add, node.input[1], bias, scale, shift))
    if not folds:
        return graph_def, 0

    # Evaluate every filter, bias, scale and shift in one session run of the constant subgraph.
    wanted = sorted({name if ":" in name else f"{name}:0" for fold in folds for name in fold[4:] if name})
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as session:
        values = dict(zip(wanted, session.run(wanted), strict=True))

    def value(name: str) -> np.ndarray:
        return np.asarray(values[name if ":" in name else f"{name}:0"], dtype=np.float64)

    removed: set[str] = set()
    replacements: dict[str, Any] = {}
    new_nodes = []
    for conv, bias_add, multiply, add, filter_name, bias_name, scale_name, shift_name in folds:
        kernel = value(filter_name)
        channels = kernel.shape[3] if conv.op == "Conv2D" else kernel.shape[2] * kernel.shape[3]
        scale_values, shift_values = value(scale_name), value(shift_name)
        if scale_values.size != channels or shift_values.size not in (1, channels):
            continue  # not per-output-channel: leave this one alone
        scale_values = scale_values.reshape(-1)
        shift_values = np.broadcast_to(shift_values.reshape(-1), (channels,))
        bias_values = value(bias_name).reshape(-1) if bias_name else np.zeros(channels)
        if conv.op == "Conv2D":
            folded_kernel = kernel * scale_values.reshape(1, 1, 1, -1)
        else:  # depthwise: output channel = input channel * multiplier + m
            folded_kernel = kernel * scale_values.reshape(1, 1, kernel.shape[2], kernel.shape[3])
        folded_bias = bias_values * scale_values + shift_values
        dtype = tf.as_dtype(conv.attr["T"].type)
        kernel_node = _constant_node(f"{conv.name}/folded_filter", folded_kernel, dtype)
        bias_node = _constant_node(f"{conv.name}/folded_bias", folded_bias, dtype)
        new_conv = tf.compat.v1.NodeDef()
        new_conv.CopyFrom(conv)
        new_conv.input[1] = kernel_node.name
        # The BiasAdd takes the Add's name, so every consumer of the batch norm reads the fold.
        new_bias_add = tf.compat.v1.NodeDef(name=add.name, op="BiasAdd", input=[conv.name, bias_node.name])
        new_bias_add.attr["T"].type = conv.attr["T"].type
        new_bias_add.attr["data_format"].s = b"NHWC"
        new_bias_add.device = conv.device
        replacements[conv.name] = new_conv
        replacements[add.name] = new_bias_add
        removed.add(multiply.name)
        if bias_add is not None:
            removed.add(bias_add.name)
        new_nodes.extend([kernel_node, bias_node])

    folded = tf.compat.v1.GraphDef()
    folded.versions.CopyFrom(graph_def.versions)
    folded.library.CopyFrom(graph_def.library)
    for node in graph_def.node:
        if node.name not in removed:
            folded.node.append(replacements.get(node.name, node))
    folded.node.extend(new_nodes)
    # tf.function makes its output wait (control edges) on every variable read; frozen, those reads
    # are constants and the edges would keep the unfolded filters alive.
    for node in folded.node:
        data_inputs = [
            source for source in node.input if not (source.startswith("^") and source[1:] in constant)
        ]
        del node.input[:]
        node.input.extend(data_inputs)
    folded = tf.compat.v1.graph_util.extract_sub_graph(folded, [_node_name(name) for name in output_names])
    return folded, len(replacements) // 2


def _constant_node(name: str, array: np.ndarray, dtype: tf.DType) -> Any:
    node = tf.compat.v1.NodeDef(name=name, op="Const")
    node.attr["dtype"].type = dtype.as_datatype_enum
    node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(array.astype(dtype.as_numpy_dtype)))
    return node


# ---------------------------------------------------------------- choosing


def speed_score(measured: Mapping[str, Any], reference: Mapping[str, Any]) -> float:
    """Geometric mean of the speed-ups over the reference at batch 1 (latency) and at the largest
    batch measured (throughput)."""
    largest = str(max(int(size) for size in reference["speed"]))
    latency_speedup = reference["speed"]["1"]["ms_per_batch"] / measured["speed"]["1"]["ms_per_batch"]
    throughput_speedup = (
        measured["speed"][largest]["images_per_second"] / reference["speed"][largest]["images_per_second"]
    )
    return math.sqrt(latency_speedup * throughput_speedup)


def choose_variant(results: Mapping[str, Mapping[str, Any]], tolerance: Tolerance) -> str:
    """Name of the fastest variant within `tolerance`; `fp32` unless one is MINIMUM_SPEEDUP faster.

    `results[name]` holds `speed` ({batch size: {ms_per_batch, images_per_second}}) and `agreement`,
    or `skipped` (a reason) for a variant that was not measured fully.
    """
    if REFERENCE_VARIANT not in results:
        raise ValueError(f"the measurements need the reference variant {REFERENCE_VARIANT!r}")
    reference = results[REFERENCE_VARIANT]
    measured_fully = {name: measured for name, measured in results.items() if "skipped" not in measured}
    passing = {
        name: speed_score(measured, reference)
        for name, measured in measured_fully.items()
        if not tolerance.problems(measured["agreement"])
    }
    if not passing:
        from export.errors import NoVariantPassedError

        raise NoVariantPassedError(
            "no export variant agrees with the Keras model within the tolerance: "
            + "; ".join(
                f"{name}: {tolerance.problems(measured['agreement'])}"
                for name, measured in measured_fully.items()
            )
        )
    best = max(passing, key=lambda name: passing[name])
    if best != REFERENCE_VARIANT and passing[best] < MINIMUM_SPEEDUP and REFERENCE_VARIANT in passing:
        return REFERENCE_VARIANT
    return best


def main(
    model_path: Annotated[Path, typer.Argument(help="A Keras classifier (.keras) from training")],
    output_dir: Annotated[Path, typer.Argument(help="Where to write the SavedModel (must not exist)")],
    variant_name: Annotated[str, typer.Option("--variant", help=f"One of {', '.join(VARIANTS)}")],
    temperature: Annotated[float, typer.Option(help="Calibration temperature")],
    threshold: Annotated[float, typer.Option(help="Decision threshold on the calibrated probability")],
) -> None:
    """Write one export variant of a classifier (no warmup, card or validation: see export.export)."""
    write_variant(model_path, output_dir, variant_name, temperature, threshold)


if __name__ == "__main__":
    typer.run(main)
