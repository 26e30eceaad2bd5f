"""Builders of whole multi-task models: the MMoE paper's section 5 models.

Every builder returns a Functional ``keras.Model`` (:func:`functional_model`) whose named
``keras.Input`` take features by name from any mapping (so ``tf.data`` pipelines and exported
serving signatures use the names) and whose outputs are a dict keyed by task name, so losses,
metrics and ``tf.data`` labels are keyed by task name too. Each task has its own tower ``h^k`` (Dense layers, then one output unit: sigmoid for
binary tasks, linear for regression), computed in float32 under mixed precision.

    MMoE           y_k = h^k( sum_i g^k(x)_i f_i(x) )        one gate per task
    OMoE           y_k = h^k( sum_i g(x)_i f_i(x) )          one gate for all tasks
    CGC            y_k = h^k( sum_i g^k(x)_i S^k(x)_i )      S^k: task k's own experts, then shared ones
    PLE            CGC levels stacked; level j reads level j-1's task and shared outputs
    Shared-Bottom  y_k = h^k( f(x) )                         one shared MLP bottom
    Single-Task    y_k = h^k( f^k(x) )                       a separate network per task
"""

import inspect
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf

from keras_mmoe._keras import keras
from keras_mmoe.layers import CGCLayer, MMoELayer, PLELayer
from keras_mmoe.layers import _utils
from keras_mmoe.layers.cgc import TASK_GATES
from keras_mmoe.models.tasks import normalize_tasks, output_activation

#: A builder's ``inputs``: an int d (one float input ``features`` of shape (d,)), a ``keras.Input``, or a dict
#: ``{name: keras.Input(..., name=name)}`` (Keras tensors are ``Any``: their class differs between the flavours).
InputsLike = Union[int, Mapping[str, Any], Any]
#: A builder's ``tasks``: ``{name: "binary" | "regression"}``, a list of names (binary) or of (name, kind) pairs.
TasksLike = Union[Mapping[str, str], Sequence[Any]]
#: ``output_scaling``: ``{regression task: (scale, offset)}``.
OutputScaling = Dict[str, Sequence[float]]


def functional_model(inputs: Mapping[str, Any], outputs: Any, name: Optional[str] = None) -> "keras.Model":
    """A Functional model whose named inputs take features by name from any mapping.

    ``keras.Model(dict_of_inputs, outputs)`` matches a batch of features to its inputs by
    position under Keras 3: a plain dict flattens in sorted key order, but an ``OrderedDict``
    (what ``tf.data.experimental.make_csv_dataset`` yields) in insertion order, so the
    features of a CSV file reach the wrong inputs ("Cast string to float is not supported", or
    silently swapped numbers). A model built from the list of named inputs is matched by the
    inputs' names under Keras 3 and tf-keras, whatever the mapping's order, and ignores extra
    features. The list is in sorted key order, the order the dict form used.

    Args:
        inputs: ``{name: keras.Input(..., name=name)}``; each key must be its Input's name.
        outputs: the model's outputs (e.g. a dict keyed by task name).
        name: the model's name.

    Example:

    >>> inputs, encoded = keras_mmoe.features.build_feature_encoder(["age"], ["city"], adapt_data=ds)
    >>> model = functional_model(inputs, {"click": keras.layers.Dense(1, "sigmoid", name="click")(encoded)})
    >>> model.fit(ds, ...)   # ds yields ({"city": ..., "age": ...}, labels) in any key order
    """
    if not isinstance(inputs, Mapping) or not inputs:
        raise ValueError(f"`inputs` must be a non-empty dict of named keras.Input, received: {inputs!r}")
    for key, tensor in inputs.items():
        input_name = str(getattr(tensor, "name", "")).split(":")[0]
        if key != input_name:
            raise ValueError(
                f"`inputs` key {key!r} holds the keras.Input named {input_name!r}; the model takes features by the "
                f"Input's name, so name them alike: keras.Input(..., name={key!r})"
            )
    return keras.Model([inputs[key] for key in sorted(inputs)], outputs, name=name)


