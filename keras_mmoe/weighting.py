"""Learned task weights: homoscedastic uncertainty weighting (Kendall, Gal and Cipolla, CVPR 2018).

Instead of fixed ``loss_weights``, each task k gets a learned log-variance ``s_k = log sigma_k^2``
and the training loss is

    L = sum_k [ exp(-s_k) * L_k + s_k ]

where ``L_k`` is task k's own loss (binary cross-entropy or MSE, mean over the batch). This is
Kendall et al.'s objective with the constant factors folded in (their regression form is
``L_k / (2 sigma_k^2) + log sigma_k``, i.e. half of ours; the factor only rescales the learning
rate of ``s_k``). The learned weight of task k is ``exp(-s_k) = 1 / sigma_k^2``: at the optimum
for fixed ``L_k``, ``s_k = log L_k``, so noisier (harder to fit) tasks get smaller weights. The
``+ s_k`` term keeps the weights from collapsing to zero.

Two pieces:

* :class:`UncertaintyWeighting`, a layer holding ``s`` (shape ``(num_tasks,)``) that maps a list
  of per-task losses to ``L``;
* :class:`UncertaintyWeightedModel`, a ``keras.Model`` that wraps any model with dict outputs
  keyed by task name (e.g. from :mod:`keras_mmoe.models`) and trains it with ``model.fit`` under
  ``L``. Compile it with an optimizer and per-task ``metrics`` only (no ``loss``); the History
  gets ``<task>_loss`` (unweighted) and ``<task>_weight`` (``exp(-s_k)``, mean over the epoch's
  steps) besides the compiled metrics. Export ``wrapper.model`` for serving: the weights are
  a training-time device only.

Example::

    base = keras_mmoe.models.build_mmoe(inputs, {"income": "binary", "marital": "binary"}, features=encoded)
    model = UncertaintyWeightedModel(base, {"income": "binary", "marital": "binary"})
    model.compile(optimizer="adam", metrics={"income": [keras.metrics.AUC(name="auc")]})
    model.fit(train_ds, epochs=3)
    model.task_weights()        # {"income": 1.7, "marital": 4.2}
    export_for_serving(model.model, "saved_models/census")
"""

from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import tensorflow as tf

from keras_mmoe._keras import IS_KERAS_3, deserialize_layer, keras, register_serializable, serialize
from keras_mmoe.models.tasks import normalize_tasks


