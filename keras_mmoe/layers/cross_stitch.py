"""CrossStitch: a learned linear mixing of the tasks' activations (Misra et al., CVPR 2016)."""

from typing import Any, Dict, List, Sequence

import tensorflow as tf

from keras_mmoe._keras import keras, register_serializable, serialize
from keras_mmoe.layers import _utils


def _check_self_weight(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"`self_weight` must be a float in [0, 1], received: self_weight={value!r}")
    return float(value)


@register_serializable
class CrossStitch(keras.layers.Layer):
    """Cross-stitch unit: each task's new activation is a learned mix of all tasks' activations.

    For ``T`` tasks with activations ``x_1..x_T`` of identical shape (batch, ..., u), and a
    learned ``T x T`` matrix ``alpha`` (the weight ``alpha``):

        x~_t = sum_s alpha[t, s] x_s            t = 1..T

    (one scalar per pair of tasks, shared by every unit, as in the paper's per-layer units).
    ``alpha`` starts near the identity: ``self_weight`` on the diagonal and
    ``(1 - self_weight) / (T - 1)`` off it, so every row sums to 1 at the start
    (Misra et al. found (0.9, 0.1) for two tasks to work best). It is computed in float32
    and cast to the layer's compute dtype. Placed after each per-task hidden layer, it
    gives the Cross-Stitch baseline of the MMoE paper (section 6.3).

    Args:
        self_weight: initial diagonal value of ``alpha``, in [0, 1] (default 0.9).
        alpha_regularizer: optional regularizer of ``alpha``.

    Input: a list of ``T >= 2`` tensors of the same shape, (batch, ..., u).
    Output: a list of ``T`` tensors of that shape, in the same task order.

    Example:

    >>> click, buy = keras.Input((16,)), keras.Input((16,))
    >>> click2, buy2 = keras_mmoe.layers.CrossStitch(self_weight=0.9)([click, buy])

    References: Misra, Shrivastava, Gupta, Hebert, "Cross-stitch Networks for Multi-task
    Learning", CVPR 2016; Ma et al., KDD 2018 (MMoE), section 6.3 baselines.
    """

    def __init__(self, self_weight: float = 0.9, alpha_regularizer: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.self_weight = _check_self_weight(self_weight)
        self.alpha_regularizer = keras.regularizers.get(alpha_regularizer)
        self.num_tasks = None

    def _check_shapes(self, input_shape):
        shapes = input_shape if isinstance(input_shape, (list, tuple)) else None
        if shapes is not None and shapes and not isinstance(shapes[0], (list, tuple, tf.TensorShape)):
            shapes = None  # a single shape given as a tuple of dims
        if shapes is None or len(shapes) < 2:
            raise ValueError(
                f"CrossStitch '{self.name}' expects `inputs` to be a list of at least 2 tensors "
                f"(one per task), received shape(s) {input_shape!r}"
            )
        shapes = [tf.TensorShape(s) for s in shapes]
        first = shapes[0]
        for i, shape in enumerate(shapes):
            if shape.rank is None or shape.rank < 2 or shape[1:] != first[1:] or not shape[1:].is_fully_defined():
                raise ValueError(
                    f"CrossStitch '{self.name}' expects `inputs` of one known shape (batch, ..., units) "
                    f"for every task, received shapes {[tuple(s.as_list()) for s in shapes]} "
                    f"(input {i} differs or is not fully known)"
                )
        return shapes

    def build(self, input_shape: Sequence[_utils.ShapeLike]) -> None:
        shapes = self._check_shapes(input_shape)
        self.num_tasks = t = len(shapes)
        off = (1.0 - self.self_weight) / (t - 1)
        value = [[self.self_weight if i == j else off for j in range(t)] for i in range(t)]

        def initializer(shape, dtype=None, **kwargs):
            return tf.constant(value, dtype=dtype or tf.float32)

        self.alpha = self.add_weight(
            name="alpha",
            shape=(t, t),
            dtype="float32",
            initializer=initializer,
            regularizer=self.alpha_regularizer,
            trainable=True,
        )
        self.built = True

    def call(self, inputs: Sequence[tf.Tensor]) -> List[tf.Tensor]:
        inputs = list(inputs)
        if len(inputs) != self.num_tasks:
            raise ValueError(
                f"CrossStitch '{self.name}' was built for {self.num_tasks} tasks, received {len(inputs)} inputs"
            )
        dtype = self.compute_dtype
        stacked = tf.stack([tf.cast(x, dtype) for x in inputs], axis=0)  # (T, batch, ..., u)
        mixed = tf.tensordot(tf.cast(self.alpha, dtype), stacked, axes=[[1], [0]])
        return tf.unstack(mixed, num=self.num_tasks, axis=0)

    def compute_output_shape(self, input_shape: Sequence[_utils.ShapeLike]) -> List[tuple]:
        return [tuple(tf.TensorShape(s).as_list()) for s in input_shape]

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(self_weight=self.self_weight, alpha_regularizer=serialize(self.alpha_regularizer))
        return config
