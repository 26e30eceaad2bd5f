"""TensorFactorizedDense: per-task Dense layers whose stacked kernel is Tucker-factorized (Yang & Hospedales 2017)."""

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf

from keras_mmoe._keras import keras, register_serializable
from keras_mmoe.layers import _utils


def _check_ranks(value):
    if value is None:
        return None
    try:
        ranks = tuple(value)
    except TypeError:
        ranks = ()
    if len(ranks) != 3 or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in ranks):
        raise ValueError(
            "`ranks` must be None or three positive integers (input_rank, output_rank, task_rank), "
            f"received: ranks={value!r}"
        )
    return ranks


def hosvd(tensor: Any, ranks: Sequence[int]) -> Tuple[tf.Tensor, List[tf.Tensor]]:
    """Truncated higher-order SVD of a 3-way tensor: ``(core, [U_1, U_2, U_3])`` as float64 tensors.

    ``tensor ~= core x_1 U_1 x_2 U_2 x_3 U_3`` (exact when every rank is the mode's full rank).
    Computed with TensorFlow ops (``tf.linalg.svd``), eagerly.
    """
    tensor = tf.cast(tf.convert_to_tensor(tensor), tf.float64)
    factors = []
    for mode, rank in enumerate(ranks):
        perm = [mode] + [m for m in range(3) if m != mode]
        unfolded = tf.reshape(tf.transpose(tensor, perm), (tensor.shape[mode], -1))
        _, u, _ = tf.linalg.svd(unfolded, full_matrices=False)
        factors.append(u[:, :rank])
    core = tf.tensordot(tensor, factors[0], axes=[[0], [0]])  # (u, T, r1)
    core = tf.tensordot(core, factors[1], axes=[[0], [0]])  # (T, r1, r2)
    core = tf.tensordot(core, factors[2], axes=[[0], [0]])  # (r1, r2, r3)
    return core, factors


