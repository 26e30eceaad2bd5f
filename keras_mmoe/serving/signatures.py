"""Serving signatures of a multi-task Keras model: what goes in, what comes out, and how.

What: from a Functional model this module derives

* the raw input signature: one ``tf.TensorSpec`` per input (batch dimension ``None``), named by
  the dict key for dict inputs and by the ``keras.Input``'s name for a single input or a list;
* the ``tf.train.Example`` feature spec of the ``predict_examples`` signature (one
  ``FixedLenFeature`` per input: float, int64 or string, fixed length; or, for a string input
  holding a joined list, a ``bytes_list`` of any length joined with its separator);
* the output names: the dict keys for dict outputs; for a single output or a list, the name of
  the layer that produced each output (the task's Dense layer), or the task name of a layer with
  ``task_names`` that produced several (an MMoELayer used as the model's output);
* the Python functions that the SavedModel signatures trace, always calling the model with
  ``training=False`` so that dropout, expert dropout and every other training-only behaviour
  are off, and rejecting NaN and inf in float inputs (``tf.debugging.check_numerics``, a core op)
  unless the input is listed in ``allow_non_finite``.

Why here and not in the exporter: these rules are the same under Keras 3 and tf-keras; only
the final "write a SavedModel" step differs (see :mod:`keras_mmoe.serving.export`).

Gate weights (``include_gate_weights=True``): if the model has an output ``gate_weights`` of
shape (batch, tasks, experts) (``build_mmoe(..., return_gate_weights=True)``), it is split
per task. Otherwise the model must hold exactly one gated layer (an MMoELayer, CGCLayer or
PLELayer, nested models searched), called once: the serving function runs the model and applies
that layer's own ``gate_weights`` (``training=False``) to the tensors it was called on
(:mod:`keras_mmoe.layers.gating`), in the same graph, with the same variables. Each task ``t``
then gets an output ``t_gate_weights`` of shape (batch, num_experts), the softmax weights its
gate puts on each expert (for CGC/PLE, the last level's task gate: the task's own experts, then
the shared ones).
"""

import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import tensorflow as tf

from keras_mmoe._keras import keras
from keras_mmoe.layers.gating import find_gated_layers, run_with_gate_weights, task_gate_weights

#: Signature key of the raw-feature signature (TF Serving's default).
DEFAULT_SIGNATURE = "serving_default"
#: Signature key of the serialized ``tf.train.Example`` signature.
EXAMPLES_SIGNATURE = "predict_examples"
#: Input name of the serialized examples in the ``predict_examples`` signature.
EXAMPLES_INPUT = "examples"
#: Suffix of the per-task gate weight outputs.
GATE_WEIGHTS_SUFFIX = "_gate_weights"
#: Name of a model output holding all gate weights (batch, tasks, experts).
MODEL_GATE_WEIGHTS_OUTPUT = "gate_weights"

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")

def _dtype(x):
    return tf.as_dtype(x.dtype)  # a string under Keras 3, a tf.DType under tf-keras


def _structure(model, attr):
    """``model.input`` / ``model.output`` without raising for models that were never called."""
    try:
        return getattr(model, attr)
    except (AttributeError, ValueError) as error:
        raise ValueError(
            f"`model` must be a Functional Keras model built from keras.Input (it has no `{attr}`), "
            f"received {type(model).__name__} {getattr(model, 'name', '')!r}: {error}"
        ) from None


def _is_tensor(x):
    return hasattr(x, "shape") and hasattr(x, "dtype")


def _tensor_name(tensor):
    return str(getattr(tensor, "name", "") or "").split(":")[0]