def make_inputs(inputs: InputsLike) -> Dict[str, Any]:
    """Normalizes ``inputs`` to a dict of named Keras inputs.

    ``inputs`` may be an int ``d`` (one float input ``features`` of shape (d,)), a single
    ``keras.Input`` (keyed by its name) or a dict of them, each keyed by its Input's name.
    """
    if isinstance(inputs, int) and not isinstance(inputs, bool):
        _utils.check_positive_int("inputs", inputs)
        return {"features": keras.Input((inputs,), name="features")}
    if isinstance(inputs, dict):
        if not inputs:
            raise ValueError("`inputs` must hold at least one keras.Input, received an empty dict")
        return dict(inputs)
    name = getattr(inputs, "name", None)
    if name is None:
        raise ValueError(f"`inputs` must be an int, a keras.Input or a dict of them, received: {inputs!r}")
    return {name.split(":")[0]: inputs}


def default_features(inputs: Mapping[str, Any]) -> Any:
    """The model's dense feature vector when no ``features`` tensor is given: the inputs concatenated."""
    tensors = [inputs[name] for name in sorted(inputs)]
    for name in sorted(inputs):
        t = inputs[name]
        if t.dtype not in (tf.float16, tf.float32, tf.float64, "float16", "float32", "float64") or len(t.shape) != 2:
            raise ValueError(
                f"Input {name!r} (dtype {t.dtype}, shape {tuple(t.shape)}) cannot feed the model directly; "
                "pass `features`, a dense (batch, d) tensor computed from the inputs (for example by "
                "keras_mmoe.features.build_feature_encoder)"
            )
    return tensors[0] if len(tensors) == 1 else keras.layers.Concatenate(name="features_concat")(tensors)


def _mlp(x, units, activation, prefix, kernel_regularizer=None, dropout=0.0, dtype=None):
    for i, u in enumerate(units):
        x = keras.layers.Dense(
            u, activation=activation, kernel_regularizer=kernel_regularizer, dtype=dtype, name=f"{prefix}_{i}"
        )(x)
        if dropout:
            x = keras.layers.Dropout(dropout, name=f"{prefix}_dropout_{i}")(x)
    return x


def check_output_scaling(
    output_scaling: Optional[OutputScaling], tasks: Mapping[str, str]
) -> Dict[str, Tuple[float, float]]:
    """``{task: (scale, offset)}`` for regression tasks of ``tasks``, floats; ``{}`` for None."""
    if output_scaling is None:
        return {}
    if not isinstance(output_scaling, dict):
        raise ValueError(f"`output_scaling` must be a dict {{task: (scale, offset)}}, received: {output_scaling!r}")
    checked = {}
    for name, pair in output_scaling.items():
        if tasks.get(name) != "regression":
            raise ValueError(f"`output_scaling` applies to regression tasks; {name!r} is "
                             f"{'a ' + tasks[name] + ' task' if name in tasks else 'not a task'} (tasks: {dict(tasks)})")
        try:
            scale, offset = (float(v) for v in pair)
        except (TypeError, ValueError):
            raise ValueError(f"`output_scaling[{name!r}]` must be a pair (scale, offset), received: {pair!r}") from None
        if not (np.isfinite(scale) and np.isfinite(offset) and scale != 0):
            raise ValueError(f"`output_scaling[{name!r}]` must be finite with a non-zero scale, received: {pair!r}")
        checked[name] = (scale, offset)
    return checked


def task_output(x: Any, name: str, kind: str, output_scaling: Optional[Mapping[str, Sequence[float]]] = None) -> Any:
    """The output unit of task ``name``: Dense(1) with the task's activation, named ``name``, float32.

    With ``output_scaling[name] = (scale, offset)`` (regression), the Dense unit ``<name>_standardized``
    predicts the standardized label and a ``Rescaling`` layer named ``name`` returns
    ``scale * z + offset``, the label's own units.
    """
    scaling = (output_scaling or {}).get(name)
    if scaling is None:
        return keras.layers.Dense(1, activation=output_activation(kind), dtype="float32", name=name)(x)
    z = keras.layers.Dense(1, dtype="float32", name=f"{name}_standardized")(x)
    return keras.layers.Rescaling(scale=scaling[0], offset=scaling[1], dtype="float32", name=name)(z)


