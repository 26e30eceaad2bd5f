"""ExpertBank: N experts computed at once, as stacked kernels or as user-given sub-networks."""

import tensorflow as tf

from keras_mmoe._keras import keras, register_serializable, serialize, deserialize_layer
from keras_mmoe.layers import _utils


@register_serializable
class ExpertBank(keras.layers.Layer):
    """A bank of experts whose outputs are returned stacked, shape (batch, num_experts, units).

    **Built-in experts** (``units`` given): ``num_experts`` identical-shaped MLPs
    ``f_i(x) = a(... a(x W_i^1 + b_i^1) ... W_i^L + b_i^L)``, held as stacked kernels and
    computed together, with no Python loop over experts:

        layer 1:  (batch, d) x (d, E * u_1) -> (batch, E, u_1)      one matmul
        layer l:  (E, batch, u_{l-1}) x (E, u_{l-1}, u_l)           one batched matmul

    Weights: ``kernel_0`` of shape (d, E, u_1) and, for deeper experts, ``kernel_l`` of shape
    (E, u_l, u_{l+1}); biases (E, u). Each expert's kernels are drawn separately with the
    per-expert shape (so Glorot/He scale as for one expert) and a different seed, so the
    experts start different.

    **Custom experts** (``experts`` given): a list of Keras layers or models, each mapping
    (batch, d) to (batch, u) with the same u; each is called once and the results stacked.

    Args:
        num_experts: number of built-in experts (must equal ``len(experts)`` when both are given).
        units: an int (one-layer experts, as in the MMoE paper) or a sequence (MLP experts).
        activation: activation applied after every expert layer.
        use_bias, kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer:
            as in ``keras.layers.Dense``, applied to every expert.
        experts: optional list of Keras layers/models used instead of built-in experts.
        seed: seed of the initializers (None: random).

    Input shape: ``(batch, d)``. Output shape: ``(batch, num_experts, units[-1])``.

    Example:

    >>> bank = keras_mmoe.layers.ExpertBank(num_experts=8, units=16)
    >>> bank(tf.ones((4, 100))).shape
    TensorShape([4, 8, 16])
    """

    def __init__(
        self,
        num_experts=None,
        units=None,
        activation="relu",
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        experts=None,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if experts is not None:
            if not isinstance(experts, (list, tuple)) or not experts:
                raise ValueError(f"`experts` must be a non-empty list of Keras layers, received: experts={experts!r}")
            experts = [deserialize_layer(e) if isinstance(e, dict) else e for e in experts]
            for i, expert in enumerate(experts):
                if not isinstance(expert, keras.layers.Layer):
                    raise ValueError(
                        f"`experts[{i}]` must be a Keras layer or model, received: {type(expert).__name__}"
                    )
            if num_experts is not None and num_experts != len(experts):
                raise ValueError(
                    f"`num_experts` ({num_experts!r}) must equal the number of `experts` ({len(experts)})"
                )
            num_experts = len(experts)
            if units is not None:
                units = _utils.check_units("units", units)
        else:
            if num_experts is None or units is None:
                raise ValueError(
                    "Give `num_experts` and `units` (built-in experts) or `experts` (custom experts), "
                    f"received: num_experts={num_experts!r}, units={units!r}"
                )
            units = _utils.check_units("units", units)
        self.num_experts = _utils.check_positive_int("num_experts", num_experts)
        self.units = units
        _utils.set_dense_arguments(
            self, activation, use_bias, kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer
        )
        self.seed = _utils.check_seed("seed", seed)
        self.experts = list(experts) if experts is not None else None

    @property
    def output_units(self):
        """Width of each expert's output (known after build for custom experts)."""
        return self.units[-1] if self.units else None

    def build(self, input_shape):
        shape = _utils.check_rank2(self, "inputs", input_shape)
        if self.experts is not None:
            widths = []
            for expert in self.experts:
                if not expert.built:
                    _utils.build_sublayer(expert, shape)
                out = tf.TensorShape(expert.compute_output_shape(shape))
                widths.append(out[-1] if out.rank == 2 else None)
            if len(set(widths)) != 1 or widths[0] is None:
                raise ValueError(
                    "Every expert in `experts` must output shape (batch, units) with the same units, "
                    f"received output widths {widths}"
                )
            if self.units is not None and self.units[-1] != widths[0]:
                raise ValueError(f"`units` ({self.units!r}) disagrees with the experts' output width {widths[0]}")
            self.units = (widths[0],)
            self.built = True
            return
        in_dim = int(shape[-1])
        seed = _utils.base_seed(self.kernel_initializer, self.seed)
        self.kernels, self.biases = [], []
        for layer, units in enumerate(self.units):
            # First layer (d, E, u) so that it is one plain matmul; deeper layers (E, in, out).
            kernel_shape = (in_dim, self.num_experts, units) if layer == 0 else (self.num_experts, in_dim, units)
            self.kernels.append(
                self.add_weight(
                    name=f"kernel_{layer}",
                    shape=kernel_shape,
                    initializer=_utils.StackedInitializer(
                        self.kernel_initializer, self.num_experts, axis=1 if layer == 0 else 0,
                        seed=seed + layer * self.num_experts,
                    ),
                    regularizer=self.kernel_regularizer,
                    trainable=True,
                )
            )
            if self.use_bias:
                self.biases.append(
                    self.add_weight(
                        name=f"bias_{layer}",
                        shape=(self.num_experts, units),
                        initializer=self.bias_initializer,
                        regularizer=self.bias_regularizer,
                        trainable=True,
                    )
                )
            in_dim = units
        self.built = True

    def call(self, inputs, training=None):
        if self.experts is not None:
            return tf.stack([expert(inputs, training=training) for expert in self.experts], axis=1)
        dtype = self.compute_dtype
        x = tf.cast(inputs, dtype)
        num_layers = len(self.units)
        # Layer 1: (batch, d) @ (d, E*u) -> (batch, E, u).
        kernel = tf.cast(self.kernels[0], dtype)
        d, e, u = kernel.shape
        h = tf.reshape(tf.matmul(x, tf.reshape(kernel, (d, e * u))), (-1, e, u))
        if self.use_bias:
            h = h + tf.cast(self.biases[0], dtype)
        h = self.activation(h)
        if num_layers > 1:
            h = tf.transpose(h, (1, 0, 2))  # (E, batch, u): batched matmul over experts
            for layer in range(1, num_layers):
                h = tf.matmul(h, tf.cast(self.kernels[layer], dtype))
                if self.use_bias:
                    h = h + tf.cast(self.biases[layer], dtype)[:, None, :]
                h = self.activation(h)
            h = tf.transpose(h, (1, 0, 2))
        return h

    def compute_output_shape(self, input_shape):
        batch = tf.TensorShape(input_shape)[0]
        return (batch, self.num_experts, self.output_units)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_experts=self.num_experts,
            units=None if self.experts is not None else list(self.units),
            **_utils.dense_arguments_config(self),
            experts=[serialize(e) for e in self.experts] if self.experts is not None else None,
            seed=self.seed,
        )
        return config