def _named_inputs(model):
    """``[(name, keras tensor)]`` in the order of the model's flat inputs, and the structure kind."""
    if not isinstance(model, keras.Model):
        raise ValueError(f"`model` must be a keras.Model, received: {type(model).__name__}")
    inputs = _structure(model, "input")
    if isinstance(inputs, Mapping):
        kind, entries = "dict", list(inputs.items())
        for name, tensor in entries:
            if not isinstance(name, str) or not _NAME.match(name):
                raise ValueError(
                    "Each input name must match [A-Za-z][A-Za-z0-9_]* to be a serving input key, "
                    f"received the input name {name!r}"
                )
    else:
        kind = "list" if isinstance(inputs, (list, tuple)) else "single"
        tensors = list(inputs) if kind == "list" else [inputs]
        entries = [(_tensor_name(t), t) for t in tensors]
        for name, _ in entries:
            if not _NAME.match(name):
                raise ValueError(
                    "Each input name must match [A-Za-z][A-Za-z0-9_]* to be a serving input key, received "
                    f"the keras.Input named {name!r}; name it with keras.Input(..., name='...')"
                )
    for name, tensor in entries:
        if not _is_tensor(tensor):
            raise ValueError(
                f"Input {name!r} is a {type(tensor).__name__}, not a tensor: serving signatures take a dict, "
                "a list or a single keras.Input, not nested structures"
            )
    names = [name for name, _ in entries]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(
            f"Two inputs of the model are named {duplicates[0]!r}; serving inputs are keyed by name, "
            "so give each keras.Input its own name"
        )
    return kind, entries


def input_specs(model: "keras.Model") -> Dict[str, tf.TensorSpec]:
    """The raw input signature: ``{name: tf.TensorSpec}`` of the model's inputs.

    Names are the dict keys of dict inputs, and the ``keras.Input`` names of a single input or a
    list of inputs. Raises ``ValueError`` naming the problem when an input cannot be a serving
    input: a name that is not ``[A-Za-z][A-Za-z0-9_]*``, two inputs of one name, the reserved
    name ``examples``, sparse or ragged inputs, dtypes other than float, integer or string.
    """
    _, entries = _named_inputs(model)
    specs = {}
    for name, tensor in entries:
        if name == EXAMPLES_INPUT:
            raise ValueError(
                f"The input name {name!r} is reserved for the serialized examples of the "
                f"'{EXAMPLES_SIGNATURE}' signature; rename the input"
            )
        if getattr(tensor, "sparse", False) or getattr(tensor, "ragged", False):
            raise ValueError(
                f"Input {name!r} is sparse or ragged; only dense inputs are exportable as named features"
            )
        dtype = _dtype(tensor)
        if not (dtype.is_floating or dtype.is_integer or dtype == tf.string):
            raise ValueError(
                f"Input {name!r} has dtype {dtype.name}; exportable inputs are float, integer or string"
            )
        shape = tuple(tensor.shape)
        if len(shape) < 1:
            raise ValueError(f"Input {name!r} has no batch dimension (shape {shape})")
        specs[name] = tf.TensorSpec((None,) + shape[1:], dtype, name=name)
    return specs


def _check_separators(separators, specs):
    """``{name: separator}`` of string inputs of shape (batch, 1) that hold a joined list."""
    if separators is None:
        return {}
    if not isinstance(separators, dict):
        raise ValueError(f"`example_separators` must be None or a dict {{name: separator}}, received: {separators!r}")
    for name, separator in separators.items():
        spec = specs.get(name)
        if spec is None:
            raise ValueError(f"`example_separators` names the feature {name!r} the model does not have; "
                             f"the model's inputs are {sorted(specs)}")
        if spec.dtype != tf.string or tuple(spec.shape[1:]) != (1,):
            raise ValueError(f"`example_separators` needs string inputs of shape (batch, 1); input {name!r} has "
                             f"dtype {spec.dtype.name} and shape {tuple(spec.shape)}")
        if not isinstance(separator, str):
            raise ValueError(f"`example_separators[{name!r}]` must be a string, received: {separator!r}")
    return dict(separators)


