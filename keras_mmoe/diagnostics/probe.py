"""Gate weights of a model's MMoELayer on a dataset, through a probe model.

The probe is a small Keras model that runs the model on a batch with ``training=False`` and
returns the gate weights of one of its gated layers on the very tensors that layer received
(:func:`keras_mmoe.layers.gating.run_with_gate_weights`). It shares the model's weights, so it
reads the gates as they are now, works whether or not the layer was built with
``return_gate_weights=True``, and finds the layer at any depth (nested models) of a Functional
or subclassed model.
"""

import weakref
from typing import Any, List, Mapping, Optional, Tuple, Union

import numpy as np

from keras_mmoe._keras import keras
from keras_mmoe.layers.gating import find_gated_layers, is_gated_layer, run_with_gate_weights

LayerRef = Union[str, "keras.layers.Layer", None]


def find_mmoe_layers(model: "keras.Model") -> List[Tuple[str, "keras.layers.Layer"]]:
    """All gated layers (MMoELayer, and any layer with a ``gate_weights`` method) of a model,
    nested models included.

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
            f"No MMoELayer named {layer!r} in model {model.name!r}; found {[p for p, _ in layers]}"
        )
    if not layers:
        raise ValueError(f"Model {model.name!r} holds no MMoELayer (nested models searched too)")
    if len(layers) > 1:
        raise ValueError(
            f"Model {model.name!r} holds {len(layers)} MMoELayers {[p for p, _ in layers]}; "
            "choose one with `layer=` (a name, a path or the layer itself)"
        )
    return layers[0]


class _GateProbe(keras.Model):
    """``probe(x)`` -> the gate weights (batch, tasks, experts) of ``target`` when ``model`` runs on ``x``."""

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
        if isinstance(weights, Mapping):  # CGC/PLE: gates over each task's own experts and shared ones
            raise ValueError(
                f"Gate diagnostics read gates over experts shared by every task (MMoELayer); "
                f"{type(self.target).__name__} {self.target.name!r} gives each task its own experts too "
                f"(gate weights {sorted(weights)}): read them with model.get_layer({self.target.name!r}).gate_weights(...)"
            )
        return weights


#: Probes already built, per model and requested layer: reusing one keeps its traced predict function.
_PROBES = weakref.WeakKeyDictionary()


def build_gate_probe(model: "keras.Model", layer: LayerRef = None) -> Tuple["keras.Model", Any, str]:
    """A model from ``model``'s inputs to the gate weights of one of its MMoELayers.

    Its output has shape (batch, tasks, experts) (a shared gate is broadcast to every task);
    run it with :func:`predict_gate_weights`.

    Args:
        model: a Keras model holding an MMoELayer (possibly in a nested model).
        layer: the MMoELayer to read (its name, path or instance); needed when there are several.

    Returns:
        ``(probe, mmoe_layer, path)``.
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
) -> np.ndarray:
    """Runs a probe from :func:`build_gate_probe`; returns (examples, tasks, experts) float32."""
    kwargs = {"verbose": 0}
    if steps is not None:
        kwargs["steps"] = steps
    if batch_size is not None:
        kwargs["batch_size"] = batch_size
    weights = np.asarray(probe.predict(data, **kwargs), dtype=np.float32)
    if weights.ndim != 3 or weights.shape[1] != target.num_tasks:
        raise ValueError(
            f"{type(target).__name__} {target.name!r}: gate weights of shape {weights.shape}, "
            f"expected (examples, {target.num_tasks}, experts)"
        )
    return weights


def gate_weights_from_model(
    model: "keras.Model",
    data: Any,
    steps: Optional[int] = None,
    layer: LayerRef = None,
    batch_size: Optional[int] = None,
) -> np.ndarray:
    """Gate weights of a model's MMoELayer on ``data``, shape (examples, tasks, experts).

    The gates run in inference mode (no expert dropout). A shared gate (OMoE) is
    broadcast to every task. When the same MMoELayer is called more than once in the model,
    the gates are read on the inputs of its first call.

    Args:
        model: a model holding an MMoELayer (e.g. from :func:`keras_mmoe.models.build_mmoe`).
        data: what ``model.predict`` takes: a ``tf.data.Dataset`` of features or of
            ``(features, labels)`` pairs, a dict of arrays or an array.
        steps: number of batches to read from a dataset (None: all of it).
        layer: which MMoELayer (name, path or instance) when the model holds several.
        batch_size: batch size for in-memory arrays (Keras's default otherwise).

    Example:

    >>> model = keras_mmoe.models.build_mmoe(8, ["click", "buy"], num_experts=4)
    >>> w = gate_weights_from_model(model, {"features": np.ones((10, 8), "float32")})
    >>> w.shape                                                   # (10, 2, 4)
    """
    probe, target, _ = build_gate_probe(model, layer)
    return predict_gate_weights(probe, target, data, steps=steps, batch_size=batch_size)
