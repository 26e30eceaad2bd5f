"""Gate weights of a model's gated layer (MMoELayer, CGCLayer, PLELayer) on a dataset, through a probe model.

The probe is a small Keras model that runs the model on a batch with ``training=False`` and
returns the gate weights of one of its gated layers on the very tensors that layer received
(:func:`keras_mmoe.layers.gating.run_with_gate_weights`). It shares the model's weights, so it
reads the gates as they are now, works whether or not the layer was built with
``return_gate_weights=True``, and finds the layer at any depth (nested models) of a Functional
or subclassed model.
"""

import weakref
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

from keras_mmoe._keras import keras
from keras_mmoe.layers.gating import find_gated_layers, is_gated_layer, run_with_gate_weights

LayerRef = Union[str, "keras.layers.Layer", None]
#: Gate weights over examples: an array (examples, tasks, experts) or a CGC/PLE dict of arrays.
GateWeights = Union[np.ndarray, Dict[str, np.ndarray]]


def find_mmoe_layers(model: "keras.Model") -> List[Tuple[str, "keras.layers.Layer"]]:
    """All gated layers (MMoELayer, CGCLayer, PLELayer, and any layer with a ``gate_weights``
    method) of a model, nested models included.

    Returns a list of ``(path, layer)`` where ``path`` is the layer's name prefixed by the
    names of the nested models that hold it (``"outer_submodel/mmoe"``).
    """
    return find_gated_layers(model)


def _select_layer(model, layer):
    layers = find_mmoe_layers(model)
    if is_gated_layer(layer):
        for path, candidate in layers:
            if candidate is layer:
                return path, candidate
        raise ValueError(f"{type(layer).__name__} {layer.name!r} is not part of model {model.name!r}")
    if layer is not None:
        for path, candidate in layers:
            if layer in (path, candidate.name):
                return path, candidate
        raise ValueError(
            f"No gated layer (MMoELayer, CGCLayer, PLELayer) named {layer!r} in model {model.name!r}; "
            f"found {[p for p, _ in layers]}"
        )
    if not layers:
        raise ValueError(
            f"Model {model.name!r} holds no gated layer (MMoELayer, CGCLayer, PLELayer; nested models searched too)"
        )
    if len(layers) > 1:
        raise ValueError(
            f"Model {model.name!r} holds {len(layers)} gated layers {[p for p, _ in layers]}; "
            "choose one with `layer=` (a name, a path or the layer itself)"
        )
    return layers[0]


def num_task_experts(layer: Any) -> Optional[int]:
    """The number of each task's own experts of a CGCLayer / PLELayer (None for a layer whose gates
    all weigh the same experts, such as MMoELayer): what :func:`gate_statistics` needs to read
    their gate-weight dicts."""
    for candidate in (layer, *getattr(layer, "levels", ())):
        count = getattr(candidate, "num_task_experts", None)
        if count is not None:
            return int(count)
    return None


class _GateProbe(keras.Model):
    """``probe(x)`` -> the gate weights of ``target`` when ``model`` runs on ``x``: a tensor
    (batch, tasks, experts) (MMoELayer) or the layer's dict of gates (CGCLayer, PLELayer)."""

    def __init__(self, model, target, **kwargs):
        super().__init__(**kwargs)
        # A weak reference: the probe is cached per model and must not keep the model alive.
        self._model_ref = weakref.ref(model)
        self.target = target
        self.built = True  # nothing of its own to build; a symbolic build could not run the model

    def call(self, inputs):
        model = self._model_ref()
        if model is None:  # pragma: no cover - the cache drops probes with their model
            raise ValueError("The model of this gate probe no longer exists")
        _, (weights,) = run_with_gate_weights(model, inputs, [self.target], training=False)
        return dict(weights) if isinstance(weights, Mapping) else weights


#: Probes already built, per model and requested layer: reusing one keeps its traced predict function.
_PROBES = weakref.WeakKeyDictionary()


