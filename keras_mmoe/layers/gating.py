"""Gate weights of a gated layer inside a model: the call inputs, captured while the model runs.

A *gated layer* (:class:`~keras_mmoe.layers.MMoELayer`, :class:`~keras_mmoe.layers.CGCLayer`,
:class:`~keras_mmoe.layers.PLELayer`) has a public ``gate_weights(inputs, ...)`` method taking the
same arguments as its ``call`` (without ``training``), and reports every call from its
``__call__`` through :func:`record_call`. To read
the gate weights of such a layer inside any model (Functional, nested or subclassed; gate input
given by position or keyword), :func:`run_with_gate_weights` runs the model while
:func:`capture_calls` keeps the tensors the layer receives, and applies the layer's own
``gate_weights`` to them, in the same graph, with the model's variables. Only public Keras APIs
are used, and it works the same under Keras 3 and tf-keras.

Used by :mod:`keras_mmoe.serving` (``include_gate_weights``) and :mod:`keras_mmoe.diagnostics`.
"""

import contextlib
import threading
from typing import Any, Dict, Iterator, List, Mapping, Sequence, Tuple

from keras_mmoe._keras import keras

#: Call arguments that are not inputs of ``gate_weights``.
_CONTEXT_ARGUMENTS = ("training", "mask")

_state = threading.local()


def is_gated_layer(obj: Any) -> bool:
    """True for a Keras layer with a callable ``gate_weights`` method (MMoELayer, PLE/CGC layers)."""
    return isinstance(obj, keras.layers.Layer) and callable(getattr(obj, "gate_weights", None))


def find_gated_layers(model: "keras.Model") -> List[Tuple[str, "keras.layers.Layer"]]:
    """Every gated layer of ``model``, nested models included, as ``(path, layer)``.

    ``path`` is the layer's name prefixed by the names of the nested models that hold it
    (``"outer_submodel/mmoe"``). A layer reachable twice is listed once.
    """
    found, seen = [], set()

    def walk(holder, prefix):
        for layer in getattr(holder, "layers", []):
            if id(layer) in seen:
                continue
            seen.add(id(layer))
            if is_gated_layer(layer):
                found.append((prefix + layer.name, layer))
            elif isinstance(layer, keras.Model):
                walk(layer, prefix + layer.name + "/")

    walk(model, "")
    return found


def record_call(layer: "keras.layers.Layer", args: Sequence[Any], kwargs: Dict[str, Any]) -> None:
    """Called by a gated layer's ``__call__`` with its call arguments; keeps them if captured.

    Outside :func:`capture_calls` (training, plain inference) it does nothing but one lookup.
    """
    active = getattr(_state, "captures", None)
    if not active:
        return
    kwargs = {k: v for k, v in kwargs.items() if k not in _CONTEXT_ARGUMENTS}
    for capture in active:
        calls = capture.get(id(layer))
        if calls is not None:
            calls.append((tuple(args), kwargs))


@contextlib.contextmanager
def capture_calls(layers: Sequence["keras.layers.Layer"]) -> Iterator[Dict[int, list]]:
    """Within the block, keeps each call's ``(args, kwargs)`` of ``layers``, keyed by ``id(layer)``.

    Calls are kept in the order they run; per thread, so replicas of a distribution strategy
    each see their own.
    """
    capture = {id(layer): [] for layer in layers}
    active = getattr(_state, "captures", None)
    if active is None:
        active = _state.captures = []
    active.append(capture)
    try:
        yield capture
    finally:
        active.remove(capture)


def task_gate_weights(layer: "keras.layers.Layer", weights: Any) -> Any:
    """The (batch, tasks, experts) weights of the gates that feed ``layer``'s task outputs.

    ``weights`` is what ``layer.gate_weights`` returned: a tensor (MMoELayer), or a dict of the
    gates of a CGCLayer (its ``"tasks"`` entry) or a PLELayer (its last level's
    ``"level_<N-1>_tasks"``), whose task ``k`` row weighs task ``k``'s own experts, then the shared ones.
    """
    if not isinstance(weights, Mapping):
        return weights
    from keras_mmoe.layers.cgc import TASK_GATES  # lazy: cgc imports this module

    levels = getattr(layer, "num_levels", None)
    key = TASK_GATES if levels is None else f"level_{levels - 1}_{TASK_GATES}"
    if key not in weights:
        raise ValueError(
            f"{type(layer).__name__} {layer.name!r}: its gate_weights returned {sorted(weights)}, without the task "
            f"gates {key!r}"
        )
    return weights[key]


def run_with_gate_weights(
    model: "keras.Model",
    inputs: Any,
    layers: Sequence["keras.layers.Layer"],
    training: bool = False,
    single_call: bool = False,
) -> Tuple[Any, List[Any]]:
    """Runs ``model(inputs, training=training)`` and computes the gate weights of ``layers`` in it.

    Args:
        model: a Keras model that calls the gated ``layers`` (at any depth).
        inputs: what the model takes (tensors, symbolic tensors of a ``tf.function``, arrays).
        layers: the gated layers to read.
        training: the model's training flag; the gate weights are always those of inference.
        single_call: raise when a layer is called more than once in one run (the gate weights
            of a shared layer are then ambiguous); by default its first call is read.

    Returns:
        ``(outputs, weights)``: the model's outputs and a list with, for each layer, its
        ``gate_weights`` on the inputs of its first call in this run.

    Raises:
        ValueError: a layer was not called while the model ran (or, with ``single_call``, more than once).
    """
    with capture_calls(layers) as calls:
        outputs = model(inputs, training=training)
    weights = []
    for layer in layers:
        seen = calls[id(layer)]
        if not seen:
            raise ValueError(
                f"{type(layer).__name__} {layer.name!r} was not called while model {model.name!r} ran; "
                "its gate weights can only be read from a model that calls it"
            )
        if single_call and len(seen) > 1:
            raise ValueError(
                f"{type(layer).__name__} {layer.name!r} is called {len(seen)} times in model {model.name!r}; "
                "its gate weights are ambiguous (call it once)"
            )
        args, kwargs = seen[0]
        weights.append(layer.gate_weights(*args, **kwargs))
    return outputs, weights