@register_serializable
class TensorFactorizedDense(keras.layers.Layer):
    """``num_tasks`` Dense layers whose kernels, stacked into a (d, u, T) tensor, are Tucker-factorized.

    The kernel tensor ``W`` (d, u, T), whose slice ``W[:, :, t]`` is task ``t``'s kernel, is
    held in Tucker form (DMTRL-Tucker of Yang & Hospedales, 2017):

        W = S x_1 U_in x_2 U_out x_3 U_task
        W[i, j, t] = sum_{a,b,c} S[a, b, c] U_in[i, a] U_out[j, b] U_task[t, c]
        y_t = activation(x_t W[:, :, t] + b_t)

    with core ``S`` (r_1, r_2, r_3), factors ``U_in`` (d, r_1), ``U_out`` (u, r_2),
    ``U_task`` (T, r_3) and unfactorized per-task biases ``b`` (T, u). Tasks share ``U_in``,
    ``U_out`` and ``S``; their kernels differ only through their rows of ``U_task``.
    Parameters: d r_1 + u r_2 + T r_3 + r_1 r_2 r_3 (+ T u), against d u T for T separate layers.
    It is computed without forming ``W``: ``x U_in`` (r_1), then the task's core
    ``S x_3 U_task[t]`` (r_1, r_2), then ``U_out^T``.

    Initialization (as Yang & Hospedales, who factorize pre-trained single-task weights,
    but from fresh ones): T kernels are drawn with ``kernel_initializer`` (seeds
    ``seed + t``), stacked and factorized by truncated HOSVD, so with full ranks the layer
    starts exactly as T independent Dense layers.

    Args:
        units: output width u of every task.
        num_tasks: number of tasks T (>= 1).
        ranks: (r_1, r_2, r_3), each at most its mode's full rank (``min(d, u T)``,
            ``min(u, d T)``, ``min(T, d u)``); None: the full ranks (no compression).
        activation, use_bias, kernel_initializer, bias_initializer: as in ``keras.layers.Dense``
            (the initializer draws the kernels that are factorized).
        kernel_regularizer: optional regularizer applied to each factor and the core.
        bias_regularizer: optional regularizer of the biases.
        seed: seed of the kernel draws (None: random).

    Input: one tensor (batch, d) shared by every task, or a list of T tensors (batch, d).
    Output: a list of T tensors (batch, u), in task order.

    Example:

    >>> x = keras.Input((100,))
    >>> h1, h2 = keras_mmoe.layers.TensorFactorizedDense(32, num_tasks=2, ranks=(16, 16, 2))(x)

    References: Yang, Hospedales, "Deep Multi-task Representation Learning: A Tensor
    Factorisation Approach", ICLR 2017; Ma et al., KDD 2018 (MMoE), section 6.3 baselines.
    """

    def __init__(
        self,
        units: int,
        num_tasks: int,
        ranks: Optional[Sequence[int]] = None,
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
        self.ranks = _check_ranks(ranks)
        _utils.set_dense_arguments(
            self, activation, use_bias, kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer
        )
        self.seed = _utils.check_seed("seed", seed)

    def _input_dim(self, input_shape):
        if isinstance(input_shape, (list, tuple)) and input_shape and isinstance(
            input_shape[0], (list, tuple, tf.TensorShape)
        ):
            if len(input_shape) != self.num_tasks:
                raise ValueError(
                    f"TensorFactorizedDense '{self.name}' has num_tasks={self.num_tasks} but received a list "
                    f"of {len(input_shape)} inputs; give one shared tensor or one tensor per task"
                )
            dims = {int(_utils.check_rank2(self, "inputs", s)[-1]) for s in input_shape}
            if len(dims) != 1:
                raise ValueError(
                    f"TensorFactorizedDense '{self.name}' needs every task's input to have the same width, "
                    f"received shapes {[tuple(tf.TensorShape(s).as_list()) for s in input_shape]}"
                )
            return dims.pop()
        return int(_utils.check_rank2(self, "inputs", input_shape)[-1])

    def full_ranks(self, input_dim: int) -> Tuple[int, int, int]:
        d, u, t = input_dim, self.units, self.num_tasks
        return (min(d, u * t), min(u, d * t), min(t, d * u))

    def build(self, input_shape: Union[_utils.ShapeLike, Sequence[_utils.ShapeLike]]) -> None:
        d = self._input_dim(input_shape)
        full = self.full_ranks(d)
        ranks = full if self.ranks is None else self.ranks
        if any(r > f for r, f in zip(ranks, full)):
            raise ValueError(
                f"`ranks` must not exceed the full ranks {full} of a ({d}, {self.units}, {self.num_tasks}) "
                f"kernel tensor, received: ranks={self.ranks!r}"
            )
        self.effective_ranks = tuple(ranks)
        seed = _utils.base_seed(self.kernel_initializer, self.seed)
        with tf.init_scope():
            draws = _utils.StackedInitializer(self.kernel_initializer, self.num_tasks, axis=2, seed=seed)(
                (d, self.units, self.num_tasks), dtype=tf.float32
            )
            core, factors = hosvd(draws, ranks)
            core = core.numpy()
            u_in, u_out, u_task = (f.numpy() for f in factors)

        def const(value):
            value = np.asarray(value, dtype=np.float32)
            return lambda shape, dtype=None, **kwargs: tf.constant(value, dtype=dtype or tf.float32)

        def add(name, value):
            return self.add_weight(
                name=name, shape=value.shape, initializer=const(value), regularizer=self.kernel_regularizer,
                trainable=True,
            )

        self.input_factor = add("input_factor", u_in)
        self.output_factor = add("output_factor", u_out)
        self.task_factor = add("task_factor", u_task)
        self.core = add("core", core)
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

    def task_kernels(self) -> tf.Tensor:
        """The reconstructed per-task kernels, (T, d, u) float32 (for inspection and tests)."""
        return tf.einsum(
            "abc,da,ub,tc->tdu",
            *(tf.convert_to_tensor(w) for w in (self.core, self.input_factor, self.output_factor, self.task_factor)),
        )

    def call(self, inputs: Union[tf.Tensor, Sequence[tf.Tensor]]) -> List[tf.Tensor]:
        dtype = self.compute_dtype
        u_in = tf.cast(self.input_factor, dtype)
        task_cores = tf.einsum("abc,tc->tab", tf.cast(self.core, dtype), tf.cast(self.task_factor, dtype))
        if isinstance(inputs, (list, tuple)):
            if len(inputs) != self.num_tasks:
                raise ValueError(
                    f"TensorFactorizedDense '{self.name}' has num_tasks={self.num_tasks} but received "
                    f"{len(inputs)} inputs"
                )
            projected = tf.matmul(tf.stack([tf.cast(x, dtype) for x in inputs], axis=0), u_in)  # (T, batch, r1)
        else:
            shared = tf.matmul(tf.cast(inputs, dtype), u_in)  # (batch, r1)
            projected = tf.tile(shared[None], (self.num_tasks, 1, 1))
        y = tf.matmul(tf.matmul(projected, task_cores), tf.cast(self.output_factor, dtype), transpose_b=True)
        if self.use_bias:
            y = y + tf.cast(self.bias, dtype)[:, None, :]
        return tf.unstack(self.activation(y), num=self.num_tasks, axis=0)

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
            ranks=None if self.ranks is None else list(self.ranks),
            **_utils.dense_arguments_config(self),
            seed=self.seed,
        )
        return config