@register_serializable
class UncertaintyWeighting(keras.layers.Layer):
    """``L = sum_k exp(-s_k) L_k + s_k`` with learned ``s`` (one log-variance per task).

    Args:
        task_names: the tasks, in the order of the losses passed to ``call``.
        initial_log_variance: starting value of every ``s_k`` (0: all weights 1).

    Call arguments: ``losses``, a list of scalar per-task losses (or a dict keyed by task name).
    Returns the scalar weighted loss.
    """

    def __init__(self, task_names: Sequence[str], initial_log_variance: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        from keras_mmoe._validation import resolve_task_names

        self.task_names = resolve_task_names(None, list(task_names))
        try:
            self.initial_log_variance = float(initial_log_variance)
        except (TypeError, ValueError):
            raise ValueError(
                f"`initial_log_variance` must be a number, received: initial_log_variance={initial_log_variance!r}"
            ) from None

    def build(self, input_shape: Any = None) -> None:
        self.log_variance = self.add_weight(
            name="log_variance",
            shape=(len(self.task_names),),
            initializer=keras.initializers.Constant(self.initial_log_variance),
            trainable=True,
        )
        self.built = True

    def call(self, losses: Union[Sequence[tf.Tensor], Mapping[str, tf.Tensor]]) -> tf.Tensor:
        if isinstance(losses, dict):
            unknown = sorted(set(losses) - set(self.task_names))
            if unknown:
                raise ValueError(f"Unknown task(s) {unknown} in `losses`; the tasks are {self.task_names}")
            losses = [losses[name] for name in self.task_names]
        if len(losses) != len(self.task_names):
            raise ValueError(f"Expected {len(self.task_names)} task losses, received {len(losses)}")
        s = tf.cast(self.log_variance, tf.float32)
        stacked = tf.stack([tf.cast(l, tf.float32) for l in losses])
        return tf.reduce_sum(tf.exp(-s) * stacked + s)

    def task_weights(self) -> Dict[str, float]:
        """``{task: exp(-s_k)}`` as Python floats."""
        values = tf.exp(-tf.convert_to_tensor(self.log_variance)).numpy()
        return {name: float(v) for name, v in zip(self.task_names, values)}

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(task_names=list(self.task_names), initial_log_variance=self.initial_log_variance)
        return config


def _task_loss(kind):
    if kind == "binary":
        return keras.losses.BinaryCrossentropy()
    return keras.losses.MeanSquaredError()


@register_serializable
class UncertaintyWeightedModel(keras.Model):
    """Trains ``model`` (dict outputs keyed by task name) under learned uncertainty weights.

    Args:
        model: a Keras model whose outputs are a dict containing every task.
        tasks: ``{task: "binary" | "regression"}`` or a list of names (binary); the loss of each
            task is binary cross-entropy or MSE.
        initial_log_variance: starting ``s_k`` for every task.

    ``call`` returns the wrapped model's outputs. ``model.losses`` (regularizers) are added to
    the training loss unweighted.
    """

    def __init__(
        self,
        model: "keras.Model",
        tasks: Union[Mapping[str, str], Sequence[Any]],
        initial_log_variance: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(model, dict):
            model = deserialize_layer(model)
        if not isinstance(model, keras.layers.Layer):
            raise ValueError(f"`model` must be a Keras model, received: {type(model).__name__}")
        self.model = model
        self.tasks = dict(normalize_tasks(tasks))
        self.weighting = UncertaintyWeighting(list(self.tasks), initial_log_variance, name="uncertainty_weighting")
        self._task_losses = {name: _task_loss(kind) for name, kind in self.tasks.items()}
        self.task_loss_trackers = [keras.metrics.Mean(name=f"{name}_loss") for name in self.tasks]
        self.task_weight_trackers = [keras.metrics.Mean(name=f"{name}_weight") for name in self.tasks]
        # Keras 3's trainer tracks the total "loss" itself; tf-keras reports compiled losses only.
        self.total_loss_tracker = None if IS_KERAS_3 else keras.metrics.Mean(name="loss")

    def build(self, input_shape: Any = None) -> None:
        if not self.weighting.built:
            self.weighting.build()
        self.built = True

    def call(self, inputs: Any, training: Optional[bool] = None) -> Any:
        return self.model(inputs, training=training)

    def compute_loss(
        self,
        x: Any = None,
        y: Optional[Mapping[str, tf.Tensor]] = None,
        y_pred: Optional[Mapping[str, tf.Tensor]] = None,
        sample_weight: Any = None,
        training: bool = True,
    ) -> tf.Tensor:
        if not isinstance(y, dict) or not isinstance(y_pred, dict):
            raise ValueError(
                "UncertaintyWeightedModel needs labels and outputs as dicts keyed by task name, received "
                f"labels of type {type(y).__name__} and outputs of type {type(y_pred).__name__}"
            )
        missing = [name for name in self.tasks if name not in y or name not in y_pred]
        if missing:
            raise ValueError(
                f"Task(s) {missing} missing from the labels ({sorted(y)}) or the outputs ({sorted(y_pred)})"
            )
        if not self.weighting.built:
            self.weighting.build()
        losses = []
        for k, name in enumerate(self.tasks):
            weight = sample_weight.get(name) if isinstance(sample_weight, dict) else sample_weight
            loss = self._task_losses[name](y[name], y_pred[name], sample_weight=weight)
            losses.append(loss)
            self.task_loss_trackers[k].update_state(loss)
        total = self.weighting(losses)
        if self.losses:
            total = total + tf.add_n([tf.cast(l, total.dtype) for l in self.losses])
        weights = tf.exp(-tf.convert_to_tensor(self.weighting.log_variance))
        for k in range(len(self.tasks)):
            self.task_weight_trackers[k].update_state(weights[k])
        if self.total_loss_tracker is not None:
            self.total_loss_tracker.update_state(total)
        return total

    @property
    def metrics(self) -> List["keras.metrics.Metric"]:
        own = self.task_loss_trackers + self.task_weight_trackers
        if self.total_loss_tracker is not None:
            own = [self.total_loss_tracker] + own
        base = [m for m in super().metrics if all(m is not o for o in own)]
        return base + own

    def task_weights(self) -> Dict[str, float]:
        """The learned ``{task: exp(-s_k)}``."""
        return self.weighting.task_weights()

    def get_config(self) -> Dict[str, Any]:
        config = {"name": self.name, "trainable": self.trainable}
        config.update(
            model=serialize(self.model),
            tasks=dict(self.tasks),
            initial_log_variance=self.weighting.initial_log_variance,
        )
        return config

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "UncertaintyWeightedModel":
        config = dict(config)
        config["model"] = deserialize_layer(config["model"])
        return cls(**config)


__all__ = ["UncertaintyWeighting", "UncertaintyWeightedModel"]