def example_feature_spec(
    model_or_specs: Union["keras.Model", Mapping[str, tf.TensorSpec]],
    defaults: Union[None, str, Mapping[str, Any]] = None,
    separators: Optional[Mapping[str, str]] = None,
) -> Dict[str, Union[tf.io.FixedLenFeature, tf.io.VarLenFeature]]:
    """The ``tf.io.parse_example`` spec of the ``predict_examples`` signature.

    Each input becomes a ``tf.io.FixedLenFeature`` with the input's shape without the batch
    dimension, and the Example type that holds it: ``float_list`` for float inputs (parsed as
    float32, then cast), ``int64_list`` for integer inputs (parsed as int64, then cast) and
    ``bytes_list`` for string inputs.

    Args:
        model_or_specs: a model, or the ``{name: tf.TensorSpec}`` of :func:`input_specs`.
        defaults: which features may be missing from an Example. ``None`` (default): every
            feature is required and a missing one fails the request with TensorFlow's
            ``InvalidArgumentError`` ("Feature: <name> (data type: ...) is required but could not
            be found."). ``"zeros"``: every feature is optional and a missing one reads as 0
            (numbers) or ``""`` (strings, which a ``StringLookup`` maps to its OOV index). A dict
            ``{name: value}``: those features are optional with that default (a scalar fills the
            whole feature); the others stay required.
        separators: optional ``{name: separator}`` of string inputs of shape (batch, 1) that hold
            a list of tokens joined by ``separator``: in an Example such a feature is a
            ``bytes_list`` of any length (``tf.io.VarLenFeature``; absent = no token), which
            :meth:`ServingFunctions.parse` joins with the separator.
    """
    specs = input_specs(model_or_specs) if isinstance(model_or_specs, keras.Model) else dict(model_or_specs)
    if defaults is None:
        defaults = {}
    elif isinstance(defaults, str):
        if defaults != "zeros":
            raise ValueError(f"`example_defaults` must be None, 'zeros' or a dict, received: {defaults!r}")
        defaults = {name: ("" if spec.dtype == tf.string else 0) for name, spec in specs.items()}
    elif isinstance(defaults, dict):
        unknown = sorted(set(defaults) - set(specs))
        if unknown:
            raise ValueError(
                f"`example_defaults` names features the model does not have: {unknown}; "
                f"the model's inputs are {sorted(specs)}"
            )
    else:
        raise ValueError(f"`example_defaults` must be None, 'zeros' or a dict, received: {defaults!r}")
    separators = _check_separators(separators, specs)
    feature_spec = {}
    for name, spec in specs.items():
        if name in separators:
            feature_spec[name] = tf.io.VarLenFeature(tf.string)
            continue
        shape = tuple(spec.shape[1:])
        if any(d is None for d in shape):
            raise ValueError(
                f"Input {name!r} has shape {tuple(spec.shape)} with an unknown non-batch dimension; "
                f"tf.train.Example features must be fixed length. Export with examples_signature=False "
                f"or give the input a fixed shape"
            )
        parse_dtype = tf.string if spec.dtype == tf.string else (tf.float32 if spec.dtype.is_floating else tf.int64)
        default = None
        if name in defaults:
            value = defaults[name]
            if parse_dtype == tf.string:
                value = value.encode("utf-8") if isinstance(value, str) else value
                default = np.full(shape, value, dtype=object)
            else:
                default = np.full(shape, value, dtype=parse_dtype.as_numpy_dtype)
            default = default.tolist() if shape else default.item()
        feature_spec[name] = tf.io.FixedLenFeature(shape, parse_dtype, default_value=default)
    return feature_spec


def _producer(model, tensor):
    """``(layer, position)``: the layer of ``model`` whose (first call's) outputs hold ``tensor``."""
    for layer in model.layers:
        try:
            produced = tf.nest.flatten(layer.output)
        except (AttributeError, ValueError, RuntimeError):  # never called, or called several times
            continue
        for position, candidate in enumerate(produced):
            if candidate is tensor:
                return layer, position
    return None, None


def _flat_output_names(model):
    """One name per flat model output, in the order the model returns them (see the module docstring)."""
    outputs = _structure(model, "output")
    if isinstance(outputs, Mapping):
        names = list(outputs)
        for name in names:
            if not isinstance(name, str) or not _NAME.match(name):
                raise ValueError(
                    f"Each output name must match [A-Za-z][A-Za-z0-9_]*, received the output name {name!r}"
                )
        return names
    names = []
    for index, tensor in enumerate(tf.nest.flatten(outputs)):
        layer, position = _producer(model, tensor)
        if layer is None:
            raise ValueError(
                f"Output {index} of the model does not come from a layer called once (it comes from a nested "
                "model, a shared layer or a raw op), so it has no name; pass it through its own named layer (e.g. "
                "keras.layers.Identity(name='click')) or return a dict keyed by task name"
            )
        if len(tf.nest.flatten(layer.output)) == 1:
            name = layer.name
        else:
            tasks = list(getattr(layer, "task_names", None) or [])
            if position < len(tasks):
                name = tasks[position]
            elif position == len(tasks) and tasks and getattr(layer, "return_gate_weights", False):
                name = MODEL_GATE_WEIGHTS_OUTPUT
            else:
                raise ValueError(
                    f"Output {index} of the model is output {position} of layer {layer.name!r}, which has several "
                    "outputs and no task name for it; give each output its own named layer "
                    "(e.g. keras.layers.Identity(name='click')) or return a dict keyed by task name"
                )
        if not _NAME.match(name):
            raise ValueError(
                f"Output {index} of the model is named {name!r}; output names must match [A-Za-z][A-Za-z0-9_]*: "
                "name the output layer (e.g. keras.layers.Dense(1, name='click')) or return a dict keyed by task name"
            )
        names.append(name)
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(
            f"Two outputs of the model are named {duplicates[0]!r}; serving outputs are keyed by name, so give "
            "each output layer its own name or return a dict keyed by task name"
        )
    return names