def build_towers(
    task_inputs: Mapping[str, Any],
    tasks: Mapping[str, str],
    tower_units: Sequence[int] = (8,),
    activation: Any = "relu",
    kernel_regularizer: Any = None,
    dropout: float = 0.0,
    dtype: Any = None,
    output_scaling: Optional[OutputScaling] = None,
) -> Dict[str, Any]:
    """One tower per task on its input tensor; returns ``{task: output}``.

    The hidden layers compute under ``dtype`` (a Keras dtype policy name such as
    ``"mixed_bfloat16"``; None: the global policy); the output layer always in float32.

    ``output_scaling``: optional ``{regression task: (scale, offset)}``; that task's tower predicts
    the standardized label ``z`` and its output is ``scale * z + offset`` (see :func:`task_output`).
    """
    scaling = check_output_scaling(output_scaling, tasks)
    outputs = {}
    for name, kind in tasks.items():
        h = _mlp(task_inputs[name], tower_units, activation, f"{name}_tower", kernel_regularizer, dropout, dtype)
        outputs[name] = task_output(h, name, kind, scaling)
    return outputs


def _resolve(inputs, tasks, features):
    inputs = make_inputs(inputs)
    tasks = normalize_tasks(tasks)
    features = default_features(inputs) if features is None else features
    return inputs, tasks, features


def build_mmoe(
    inputs: InputsLike,
    tasks: TasksLike,
    *,
    features: Any = None,
    gate_features: Any = None,
    num_experts: int = 8,
    expert_units: Union[int, Sequence[int]] = 16,
    tower_units: Sequence[int] = (8,),
    expert_dropout_rate: float = 0.0,
    gate_temperature: float = 1.0,
    gate_hidden_units: Sequence[int] = (),
    shared_gate: bool = False,
    expert_activation: Any = "relu",
    tower_activation: Any = "relu",
    tower_dropout: float = 0.0,
    kernel_regularizer: Any = None,
    return_gate_weights: bool = False,
    gate_use_bias: Optional[bool] = None,
    seed: Optional[int] = None,
    dtype: Any = None,
    output_scaling: Optional[OutputScaling] = None,
    name: str = "mmoe",
) -> "keras.Model":
    """MMoE (or OMoE with ``shared_gate=True``): MMoELayer, then one tower per task.

    Args:
        inputs: int d, a keras.Input, or a dict of named keras.Input (the model's inputs).
        tasks: ``{name: "binary" | "regression"}`` or a list of names (binary).
        features: dense (batch, d) tensor computed from ``inputs`` (default: the inputs).
        gate_features: optional different input for the gates (YouTube placement).
        return_gate_weights: add an output ``gate_weights`` (batch, tasks, experts).
        dtype: Keras dtype policy of the MMoE layer and the towers' hidden layers, e.g.
            ``"mixed_bfloat16"`` (compute in bfloat16, variables in float32); None uses the
            global policy. The outputs (and so the losses) stay float32, and so do the layers
            that compute ``features``. XLA is a ``model.compile(jit_compile=True)`` setting.
        output_scaling: ``{regression task: (scale, offset)}``: outputs in the label's units
            from a tower trained on the standardized label (see :func:`build_towers`).
        Other arguments: see :class:`keras_mmoe.MMoELayer` and :func:`build_towers`.
    """
    inputs, tasks, features = _resolve(inputs, tasks, features)
    layer = MMoELayer(
        num_experts=num_experts,
        expert_units=expert_units,
        task_names=list(tasks),
        expert_activation=expert_activation,
        expert_dropout_rate=expert_dropout_rate,
        gate_temperature=gate_temperature,
        gate_hidden_units=gate_hidden_units,
        shared_gate=shared_gate,
        kernel_regularizer=kernel_regularizer,
        return_gate_weights=return_gate_weights,
        gate_use_bias=gate_use_bias,
        seed=seed,
        dtype=dtype,
        name="omoe" if shared_gate else "mmoe",
    )
    towers = dict(tower_units=tower_units, activation=tower_activation, kernel_regularizer=kernel_regularizer,
                  dropout=tower_dropout, dtype=dtype, output_scaling=output_scaling)
    return _mixture_model(layer, inputs, tasks, features, gate_features, towers, return_gate_weights, name)


