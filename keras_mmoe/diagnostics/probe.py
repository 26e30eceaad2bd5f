"""Gate weights of a model's MMoELayer on a dataset, through a probe model.

The probe is a Functional model from the model's inputs to the outputs of the layer's gate
sub-layers (:class:`ExpertDropoutGate`), called on the very tensors that feed the
MMoELayer in the model's graph (its ``gate_inputs`` when given, else its ``inputs``), with
``training=False``. It shares the model's weights, so it reads the gates as they are now,
and it works whether or not the layer was built with ``return_gate_weights=True``.
"""

import weakref

import numpy as np

from keras_mmoe._keras import IS_KERAS_3, keras
from keras_mmoe.layers.mmoe import MMoELayer


def _is_functional(model):
    return isinstance(model, keras.Model) and hasattr(model, "_nodes" if IS_KERAS_3 else "_network_nodes")


def find_mmoe_layers(model):
    """All MMoELayer instances of a Functional model, nested models included.

    Returns a list of ``(path, layer)`` where ``path`` is the layer's name prefixed by the
    names of the nested models that hold it (``"outer_submodel/mmoe"``).
    """
    found = []

    def walk(m, prefix):
        for layer in getattr(m, "layers", []):
            if isinstance(layer, MMoELayer):
                found.append((prefix + layer.name, layer))
            elif isinstance(layer, keras.Model):
                walk(layer, prefix + layer.name + "/")

    walk(model, "")
    return found


def _select_layer(model, layer):
    layers = find_mmoe_layers(model)
    if isinstance(layer, MMoELayer):
        for path, candidate in layers:
            if candidate is layer:
                return path, candidate
        raise ValueError(f"MMoELayer {layer.name!r} is not part of model {model.name!r}")
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


def _node_in(model, layer):
    """The call node of ``layer`` that belongs to ``model``'s graph, as ``(args, kwargs)``."""
    nodes = layer._inbound_nodes
    if IS_KERAS_3:
        member = getattr(model, "_nodes", set())
        keys = [f"{id(layer)}_ib-{i}" for i in range(len(nodes))]
    else:
        member = getattr(model, "_network_nodes", set())
        keys = [f"{layer.name}_ib-{i}" for i in range(len(nodes))]
    for key, node in zip(keys, nodes):
        if key in member:
            if IS_KERAS_3:
                return list(node.arguments.args), dict(node.arguments.kwargs)
            return list(node.call_args), dict(node.call_kwargs)
    raise ValueError(
        f"Layer {layer.name!r} is not called in the graph of model {model.name!r}; gate diagnostics "
        "need a Functional model (subclassed models: build with return_gate_weights=True and read "
        "the gate weights yourself)"
    )


def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _gate_tensors(model, target):
    """Symbolic gate outputs of ``target`` (an MMoELayer) in ``model``'s graph, or None."""
    for layer in model.layers:
        if layer is target:
            args, kwargs = _node_in(model, layer)
            inputs = args[0] if args else kwargs["inputs"]
            gate_inputs = args[1] if len(args) > 1 else kwargs.get("gate_inputs")
            x = inputs if gate_inputs is None else gate_inputs
            return [gate(x, training=False) for gate in layer.gates]
        if isinstance(layer, keras.Model) and _is_functional(layer):
            inner = _gate_tensors(layer, target)
            if inner is None:
                continue
            sub_probe = keras.Model(layer.input, inner, name=f"{layer.name}_gate_probe")
            args, kwargs = _node_in(model, layer)
            call_input = args[0] if args else kwargs["inputs"]
            return _as_list(sub_probe(call_input, training=False))
    return None


#: Probes already built, per model and requested layer: building one calls the gate layers on
#: symbolic tensors, which adds a node to them each time, so repeated diagnoses reuse it.
_PROBES = weakref.WeakKeyDictionary()


def build_gate_probe(model, layer=None):
    """A Functional model from ``model``'s inputs to the gate weights of one of its MMoELayers.

    Its outputs are a list with one tensor (batch, experts) per gate (one per task, or a
    single one for a shared gate). :func:`gate_weights_from_model` stacks them.

    Args:
        model: a Functional Keras model holding an MMoELayer (possibly in a nested model).
        layer: the MMoELayer to read (its name, path or instance); needed when there are several.

    Returns:
        ``(probe, mmoe_layer, path)``.
    """
    if not _is_functional(model):
        raise ValueError(
            f"Gate diagnostics need a Functional model, received {type(model).__name__} {getattr(model, 'name', '')!r}"
        )
    path, target = _select_layer(model, layer)
    try:
        cached = _PROBES.setdefault(model, {})
    except TypeError:  # not weak-referenceable: build every time
        cached = {}
    if id(target) in cached:
        return cached[id(target)]
    tensors = _gate_tensors(model, target)
    if tensors is None:  # pragma: no cover - _select_layer found it, so the walk does too
        raise ValueError(f"MMoELayer {path!r} not found in the graph of {model.name!r}")
    probe = keras.Model(model.input, tensors, name=f"{target.name}_gate_probe")
    cached[id(target)] = (probe, target, path)
    return probe, target, path


def predict_gate_weights(probe, target, data, steps=None, batch_size=None):
    """Runs a probe from :func:`build_gate_probe`; returns (examples, tasks, experts) float32."""
    kwargs = {"verbose": 0}
    if steps is not None:
        kwargs["steps"] = steps
    if batch_size is not None:
        kwargs["batch_size"] = batch_size
    outputs = _as_list(probe.predict(data, **kwargs))
    weights = np.stack([np.asarray(o, dtype=np.float32) for o in outputs], axis=1)
    if target.shared_gate:
        weights = np.broadcast_to(weights, (weights.shape[0], target.num_tasks, weights.shape[2])).copy()
    return weights


def gate_weights_from_model(model, data, steps=None, layer=None, batch_size=None):
    """Gate weights of a model's MMoELayer on ``data``, shape (examples, tasks, experts).

    The gates run in inference mode (no expert dropout). A shared gate (OMoE) is
    broadcast to every task. When the same MMoELayer is called more than once in the model,
    the gates are read on the inputs of its first call that belongs to the model.

    Args:
        model: a Functional model holding an MMoELayer (e.g. from :func:`keras_mmoe.models.build_mmoe`).
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