def output_names(model: "keras.Model") -> List[str]:
    """The task output names of ``model``, without ``gate_weights``.

    Dict outputs: the keys. A single output or a list: the names of the layers that produce
    them (a layer with ``task_names`` and several outputs, such as an MMoELayer, names them by task).
    """
    names = [k for k in _flat_output_names(model) if k != MODEL_GATE_WEIGHTS_OUTPUT]
    if not names:
        raise ValueError("The model has no task output to serve")
    return names


class GateWeights:
    """Computes each task's gate weights of a model at serving time (see the module docstring)."""

    def __init__(self, model: "keras.Model", all_output_names: Sequence[str]) -> None:
        self.from_output = MODEL_GATE_WEIGHTS_OUTPUT in all_output_names
        layers = find_gated_layers(model)
        if len(layers) != 1:
            raise ValueError(
                "include_gate_weights=True needs exactly one MMoELayer, CGCLayer or PLELayer in the model (nested "
                "models searched), "
                f"found {len(layers)} in model {model.name!r}" + (f": {[p for p, _ in layers]}" if layers else "")
            )
        self.path, self.layer = layers[0]
        self.task_names = list(self.layer.task_names)

    def names(self) -> List[str]:
        return [f"{task}{GATE_WEIGHTS_SUFFIX}" for task in self.task_names]

    def split(self, weights: tf.Tensor) -> Dict[str, tf.Tensor]:
        """``{<task>_gate_weights: (batch, num_experts)}`` from weights (batch, tasks, experts)."""
        weights = tf.cast(weights, tf.float32)
        return {name: tf.identity(weights[:, k, :], name=name) for k, name in enumerate(self.names())}


