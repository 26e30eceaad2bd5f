"""ExpertDropoutGate: a softmax gate over experts with expert dropout (the YouTube fix)."""

from typing import Any, Dict, Optional, Sequence

import tensorflow as tf

from keras_mmoe._keras import IS_KERAS_3, keras, register_serializable
from keras_mmoe.layers import _utils


@register_serializable
class ExpertDropoutGate(keras.layers.Layer):
    """Gate network of a mixture of experts, with expert dropout during training.

    The gate maps its input ``x`` to one weight per expert:

        h = MLP(x)                          (``hidden_units``; identity when empty)
        z = (W h + b) / temperature         (logits, shape (batch, num_experts))
        g = softmax(z)

    **Expert dropout** (Zhao et al., RecSys 2019, against gate polarization): in training,
    when ``rate > 0``, every expert's weight is dropped independently for each example
    with probability ``rate``, and the remaining weights are re-normalized to sum to 1.
    This is computed exactly and stably as a masked softmax: with keep mask ``m``,

        g_i = m_i exp(z_i) / sum_j m_j exp(z_j),

    which equals the inference weights re-normalized over the kept experts. **No example
    ever loses all of its experts**: when every expert of a row is drawn for dropping,
    that row keeps exactly one expert, chosen uniformly at random (the one with the
    largest uniform draw). At inference (``training`` false or None) the gate is the plain
    softmax, deterministic, so exported serving signatures contain no dropout.

    Softmax is computed in float32 and cast to the layer's compute dtype, so it is stable
    under ``mixed_float16``.

    Args:
        num_experts: number of experts the gate weighs (>= 1).
        rate: probability in [0, 1) of dropping each expert's weight in training.
        temperature: softmax temperature (> 0); below 1 sharpens, above 1 flattens.
        hidden_units: sizes of optional hidden layers of the gate network.
        activation: activation of the hidden layers.
        use_bias: whether the dense layers use a bias.
        kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer:
            as in ``keras.layers.Dense``.
        seed: seed of the dropout draws and of the initializers (None: random).

    Input shape: ``(batch, features)``.
    Output shape: ``(batch, num_experts)``, rows summing to 1.

    Example:

    >>> gate = keras_mmoe.ExpertDropoutGate(num_experts=4, rate=0.1, seed=0)
    >>> weights = gate(tf.ones((2, 8)), training=True)   # shape (2, 4), rows sum to 1

    References: Zhao et al., "Recommending What Video to Watch Next: A Multitask Ranking
    System", RecSys 2019; Ma et al., "Modeling Task Relationships in Multi-task Learning
    with Multi-gate Mixture-of-Experts", KDD 2018.
    """

    def __init__(
        self,
        num_experts: int,
        rate: float = 0.1,
        temperature: float = 1.0,
        hidden_units: Sequence[int] = (),
        activation: Any = "relu",
        use_bias: bool = True,
        kernel_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        kernel_regularizer: Any = None,
        bias_regularizer: Any = None,
        seed: Optional[int] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_experts = _utils.check_positive_int("num_experts", num_experts)
        self.rate = _utils.check_rate("rate", rate)
        self.temperature = _utils.check_temperature("temperature", temperature)
        self.hidden_units = _utils.check_hidden_units("hidden_units", hidden_units)
        _utils.set_dense_arguments(
            self, activation, use_bias, kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer
        )
        self.seed = _utils.check_seed("seed", seed)

        init_seed = _utils.base_seed(self.kernel_initializer, seed)
        self._dropout_seed = seed if seed is not None else _utils.fresh_seed()
        dense_args = dict(
            use_bias=self.use_bias,
            bias_initializer=self.bias_initializer,
            kernel_regularizer=self.kernel_regularizer,
            bias_regularizer=self.bias_regularizer,
            dtype=self.dtype_policy,
        )
        self.hidden_layers = [
            keras.layers.Dense(
                units,
                activation=self.activation,
                kernel_initializer=_utils.seeded_copy(self.kernel_initializer, init_seed + i),
                name=f"hidden_{i}",
                **dense_args,
            )
            for i, units in enumerate(self.hidden_units)
        ]
        self.logits_layer = keras.layers.Dense(
            self.num_experts,
            kernel_initializer=_utils.seeded_copy(self.kernel_initializer, init_seed + len(self.hidden_units)),
            name="logits",
            **dense_args,
        )

    def build(self, input_shape: _utils.ShapeLike) -> None:
        shape = _utils.check_rank2(self, "inputs", input_shape)
        for layer in self.hidden_layers:
            _utils.build_sublayer(layer, shape)
            shape = tf.TensorShape([shape[0], layer.units])
        _utils.build_sublayer(self.logits_layer, shape)
        if self.rate > 0:
            # State of the stateless random draws: [seed, counter]. A variable (not a Python
            # counter) so that each step of a compiled training loop draws a new mask.
            seed = self._dropout_seed
            aggregation = "only_first_replica" if IS_KERAS_3 else tf.VariableAggregation.ONLY_FIRST_REPLICA
            self.seed_state = self.add_weight(
                name="seed_state",
                shape=(2,),
                dtype="int64",
                initializer=lambda shape, dtype=None, **kw: tf.constant([seed, 0], dtype=tf.int64),
                trainable=False,
                aggregation=aggregation,
            )
        self.built = True

    def logits(self, inputs: tf.Tensor) -> tf.Tensor:
        """Temperature-scaled logits, float32, shape (batch, num_experts)."""
        x = tf.cast(inputs, self.compute_dtype)
        for layer in self.hidden_layers:
            x = layer(x)
        return tf.cast(self.logits_layer(x), tf.float32) / self.temperature

    def call(self, inputs: tf.Tensor, training: Optional[bool] = None) -> tf.Tensor:
        logits = self.logits(inputs)
        if self.rate > 0:
            training_now = _utils.in_training(training)
            if training_now is None:
                logits = tf.__internal__.smart_cond.smart_cond(
                    training, lambda: self._drop_experts(logits), lambda: logits
                )
            elif training_now:
                logits = self._drop_experts(logits)
        return tf.cast(tf.nn.softmax(logits, axis=-1), self.compute_dtype)

    def _drop_experts(self, logits):
        """Masks dropped experts' logits to -inf; at least one expert per row is kept."""
        seed = tf.identity(tf.convert_to_tensor(self.seed_state))
        with tf.control_dependencies([seed]):
            self.seed_state.assign_add(tf.constant([0, 1], dtype=tf.int64))
        if tf.distribute.has_strategy() and not tf.distribute.in_cross_replica_context():
            # Every replica reads the same mirrored counter: fold in the replica's id so that each
            # replica draws its own masks (still a function of `seed` and the step).
            replica_id = tf.distribute.get_replica_context().replica_id_in_sync_group
            seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(replica_id, tf.int64))
        draws = tf.random.stateless_uniform(tf.shape(logits), seed=seed, dtype=tf.float32)
        keep = draws >= self.rate
        row_has_expert = tf.reduce_any(keep, axis=-1, keepdims=True)
        rescue = tf.one_hot(tf.argmax(draws, axis=-1), self.num_experts, on_value=True, off_value=False)
        keep = tf.logical_or(keep, tf.logical_and(rescue, tf.logical_not(row_has_expert)))
        return tf.where(keep, logits, tf.fill(tf.shape(logits), float("-inf")))

    def compute_output_shape(self, input_shape: _utils.ShapeLike) -> tuple:
        return tuple(tf.TensorShape(input_shape)[:-1].as_list()) + (self.num_experts,)

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(
            num_experts=self.num_experts,
            rate=self.rate,
            temperature=self.temperature,
            hidden_units=list(self.hidden_units),
            **_utils.dense_arguments_config(self),
            seed=self.seed,
        )
        return config
