"""L2TiedDense: one Dense layer per task, softly tied by an L2 penalty (the L2-Constrained baseline)."""

from typing import Any, Dict, List, Optional, Sequence, Union

import tensorflow as tf

from keras_mmoe._keras import keras, register_serializable
from keras_mmoe.layers import _utils

PENALTIES = ("pairwise", "mean")


def _check_l2_tie(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"`l2_tie` must be a float >= 0, received: l2_tie={value!r}")
    return float(value)


@register_serializable
class L2TiedDense(keras.layers.Layer):
    """``num_tasks`` Dense layers of the same shape, one per task, with an L2 tie between them.

    Task ``t`` computes ``y_t = activation(x_t W_t + b_t)`` with its own kernel ``W_t``
    (d, u) and bias ``b_t`` (u,). The layer adds to the model's losses (``add_loss``, on
    every call, from the current weights) the soft-sharing penalty of Duong et al. (2015),
    used as the L2-Constrained baseline in the MMoE paper (section 6.3):

        penalty  = sum_{s < t} ||W_s - W_t||^2  (+ ||b_s - b_t||^2 with ``tie_bias``)
        loss    += l2_tie * penalty

    For two tasks this is exactly ``l2_tie * ||W_1 - W_2||^2``. For more tasks,
    ``penalty="pairwise"`` (default) sums over all task pairs, and ``penalty="mean"`` ties each
    task to the tasks' mean, ``sum_t ||W_t - mean_s W_s||^2``; the two differ only by the
    factor T (``pairwise = T * mean``), so ``"mean"`` is the pairwise penalty divided by T.
    The penalty is computed in float32; :meth:`tie_penalty` returns it unscaled. As with
    every loss added in ``call``, ``model.losses`` holds the values of the model's last call
    (graph tensors after ``predict``, which runs a traced function): call the model eagerly,
    or use :meth:`tie_penalty`, to read the current value. ``fit`` and ``evaluate`` add the
    penalty of each step to the loss they report.

    Weights: ``kernel`` (T, d, u), each task's slice drawn separately with seed
    ``seed + t`` (so Glorot scales as for one Dense layer and the tasks start different);
    ``bias`` (T, u).

    Args:
        units: output width u of every task's layer.
        num_tasks: number of tasks T (>= 1).
        l2_tie: the penalty's weight alpha (>= 0; 0 gives independent layers).
        penalty: ``"pairwise"`` or ``"mean"`` (see above).
        tie_bias: also tie the biases (default True: all parameters, as in the paper).
        activation, use_bias, kernel_initializer, bias_initializer, kernel_regularizer,
            bias_regularizer: as in ``keras.layers.Dense``.
        seed: seed of the kernel initializer (None: random).

    Input: one tensor (batch, d) shared by every task, or a list of T tensors (batch, d).
    Output: a list of T tensors (batch, u), in task order.

    Example:

    >>> x = keras.Input((100,))
    >>> h1, h2 = keras_mmoe.layers.L2TiedDense(32, num_tasks=2, l2_tie=1e-3)(x)
    >>> y1, y2 = keras_mmoe.layers.L2TiedDense(1, num_tasks=2, l2_tie=1e-3)([h1, h2])

    References: Duong, Cohn, Bird, Cook, "Low Resource Dependency Parsing: Cross-lingual
    Parameter Sharing in a Neural Network Parser", ACL 2015; Ma et al., KDD 2018 (MMoE).
    """

    def __init__(
        self,
        units: int,
        num_tasks: int,
        l2_tie: float = 1e-3,
        penalty: str = "pairwise",
        tie_bias: bool = True,
        activation: Any = None,
        use_bias: bool = True,
        kernel_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        kernel_regularizer: Any = None,
        bias_regularizer: Any = None,
        seed: Optional[int] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.units = _utils.check_positive_int("units", units)
        self.num_tasks = _utils.check_positive_int("num_tasks", num_tasks)
        self.l2_tie = _check_l2_tie(l2_tie)
        if penalty not in PENALTIES:
            raise ValueError(f"`penalty` must be one of {PENALTIES}, received: penalty={penalty!r}")
        self.penalty = penalty
        self.tie_bias = bool(tie_bias)
        _utils.set_dense_arguments(
            self, activation, use_bias, kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer
        )
        self.seed = _utils.check_seed("seed", seed)

    def _input_dim(self, input_shape):
        if isinstance(input_shape, (list, tuple)) and input_shape and isinstance(
            input_shape[0], (list, tuple, tf.TensorShape)
        ):
            shapes = [tf.TensorShape(s) for s in input_shape]
            if len(shapes) != self.num_tasks:
                raise ValueError(
                    f"L2TiedDense '{self.name}' has num_tasks={self.num_tasks} but received a list of "
                    f"{len(shapes)} inputs; give one shared tensor or one tensor per task"
                )
            dims = {int(_utils.check_rank2(self, "inputs", s)[-1]) for s in shapes}
            if len(dims) != 1:
                raise ValueError(
                    f"L2TiedDense '{self.name}' needs every task's input to have the same width, "
                    f"received shapes {[tuple(s.as_list()) for s in shapes]}"
                )
            return dims.pop()
        return int(_utils.check_rank2(self, "inputs", input_shape)[-1])

    def build(self, input_shape: Union[_utils.ShapeLike, Sequence[_utils.ShapeLike]]) -> None:
        in_dim = self._input_dim(input_shape)
        seed = _utils.base_seed(self.kernel_initializer, self.seed)
        self.kernel = self.add_weight(
            name="kernel",
            shape=(self.num_tasks, in_dim, self.units),
            initializer=_utils.StackedInitializer(self.kernel_initializer, self.num_tasks, axis=0, seed=seed),
            regularizer=self.kernel_regularizer,
            trainable=True,
        )
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=(self.num_tasks, self.units),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
                trainable=True,
            )
        self.built = True

    def tie_penalty(self) -> tf.Tensor:
        """The unscaled penalty (float32 scalar), from the layer's current weights."""
        weights = [self.kernel] + ([self.bias] if self.use_bias and self.tie_bias else [])
        total = tf.constant(0.0, tf.float32)
        for w in weights:
            w = tf.cast(tf.convert_to_tensor(w), tf.float32)
            deviation = w - tf.reduce_mean(w, axis=0, keepdims=True)
            total = total + tf.reduce_sum(tf.square(deviation))
        # sum_{s<t} ||w_s - w_t||^2 = T * sum_t ||w_t - mean||^2
        return total * float(self.num_tasks) if self.penalty == "pairwise" else total

    def call(self, inputs: Union[tf.Tensor, Sequence[tf.Tensor]]) -> List[tf.Tensor]:
        dtype = self.compute_dtype
        kernel = tf.cast(self.kernel, dtype)
        if isinstance(inputs, (list, tuple)):
            if len(inputs) != self.num_tasks:
                raise ValueError(
                    f"L2TiedDense '{self.name}' has num_tasks={self.num_tasks} but received {len(inputs)} inputs"
                )
            x = tf.stack([tf.cast(t, dtype) for t in inputs], axis=0)  # (T, batch, d)
            y = tf.matmul(x, kernel)  # (T, batch, u)
        else:
            y = tf.einsum("bd,tdu->tbu", tf.cast(inputs, dtype), kernel)
        if self.use_bias:
            y = y + tf.cast(self.bias, dtype)[:, None, :]
        y = self.activation(y)
        if self.l2_tie > 0 and self.num_tasks > 1:
            self.add_loss(self.l2_tie * self.tie_penalty())
        return tf.unstack(y, num=self.num_tasks, axis=0)

    def compute_output_shape(self, input_shape: Union[_utils.ShapeLike, Sequence[_utils.ShapeLike]]) -> List[tuple]:
        if isinstance(input_shape, (list, tuple)) and input_shape and isinstance(
            input_shape[0], (list, tuple, tf.TensorShape)
        ):
            batch = tf.TensorShape(input_shape[0])[0]
        else:
            batch = tf.TensorShape(input_shape)[0]
        return [(batch, self.units) for _ in range(self.num_tasks)]

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(
            units=self.units,
            num_tasks=self.num_tasks,
            l2_tie=self.l2_tie,
            penalty=self.penalty,
            tie_bias=self.tie_bias,
            **_utils.dense_arguments_config(self),
            seed=self.seed,
        )
        return config
