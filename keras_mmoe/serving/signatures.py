"""Serving signatures of a multi-task Keras model: what goes in, what comes out, and how.

What: from a Functional model with a dict of named inputs and a dict of outputs keyed by
task name, this module derives

* the raw input signature (one ``tf.TensorSpec`` per named input, batch dimension ``None``);
* the ``tf.train.Example`` feature spec of the ``predict_examples`` signature (one
  ``FixedLenFeature`` per input: float, int64 or string, fixed length; or, for a string input
  holding a joined list, a ``bytes_list`` of any length joined with its separator);
* the output dict (task name -> tensor; optionally ``<task>_gate_weights``);
* the Python functions that the SavedModel signatures trace, always calling the model with
  ``training=False`` so that dropout, expert dropout and every other training-only behaviour
  are off.

Why here and not in the exporter: these rules are the same under Keras 3 and tf-keras; only
the final "write a SavedModel" step differs (see :mod:`keras_mmoe.serving.export`).

Gate weights (``include_gate_weights=True``): if the model has an output ``gate_weights`` of
shape (batch, tasks, experts) (``build_mmoe(..., return_gate_weights=True)``), it is split
per task. Otherwise the model must hold exactly one :class:`keras_mmoe.MMoELayer` at its top
level; a sub-model sharing the model's layers computes that layer's inputs (expert input and
optional gate input) and the serving function applies the layer's own gates to them with
``training=False``. The same variables are used, nothing is copied, and it works the same
under both Keras versions. Each task ``t`` then gets an output ``t_gate_weights`` of shape
(batch, num_experts), the softmax weights its gate puts on each expert.
"""

import re

import numpy as np
import tensorflow as tf

from keras_mmoe._keras import IS_KERAS_3, keras

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


def input_specs(model):
    """The raw input signature: ``{name: tf.TensorSpec}`` taken from the model's dict inputs.

    Raises ``ValueError`` naming the problem when the model's inputs are not a dict of named,
    dense tensors of a float, integer or string dtype (a list of inputs, a single unnamed input,
    sparse or ragged inputs, bool inputs...).
    """
    if not isinstance(model, keras.Model):
        raise ValueError(f"`model` must be a keras.Model, received: {type(model).__name__}")
    inputs = _structure(model, "input")
    if not isinstance(inputs, dict):
        count = len(inputs) if isinstance(inputs, (list, tuple)) else 1
        raise ValueError(
            "Serving signatures need named inputs: build the model with a dict of named inputs, "
            "e.g. keras.Model({'age': keras.Input((1,), name='age'), ...}, outputs); received a model "
            f"whose inputs are a {type(inputs).__name__} of {count} unnamed tensor(s)"
        )
    specs = {}
    for name, tensor in inputs.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(
                "Each input name must match [A-Za-z][A-Za-z0-9_]* to be a serving input key, "
                f"received the input name {name!r}"
            )
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


def example_feature_spec(model_or_specs, defaults=None, separators=None):
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


def output_names(model):
    """The task output names of ``model`` (its dict output keys, without ``gate_weights``)."""
    outputs = _structure(model, "output")
    if not isinstance(outputs, dict):
        raise ValueError(
            "Serving signatures name outputs by task: the model must return a dict keyed by task name, "
            f"received a model whose outputs are a {type(outputs).__name__}"
        )
    names = [k for k in outputs if k != MODEL_GATE_WEIGHTS_OUTPUT]
    for name in names:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"Each output name must match [A-Za-z][A-Za-z0-9_]*, received the output name {name!r}")
    if not names:
        raise ValueError("The model has no task output to serve")
    return names


def _mmoe_layers(model):
    from keras_mmoe.layers import MMoELayer  # lazy: the serving module does not need the layers otherwise

    return [layer for layer in model.layers if isinstance(layer, MMoELayer)]


def _node_arguments(layer):
    nodes = layer._inbound_nodes
    if len(nodes) != 1:
        raise ValueError(
            f"include_gate_weights=True needs the MMoELayer {layer.name!r} to be called exactly once in the "
            f"model, it is called {len(nodes)} times"
        )
    node = nodes[0]
    if IS_KERAS_3:
        args, kwargs = node.arguments.args, node.arguments.kwargs
    else:
        args, kwargs = node.call_args, node.call_kwargs
    inputs = args[0] if args else kwargs.get("inputs")
    gate_inputs = args[1] if len(args) > 1 else kwargs.get("gate_inputs")
    return inputs, gate_inputs