def _mixture_model(layer, inputs, tasks, features, gate_features, towers, return_gate_weights, name, gate_key=None):
    """``layer`` (MMoE, CGC or PLE) on the features, one tower per task, optionally a ``gate_weights`` output.

    ``gate_weights`` is (batch, tasks, experts): the layer's gate weights, or for a layer returning
    a dict of them, the entry ``gate_key`` (the task gates that feed the towers).
    """
    result = layer(features, gate_inputs=gate_features) if gate_features is not None else layer(features)
    task_outputs, gate_weights = result if return_gate_weights else (result, None)
    outputs = build_towers(dict(zip(tasks, task_outputs)), tasks, **towers)
    if return_gate_weights:
        gate_weights = gate_weights if gate_key is None else gate_weights[gate_key]
        outputs["gate_weights"] = keras.layers.Activation("linear", dtype="float32", name="gate_weights")(gate_weights)
    return functional_model(inputs, outputs, name=name)


def build_omoe(inputs: InputsLike, tasks: TasksLike, **kwargs: Any) -> "keras.Model":
    """One-gate Mixture-of-Experts: :func:`build_mmoe` with one gate shared by all tasks."""
    kwargs.setdefault("name", "omoe")
    return build_mmoe(inputs, tasks, shared_gate=True, **kwargs)


# build_omoe takes build_mmoe's arguments but `shared_gate`: say so to inspect.signature (specs check keys by it).
build_omoe.__signature__ = inspect.signature(build_mmoe).replace(parameters=[
    p.replace(default="omoe") if name == "name" else p
    for name, p in inspect.signature(build_mmoe).parameters.items() if name != "shared_gate"])


_CGC = object()  # build_ple's num_levels when build_cgc calls it: one level, as a CGCLayer


def build_ple(
    inputs: InputsLike,
    tasks: TasksLike,
    *,
    features: Any = None,
    gate_features: Any = None,
    num_levels: int = 2,
    num_shared_experts: int = 4,
    num_task_experts: int = 2,
    expert_units: Union[int, Sequence[int]] = 16,
    tower_units: Sequence[int] = (8,),
    expert_dropout_rate: float = 0.0,
    gate_temperature: float = 1.0,
    gate_hidden_units: Sequence[int] = (),
    gate_use_bias: Optional[bool] = None,
    expert_activation: Any = "relu",
    tower_activation: Any = "relu",
    tower_dropout: float = 0.0,
    kernel_regularizer: Any = None,
    return_gate_weights: bool = False,
    seed: Optional[int] = None,
    dtype: Any = None,
    output_scaling: Optional[OutputScaling] = None,
    name: str = "ple",
) -> "keras.Model":
    """PLE (Tang et al., RecSys 2020): a :class:`keras_mmoe.PLELayer` named ``ple``, then one tower per task.

    Each of the ``num_levels`` CGC levels gives task ``k``'s gate its ``num_task_experts`` own
    experts and the ``num_shared_experts`` shared ones; the defaults (4 shared, 2 per task, 16
    units) give two tasks the 8 experts of :func:`build_mmoe`'s defaults at every level.

    Args:
        inputs: int d, a keras.Input, or a dict of named keras.Input (the model's inputs).
        tasks: ``{name: "binary" | "regression"}`` or a list of names (binary).
        features: dense (batch, d) tensor computed from ``inputs`` (default: the inputs).
        gate_features: optional different input read by every gate.
        num_levels: number of extraction levels (``build_cgc`` is one level, as a CGCLayer).
        return_gate_weights: add an output ``gate_weights`` (batch, tasks, num_task_experts +
            num_shared_experts): the last level's task gates, which feed the towers, own experts
            first (every gate of every level: ``model.get_layer("ple").gate_weights(...)``).
        dtype: Keras dtype policy of the CGC/PLE layer and the towers' hidden layers, e.g.
            ``"mixed_bfloat16"``; None uses the global policy. The outputs stay float32, as in
            :func:`build_mmoe`.
        output_scaling: ``{regression task: (scale, offset)}``: outputs in the label's units
            from a tower trained on the standardized label (see :func:`build_towers`).
        Other arguments: see :class:`keras_mmoe.PLELayer` and :func:`build_towers`.
    """
    inputs, tasks, features = _resolve(inputs, tasks, features)
    layer_kwargs = dict(
        num_shared_experts=num_shared_experts,
        num_task_experts=num_task_experts,
        expert_units=expert_units,
        task_names=list(tasks),
        expert_activation=expert_activation,
        expert_dropout_rate=expert_dropout_rate,
        gate_temperature=gate_temperature,
        gate_hidden_units=gate_hidden_units,
        gate_use_bias=gate_use_bias,
        kernel_regularizer=kernel_regularizer,
        return_gate_weights=return_gate_weights,
        seed=seed,
        dtype=dtype,
    )
    if num_levels is _CGC:
        layer, task_gates = CGCLayer(name="cgc", **layer_kwargs), TASK_GATES
    else:
        layer = PLELayer(num_levels=num_levels, name="ple", **layer_kwargs)
        task_gates = f"level_{layer.num_levels - 1}_{TASK_GATES}"
    towers = dict(tower_units=tower_units, activation=tower_activation, kernel_regularizer=kernel_regularizer,
                  dropout=tower_dropout, dtype=dtype, output_scaling=output_scaling)
    return _mixture_model(layer, inputs, tasks, features, gate_features, towers, return_gate_weights, name, task_gates)