def build_gate_probe(model: "keras.Model", layer: LayerRef = None) -> Tuple["keras.Model", Any, str]:
    """A model from ``model``'s inputs to the gate weights of one of its gated layers.

    Its output is what the layer's ``gate_weights`` returns: for an MMoELayer a tensor
    (batch, tasks, experts) (a shared gate is broadcast to every task), for a CGCLayer or
    PLELayer the dict of its gates; run it with :func:`predict_gate_weights`.

    Args:
        model: a Keras model holding a gated layer (possibly in a nested model).
        layer: the layer to read (its name, path or instance); needed when there are several.

    Returns:
        ``(probe, layer, path)``.
    """
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"Gate diagnostics need a Keras model, received {type(model).__name__} {getattr(model, 'name', '')!r}"
        )
    path, target = _select_layer(model, layer)
    try:
        cached = _PROBES.setdefault(model, {})
    except TypeError:  # not weak-referenceable: build every time
        cached = {}
    if id(target) not in cached:
        probe = _GateProbe(model, target, name=f"{target.name}_gate_probe")
        cached[id(target)] = (probe, target, path)
    return cached[id(target)]


def predict_gate_weights(
    probe: "keras.Model", target: Any, data: Any, steps: Optional[int] = None, batch_size: Optional[int] = None
) -> GateWeights:
    """Runs a probe from :func:`build_gate_probe`; returns float32 (examples, tasks, experts)
    (MMoELayer) or the CGCLayer / PLELayer dict of gates over the examples."""
    kwargs = {"verbose": 0}
    if steps is not None:
        kwargs["steps"] = steps
    if batch_size is not None:
        kwargs["batch_size"] = batch_size
    output = probe.predict(data, **kwargs)
    if isinstance(output, Mapping):
        weights = {key: np.asarray(value, dtype=np.float32) for key, value in output.items()}
        tasks = {key: w for key, w in weights.items() if key.endswith("tasks")}
    else:
        weights = np.asarray(output, dtype=np.float32)
        tasks = {"gate weights": weights}
    for key, w in tasks.items():
        if w.ndim != 3 or w.shape[1] != target.num_tasks:
            raise ValueError(
                f"{type(target).__name__} {target.name!r}: {key} of shape {w.shape}, "
                f"expected (examples, {target.num_tasks}, experts)"
            )
    return weights


def gate_weights_from_model(
    model: "keras.Model",
    data: Any,
    steps: Optional[int] = None,
    layer: LayerRef = None,
    batch_size: Optional[int] = None,
) -> GateWeights:
    """Gate weights of a model's gated layer on ``data``.

    For an MMoELayer an array (examples, tasks, experts); a shared gate (OMoE) is broadcast
    to every task. For a CGCLayer or PLELayer the dict its ``gate_weights`` returns, each entry
    over the examples: ``"tasks"`` (examples, tasks, own + shared experts) and, for a level
    with a shared gate, ``"shared"`` (examples, every expert of the level); PLE keys are
    prefixed ``level_<l>_``. The gates run in inference mode (no expert dropout). When the same
    layer is called more than once in the model, the gates are read on the inputs of its first
    call. :func:`keras_mmoe.diagnostics.gate_statistics` reads either form.

    Args:
        model: a model holding a gated layer (e.g. from :func:`keras_mmoe.models.build_mmoe`
            or :func:`keras_mmoe.models.build_ple`).
        data: what ``model.predict`` takes: a ``tf.data.Dataset`` of features or of
            ``(features, labels)`` pairs, a dict of arrays or an array.
        steps: number of batches to read from a dataset (None: all of it).
        layer: which gated layer (name, path or instance) when the model holds several.
        batch_size: batch size for in-memory arrays (Keras's default otherwise).

    Example:

    >>> x = {"features": np.ones((10, 8), "float32")}
    >>> model = keras_mmoe.models.build_mmoe(8, ["click", "buy"], num_experts=4)
    >>> w = gate_weights_from_model(model, x)
    >>> w.shape                                                   # (10, 2, 4)
    >>> ple = keras_mmoe.models.build_ple(8, ["click", "buy"], num_levels=2)
    >>> {k: v.shape for k, v in gate_weights_from_model(ple, x).items()}
    {'level_0_tasks': (10, 2, 6), 'level_0_shared': (10, 8), 'level_1_tasks': (10, 2, 6)}
    """
    probe, target, _ = build_gate_probe(model, layer)
    return predict_gate_weights(probe, target, data, steps=steps, batch_size=batch_size)