class GateWeights:
    """Computes each task's gate weights of a model at serving time (see the module docstring)."""

    def __init__(self, model):
        outputs = _structure(model, "output")
        self.from_output = isinstance(outputs, dict) and MODEL_GATE_WEIGHTS_OUTPUT in outputs
        layers = _mmoe_layers(model)
        if len(layers) != 1:
            raise ValueError(
                "include_gate_weights=True needs exactly one MMoELayer at the top level of the model, "
                f"found {len(layers)} in model {model.name!r}"
                + ("" if layers else " (a model nested inside another model is not searched)")
            )
        self.layer = layers[0]
        self.task_names = list(self.layer.task_names)
        self.sub_model = None
        if not self.from_output:
            inputs, gate_inputs = _node_arguments(self.layer)
            targets = [inputs] if gate_inputs is None else [inputs, gate_inputs]
            # Shares every layer (and variable) with `model`; computes the MMoELayer's inputs.
            self.sub_model = keras.Model(_structure(model, "input"), targets, name=f"{model.name}_gate_inputs")

    def names(self):
        return [f"{task}{GATE_WEIGHTS_SUFFIX}" for task in self.task_names]

    def __call__(self, inputs, model_outputs):
        """``{<task>_gate_weights: (batch, num_experts)}`` for the batch ``inputs``."""
        if self.from_output:
            weights = model_outputs[MODEL_GATE_WEIGHTS_OUTPUT]
        else:
            values = self.sub_model(inputs, training=False)
            values = values if isinstance(values, (list, tuple)) else [values]
            gate_inputs = values[-1]
            per_gate = [gate(gate_inputs, training=False) for gate in self.layer.gates]
            if len(per_gate) == 1 and len(self.task_names) > 1:  # OMoE: one gate for all tasks
                per_gate = per_gate * len(self.task_names)
            weights = tf.stack(per_gate, axis=1)
        weights = tf.cast(weights, tf.float32)
        return {
            name: tf.identity(weights[:, k, :], name=name)
            for k, name in enumerate(self.names())
        }


class ServingFunctions:
    """The Python functions behind the signatures, shared by both Keras flavours.

    ``raw(inputs)`` takes the dict of raw features; ``examples(examples)`` takes a 1-D batch of
    serialized ``tf.train.Example``. Both return ``{output name: tensor}``.
    """

    def __init__(self, model, *, include_gate_weights=False, example_defaults=None, example_separators=None):
        self.model = model
        self.input_specs = input_specs(model)
        self.task_names = output_names(model)
        self.gate_weights = GateWeights(model) if include_gate_weights else None
        if self.gate_weights is not None:
            clash = sorted(set(self.gate_weights.names()) & set(self.task_names))
            if clash:
                raise ValueError(f"Gate weight outputs {clash} clash with task outputs of the same name")
            missing = sorted(set(self.gate_weights.task_names) - set(self.task_names))
            if missing:
                raise ValueError(
                    f"The MMoELayer's tasks {missing} are not outputs of the model {self.task_names}"
                )
        self.example_defaults = example_defaults
        self.example_separators = _check_separators(example_separators, self.input_specs)
        self._feature_spec = None

    @property
    def feature_spec(self):
        if self._feature_spec is None:
            self._feature_spec = example_feature_spec(self.input_specs, self.example_defaults, self.example_separators)
        return self._feature_spec

    def output_names(self):
        names = list(self.task_names)
        if self.gate_weights is not None:
            names += self.gate_weights.names()
        return names

    def raw(self, inputs):
        inputs = {name: inputs[name] for name in self.input_specs}
        outputs = self.model(inputs, training=False)
        result = {name: tf.identity(outputs[name], name=name) for name in self.task_names}
        if self.gate_weights is not None:
            result.update(self.gate_weights(inputs, outputs))
        return result

    def parse(self, examples):
        """Parses a 1-D batch of serialized examples into the model's raw inputs."""
        parsed = tf.io.parse_example(examples, self.feature_spec)
        for name, separator in self.example_separators.items():
            tokens = tf.RaggedTensor.from_sparse(parsed[name])
            parsed[name] = tf.strings.reduce_join(tokens, axis=1, separator=separator, keepdims=True)
        return {
            name: parsed[name] if parsed[name].dtype == spec.dtype else tf.cast(parsed[name], spec.dtype)
            for name, spec in self.input_specs.items()
        }

    def examples(self, examples):
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

    def raw_signature(self):
        return [dict(self.input_specs)]

    def examples_signature(self):
        return [tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)]