def build_cgc(inputs: InputsLike, tasks: TasksLike, **kwargs: Any) -> "keras.Model":
    """CGC (Tang et al., RecSys 2020): a :class:`keras_mmoe.CGCLayer` named ``cgc``, then one tower per task.

    The arguments of :func:`build_ple` but ``num_levels``; ``gate_weights`` (with
    ``return_gate_weights=True``) is the CGC's task gates.
    """
    if "num_levels" in kwargs:
        raise ValueError(
            f"build_cgc builds one level; use build_ple for `num_levels`, received: num_levels={kwargs['num_levels']!r}"
        )
    kwargs.setdefault("name", "cgc")
    return build_ple(inputs, tasks, num_levels=_CGC, **kwargs)


build_cgc.__signature__ = inspect.signature(build_ple).replace(parameters=[
    p.replace(default="cgc") if name == "name" else p
    for name, p in inspect.signature(build_ple).parameters.items() if name != "num_levels"])


def build_shared_bottom(
    inputs: InputsLike,
    tasks: TasksLike,
    *,
    features: Any = None,
    bottom_units: Union[int, Sequence[int]] = (113,),
    tower_units: Sequence[int] = (8,),
    activation: Any = "relu",
    tower_dropout: float = 0.0,
    kernel_regularizer: Any = None,
    dtype: Any = None,
    output_scaling: Optional[OutputScaling] = None,
    name: str = "shared_bottom",
) -> "keras.Model":
    """Shared-Bottom: one MLP bottom shared by all tasks, then one tower per task.

    ``dtype``: Keras dtype policy of the bottom and the towers' hidden layers (e.g.
    ``"mixed_bfloat16"``); the outputs stay float32, as in :func:`build_mmoe`.
    """
    inputs, tasks, features = _resolve(inputs, tasks, features)
    bottom = _mlp(features, _utils.check_units("bottom_units", bottom_units), activation, "bottom", kernel_regularizer,
                  dtype=dtype)
    outputs = build_towers({t: bottom for t in tasks}, tasks, tower_units, activation, kernel_regularizer, tower_dropout,
                           dtype=dtype, output_scaling=output_scaling)
    return functional_model(inputs, outputs, name=name)


def build_single_task(
    inputs: InputsLike,
    tasks: TasksLike,
    *,
    features: Any = None,
    hidden_units: Union[int, Sequence[int]] = (64,),
    tower_units: Sequence[int] = (8,),
    activation: Any = "relu",
    tower_dropout: float = 0.0,
    kernel_regularizer: Any = None,
    dtype: Any = None,
    output_scaling: Optional[OutputScaling] = None,
    name: str = "single_task",
) -> "keras.Model":
    """Single-Task baseline: an independent network per task, sharing nothing but the inputs.

    Built as one model with a dict output so that it trains, evaluates and exports like the
    others; no parameter is shared, so each task's gradients are its own. ``dtype``: Keras dtype
    policy of the hidden and tower layers (e.g. ``"mixed_bfloat16"``); the outputs stay float32.
    """
    inputs, tasks, features = _resolve(inputs, tasks, features)
    units = _utils.check_units("hidden_units", hidden_units)
    hidden = {t: _mlp(features, units, activation, f"{t}_hidden", kernel_regularizer, dtype=dtype) for t in tasks}
    outputs = build_towers(hidden, tasks, tower_units, activation, kernel_regularizer, tower_dropout,
                           dtype=dtype, output_scaling=output_scaling)
    return functional_model(inputs, outputs, name=name)
