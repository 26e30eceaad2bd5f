"""Task specifications: name -> kind, and the losses, metrics and output activations that follow."""

from __future__ import annotations

from collections import OrderedDict
from typing import Mapping, Sequence

from keras_mmoe._keras import keras
from keras_mmoe._validation import resolve_task_names

TASK_KINDS = ("binary", "regression")


def normalize_tasks(tasks: Mapping[str, str] | Sequence) -> OrderedDict:
    """Returns an ordered ``{task_name: kind}`` from a dict, a list of names (binary) or pairs.

    ``kind`` is ``"binary"`` (sigmoid output, binary cross-entropy, AUC) or
    ``"regression"`` (linear output, mean squared error).
    """
    if isinstance(tasks, dict):
        items = list(tasks.items())
    elif isinstance(tasks, str):
        raise ValueError(f"`tasks` must be a dict of task name -> kind or a list of names, received: {tasks!r}")
    else:
        items = [(t, "binary") if isinstance(t, str) else tuple(t) for t in tasks]
    names = resolve_task_names(None, [name for name, _ in items])
    for name, kind in items:
        if kind not in TASK_KINDS:
            raise ValueError(f"Task {name!r} has unknown kind {kind!r}; expected one of {TASK_KINDS}")
    return OrderedDict(zip(names, (kind for _, kind in items)))


def output_activation(kind: str) -> str | None:
    return "sigmoid" if kind == "binary" else None


def compile_kwargs(tasks: Mapping[str, str] | Sequence, loss_weights: Mapping[str, float] | None = None) -> dict:
    """``loss`` and ``metrics`` dicts keyed by task name, ready for ``model.compile(**...)``."""
    tasks = normalize_tasks(tasks)
    loss, metrics = {}, {}
    for name, kind in tasks.items():
        if kind == "binary":
            loss[name] = keras.losses.BinaryCrossentropy(name=f"{name}_loss")
            metrics[name] = [keras.metrics.AUC(name="auc")]
        else:
            loss[name] = keras.losses.MeanSquaredError(name=f"{name}_loss")
            metrics[name] = [keras.metrics.MeanSquaredError(name="mse")]
    kwargs = {"loss": loss, "metrics": metrics}
    if loss_weights is not None:
        unknown = sorted(set(loss_weights) - set(tasks))
        if unknown:
            raise ValueError(f"`loss_weights` names unknown tasks {unknown}; the tasks are {list(tasks)}")
        kwargs["loss_weights"] = {name: float(loss_weights.get(name, 1.0)) for name in tasks}
    return kwargs
