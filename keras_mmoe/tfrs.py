"""MMoE inside TensorFlow Recommenders: one ``tfrs.tasks.Ranking`` per task (tf-keras only).

tensorflow-recommenders 0.7 imports only under tf-keras, so this module needs
``TF_USE_LEGACY_KERAS=1`` set before TensorFlow is imported (``pip install keras-mmoe[tfrs]``);
under Keras 3 importing it raises ``ImportError`` saying so.

:class:`MMoERankingModel` is a thin ``tfrs.models.Model``: the network is any Keras model with
dict outputs keyed by task name (for example :func:`keras_mmoe.models.build_mmoe` on named raw
inputs, preprocessing included), and every task owns its loss and metrics through a
``tfrs.tasks.Ranking`` (binary: cross-entropy with AUC; regression: MSE with RMSE). The loss is

    L = sum_k w_k * Ranking_k(labels_k, predictions_k)   (+ regularization, added by TFRS)

Batches are either ``(features, labels)`` tuples, as ``keras_mmoe.data`` datasets yield, or one
dict holding the features and a label per task (the TFRS tutorials' style). Export the network
itself, ``ranking_model.model``, with :func:`keras_mmoe.serving.export_for_serving`: TF Serving
needs the inference graph only.

Example::

    import os; os.environ["TF_USE_LEGACY_KERAS"] = "1"
    from keras_mmoe.tfrs import MMoERankingModel
    net = keras_mmoe.models.build_mmoe(100, {"click": "binary", "watch": "regression"})
    model = MMoERankingModel(net, {"click": "binary", "watch": "regression"}, loss_weights={"watch": 0.5})
    model.compile(optimizer=tf.keras.optimizers.Adagrad(0.1))
    model.fit(train_ds, epochs=3)
    model.evaluate(test_ds, return_dict=True)      # click_auc, watch_rmse, loss, ...
    export_for_serving(model.model, "saved_models/ranker")
"""

from keras_mmoe._keras import IS_KERAS_3

if IS_KERAS_3:
    raise ImportError(
        "keras_mmoe.tfrs needs tf-keras: tensorflow-recommenders 0.7 does not run on Keras 3. "
        "Set the environment variable TF_USE_LEGACY_KERAS=1 before importing TensorFlow "
        "(and `pip install keras-mmoe[tfrs]`)."
    )

from typing import Any, Mapping, Optional, Sequence, Union  # noqa: E402

import tensorflow as tf  # noqa: E402
import tensorflow_recommenders as tfrs  # noqa: E402

from keras_mmoe._keras import keras  # noqa: E402
from keras_mmoe.models.tasks import normalize_tasks  # noqa: E402


def ranking_task(name: str, kind: str) -> tfrs.tasks.Ranking:
    """The ``tfrs.tasks.Ranking`` of one task: its loss and metrics (names prefixed by the task)."""
    if kind == "binary":
        return tfrs.tasks.Ranking(
            loss=keras.losses.BinaryCrossentropy(),
            metrics=[keras.metrics.AUC(name=f"{name}_auc")],
            name=f"{name}_task",
        )
    return tfrs.tasks.Ranking(
        loss=keras.losses.MeanSquaredError(),
        metrics=[keras.metrics.RootMeanSquaredError(name=f"{name}_rmse")],
        name=f"{name}_task",
    )


class MMoERankingModel(tfrs.models.Model):
    """A ``tfrs.models.Model`` around a multi-task network, one ``tfrs.tasks.Ranking`` per task.

    Args:
        model: Keras model (tf-keras) whose outputs are a dict with every task's prediction.
        tasks: ``{task: "binary" | "regression"}`` or a list of names (binary).
        loss_weights: optional ``{task: weight}`` (default 1 for every task).
    """

    def __init__(
        self,
        model: "keras.Model",
        tasks: Union[Mapping[str, str], Sequence[Any]],
        loss_weights: Optional[Mapping[str, float]] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(model, keras.Model):
            raise ValueError(f"`model` must be a tf-keras Model, received: {type(model).__name__}")
        self.model = model
        self.tasks = dict(normalize_tasks(tasks))
        loss_weights = dict(loss_weights or {})
        unknown = sorted(set(loss_weights) - set(self.tasks))
        if unknown:
            raise ValueError(f"`loss_weights` names unknown task(s) {unknown}; the tasks are {list(self.tasks)}")
        self.loss_weights = {name: float(loss_weights.get(name, 1.0)) for name in self.tasks}
        for name, kind in self.tasks.items():  # flat tracked attributes, one per task
            setattr(self, f"{name}_task", ranking_task(name, kind))

    def task(self, name: str) -> tfrs.tasks.Ranking:
        """The ``tfrs.tasks.Ranking`` of task ``name``."""
        if name not in self.tasks:
            raise KeyError(f"Unknown task {name!r}; the tasks are {list(self.tasks)}")
        return getattr(self, f"{name}_task")

    def call(self, features: Any, training: bool = False) -> Any:
        return self.model(features, training=training)

    def _split(self, inputs):
        if isinstance(inputs, (tuple, list)) and len(inputs) == 2:
            return inputs
        if isinstance(inputs, dict):
            missing = [name for name in self.tasks if name not in inputs]
            if missing:
                raise ValueError(f"The batch has no label for task(s) {missing}; its keys are {sorted(inputs)}")
            features = {k: v for k, v in inputs.items() if k not in self.tasks}
            return features, {name: inputs[name] for name in self.tasks}
        raise ValueError(
            "Batches must be (features, labels) tuples or one dict of features and labels, "
            f"received {type(inputs).__name__}"
        )

    def compute_loss(self, inputs: Any, training: bool = False) -> tf.Tensor:
        features, labels = self._split(inputs)
        predictions = self.model(features, training=training)
        missing = [name for name in self.tasks if name not in predictions]
        if missing:
            raise ValueError(f"The model has no output for task(s) {missing}; its outputs are {sorted(predictions)}")
        losses = [
            self.loss_weights[name] * self.task(name)(labels=labels[name], predictions=predictions[name])
            for name in self.tasks
        ]
        return tf.add_n(losses)


__all__ = ["MMoERankingModel", "ranking_task"]