class ServingFunctions:
    """The Python functions behind the signatures, shared by both Keras flavours.

    ``raw(inputs)`` takes the dict of raw features; ``examples(examples)`` takes a 1-D batch of
    serialized ``tf.train.Example``. Both return ``{output name: tensor}``.
    """

    def __init__(
        self,
        model: "keras.Model",
        *,
        include_gate_weights: bool = False,
        example_defaults: Union[None, str, Mapping[str, Any]] = None,
        allow_non_finite: Sequence[str] = (),
        example_separators: Optional[Mapping[str, str]] = None,
    ) -> None:
        self.model = model
        self.input_kind, entries = _named_inputs(model)
        self.input_specs = input_specs(model)
        self.all_output_names = _flat_output_names(model)
        self.task_names = output_names(model)
        self.gate_weights = GateWeights(model, self.all_output_names) if include_gate_weights else None
        if self.gate_weights is not None:
            clash = sorted(set(self.gate_weights.names()) & set(self.task_names))
            if clash:
                raise ValueError(f"Gate weight outputs {clash} clash with task outputs of the same name")
            missing = sorted(set(self.gate_weights.task_names) - set(self.task_names))
            if missing:
                raise ValueError(
                    f"The MMoELayer's tasks {missing} are not outputs of the model {self.task_names}"
                )
        self.checked_inputs = self._finite_checks(allow_non_finite)
        self.example_defaults = example_defaults
        self.example_separators = _check_separators(example_separators, self.input_specs)
        self._feature_spec = None

    def _finite_checks(self, allow_non_finite):
        if isinstance(allow_non_finite, (str, bytes)) or not isinstance(
            allow_non_finite, (list, tuple, set, frozenset)
        ):
            raise ValueError(
                "`allow_non_finite` must be a list of float input names, received: "
                f"allow_non_finite={allow_non_finite!r}"
            )
        floats = [name for name, spec in self.input_specs.items() if spec.dtype.is_floating]
        for name in allow_non_finite:
            if name not in self.input_specs:
                raise ValueError(
                    f"`allow_non_finite` names {name!r}, which is not an input of the model; its inputs are "
                    f"{sorted(self.input_specs)}"
                )
            if name not in floats:
                raise ValueError(
                    f"`allow_non_finite` names {name!r}, a {self.input_specs[name].dtype.name} input; only float "
                    f"inputs can hold NaN or inf (float inputs: {floats})"
                )
        return [name for name in floats if name not in set(allow_non_finite)]

    @property
    def feature_spec(self) -> Dict[str, tf.io.FixedLenFeature]:
        if self._feature_spec is None:
            self._feature_spec = example_feature_spec(self.input_specs, self.example_defaults, self.example_separators)
        return self._feature_spec

    def output_names(self) -> List[str]:
        names = list(self.task_names)
        if self.gate_weights is not None:
            names += self.gate_weights.names()
        return names

    def _model_inputs(self, named):
        if self.input_kind == "dict":
            return named
        values = [named[name] for name in self.input_specs]
        return values if self.input_kind == "list" else values[0]

    def _named_outputs(self, outputs):
        if isinstance(outputs, Mapping):
            return {name: outputs[name] for name in self.all_output_names}
        return dict(zip(self.all_output_names, tf.nest.flatten(outputs)))

    def raw(self, inputs: Mapping[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        named = {name: inputs[name] for name in self.input_specs}
        for name in self.checked_inputs:
            named[name] = tf.debugging.check_numerics(
                named[name], message=f"input '{name}' holds NaN or inf; the model takes finite values only"
            )
        model_inputs = self._model_inputs(named)
        gates = self.gate_weights
        if gates is not None and not gates.from_output:
            outputs, (weights,) = run_with_gate_weights(
                self.model, model_inputs, [gates.layer], training=False, single_call=True
            )
            weights = task_gate_weights(gates.layer, weights)
        else:
            outputs, weights = self.model(model_inputs, training=False), None
        outputs = self._named_outputs(outputs)
        result = {name: tf.identity(outputs[name], name=name) for name in self.task_names}
        if gates is not None:
            result.update(gates.split(outputs[MODEL_GATE_WEIGHTS_OUTPUT] if gates.from_output else weights))
        return result

    def parse(self, examples: tf.Tensor) -> Dict[str, tf.Tensor]:
        """Parses a 1-D batch of serialized examples into the model's raw inputs."""
        parsed = tf.io.parse_example(examples, self.feature_spec)
        for name, separator in self.example_separators.items():
            tokens = tf.RaggedTensor.from_sparse(parsed[name])
            parsed[name] = tf.strings.reduce_join(tokens, axis=1, separator=separator, keepdims=True)
        return {
            name: parsed[name] if parsed[name].dtype == spec.dtype else tf.cast(parsed[name], spec.dtype)
            for name, spec in self.input_specs.items()
        }

    def examples(self, examples: tf.Tensor) -> Dict[str, tf.Tensor]:
        # The signature declares shape [None], but neither TF Serving nor the TF2 signature
        # wrapper enforces it, and ParseExampleV2 would also take a scalar. Check at run time.
        # Grappler folds tf.rank(examples) to the declared rank 1, so the rank is taken from
        # the shape vector sent through SerializeTensor/ParseTensor (a few bytes), whose
        # output shape no optimizer can infer.
        shape = tf.io.parse_tensor(tf.io.serialize_tensor(tf.shape(examples)), out_type=tf.int32)
        check = tf.debugging.assert_equal(
            tf.size(shape), 1,
            message=f"'{EXAMPLES_SIGNATURE}': input '{EXAMPLES_INPUT}' must be a 1-D batch of serialized "
            "tf.train.Example (one string per example); received a tensor of rank",
        )
        with tf.control_dependencies([check]):
            examples = tf.identity(examples)
        return self.raw(self.parse(examples))

    def raw_signature(self) -> List[Dict[str, tf.TensorSpec]]:
        return [dict(self.input_specs)]

    def examples_signature(self) -> List[tf.TensorSpec]:
        return [tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)]
