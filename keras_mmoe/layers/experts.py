"""ExpertBank: N experts computed at once, as stacked kernels or as user-given sub-networks."""

from typing import Any, Dict, Optional, Sequence, Union

import tensorflow as tf

from keras_mmoe._keras import keras, register_serializable, serialize, deserialize_layer
from keras_mmoe.layers import _utils

#: Values of ``ExpertBank(implementation=...)``.
IMPLEMENTATIONS = ("auto", "batched", "per_expert")
#: ``"auto"`` computes deeper layers per expert when every deeper kernel has at least this many
#: entries (u_{l-1} * u_l) per expert of the bank; see benchmarks/bench_layouts.py.
PER_EXPERT_MIN_KERNEL_ENTRIES_PER_EXPERT = 32
#: With deeper layers per expert, the first layer is per expert too when u_1 is at least this
#: and the input width d is at most ``PER_EXPERT_FIRST_LAYER_MAX_INPUTS_PER_UNIT * u_1``; see
#: benchmarks/bench_layouts.py (``split_all``) and benchmarks/README.md.
PER_EXPERT_FIRST_LAYER_MIN_UNITS = 64
PER_EXPERT_FIRST_LAYER_MAX_INPUTS_PER_UNIT = 2
#: Keras activations that act on each element alone. On the flat first-layer product
#: (batch, E*u) they give the same result as per expert, and TensorFlow fuses them into the
#: matmul; any other activation is applied per expert, on the (batch, E, u) view.
ELEMENTWISE_ACTIVATIONS = frozenset(
    ["relu", "relu6", "leaky_relu", "elu", "selu", "gelu", "silu", "swish", "tanh", "sigmoid",
     "hard_sigmoid", "softplus", "softsign", "exponential", "linear", "mish"]
)


@register_serializable
class ExpertBank(keras.layers.Layer):
    """A bank of experts whose outputs are returned stacked, shape (batch, num_experts, units).

    **Built-in experts** (``units`` given): ``num_experts`` identical-shaped MLPs
    ``f_i(x) = a(... a(x W_i^1 + b_i^1) ... W_i^L + b_i^L)``, held as stacked kernels. The
    first layer of all experts is one matmul; the deeper layers (MLP experts) are computed in
    one of two ways (``implementation``), same result, different speed:

        layer 1:  (batch, d) x (d, E * u_1) -> (batch, E, u_1)          one matmul
        layer l, "batched":     (E, batch, u_{l-1}) x (E, u_{l-1}, u_l)  one batched matmul
                                (with a transpose to and from expert-major order)
        layer l, "per_expert":  (batch, u_{l-1}) x (u_{l-1}, u_l)        one matmul per expert

    ``"auto"`` chooses from the layer sizes: ``"per_expert"`` when every deeper kernel has at
    least ``32 * num_experts`` entries (``u_{l-1} * u_l >= 32 E``: experts large enough that E
    separate matmuls beat one batched matmul and its two transposes), ``"batched"`` otherwise
    (small experts, where one op instead of E saves per-op overhead). The rule comes from
    timing both over a grid of shapes (benchmarks/bench_layouts.py, benchmarks/README.md);
    on that grid the rule is never more than 7% slower than the faster of the two.

    With ``"per_expert"`` deeper layers and a wide first layer that is not much narrower than
    the input (``u_1 >= 64`` and ``d <= 2 * u_1``), the first layer is computed per expert too:
    ``(batch, d) x (d, u_1)`` for each expert's ``(d, u_1)`` slice of ``kernel_0``, so each
    expert's activations go from one layer to the next without the (batch, E, u_1) tensor being
    written and cut into blocks. What it costs instead is one copy of the kernel into the E
    slices, which grows with d; with narrow experts the E small products cost more in per-op
    overhead than they save. Measured (benchmarks/bench_layouts.py, benchmarks/README.md): inside
    the rule, less CPU in 69 of 72 cells at d = 32 and 128 (up to 35% less; the other 3, four
    experts at batch 512, up to 13% more) and 0-9% less at d = 499; with u_1 = 16, up to 1.9x more.

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
        implementation: how deeper expert layers are computed: ``"auto"`` (default),
            ``"batched"`` or ``"per_expert"`` (see above). It changes speed only, never the
            weights or the result.

    Input shape: ``(batch, d)``. Output shape: ``(batch, num_experts, units[-1])``.

    Example:

    >>> bank = keras_mmoe.layers.ExpertBank(num_experts=8, units=16)
    >>> bank(tf.ones((4, 100))).shape
    TensorShape([4, 8, 16])
    """

    def __init__(
        self,
        num_experts: Optional[int] = None,
        units: Union[int, Sequence[int], None] = None,
        activation: Any = "relu",
        use_bias: bool = True,
        kernel_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        kernel_regularizer: Any = None,
        bias_regularizer: Any = None,
        experts: Optional[Sequence[Any]] = None,
        seed: Optional[int] = None,
        implementation: str = "auto",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"`implementation` must be one of {IMPLEMENTATIONS}, received: implementation={implementation!r}"
            )
        self.implementation = implementation
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
    def output_units(self) -> Optional[int]:
        """Width of each expert's output (known after build for custom experts)."""
        return self.units[-1] if self.units else None

    def build(self, input_shape: _utils.ShapeLike) -> None:
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

    @property
    def deeper_layers(self) -> str:
        """How the deeper layers are computed: ``"batched"`` or ``"per_expert"`` (``implementation`` resolved)."""
        if self.implementation != "auto":
            return self.implementation
        sizes = [a * b for a, b in zip(self.units[:-1], self.units[1:])] if self.units else []
        threshold = PER_EXPERT_MIN_KERNEL_ENTRIES_PER_EXPERT * self.num_experts
        return "per_expert" if sizes and min(sizes) >= threshold else "batched"

    @property
    def first_layer_per_expert(self) -> bool:
        """Whether the first layer is computed per expert: with per-expert deeper layers, when
        ``u_1 >= PER_EXPERT_FIRST_LAYER_MIN_UNITS`` and ``d <= PER_EXPERT_FIRST_LAYER_MAX_INPUTS_PER_UNIT * u_1``."""
        if self.experts is not None or len(self.units) < 2 or self.deeper_layers != "per_expert":
            return False
        units, in_dim = self.units[0], int(self.kernels[0].shape[0])
        return units >= PER_EXPERT_FIRST_LAYER_MIN_UNITS and in_dim <= PER_EXPERT_FIRST_LAYER_MAX_INPUTS_PER_UNIT * units

    def _first_layer(self, x):
        """All experts' first layer: (batch, d) -> (batch, E, u_1)."""
        dtype = self.compute_dtype
        e, units = self.num_experts, self.units[0]
        kernel = tf.cast(self.kernels[0], dtype)
        # One matmul, bias added with bias_add on the flat (batch, E*u) product: TensorFlow
        # fuses MatMul + BiasAdd (+ an elementwise activation) into one kernel on CPU.
        h = tf.matmul(x, tf.reshape(kernel, (kernel.shape[0], e * units)))
        if self.use_bias:
            h = tf.nn.bias_add(h, tf.reshape(tf.cast(self.biases[0], dtype), (e * units,)))
        if keras.activations.serialize(self.activation) in ELEMENTWISE_ACTIVATIONS:
            return tf.reshape(self.activation(h), (-1, e, units))
        return self.activation(tf.reshape(h, (-1, e, units)))

    def call(self, inputs: tf.Tensor, training: Optional[bool] = None) -> tf.Tensor:
        if self.experts is not None:
            return tf.stack([expert(inputs, training=training) for expert in self.experts], axis=1)
        dtype = self.compute_dtype
        x = tf.cast(inputs, dtype)
        if len(self.units) == 1:
            return self._first_layer(x)
        e = self.num_experts
        if self.deeper_layers == "per_expert":
            # E independent (batch, u) @ (u, v) matmuls per layer, each with bias and activation;
            # the first layer too when it is wide (kernel_0 is (d, E, u_1): experts on axis 1).
            if self.first_layer_per_expert:
                pieces, first = [x] * e, 0
            else:
                pieces, first = tf.unstack(self._first_layer(x), num=e, axis=1), 1
            for layer in range(first, len(self.units)):
                kernels = tf.unstack(tf.cast(self.kernels[layer], dtype), num=e, axis=1 if layer == 0 else 0)
                biases = tf.unstack(tf.cast(self.biases[layer], dtype), num=e) if self.use_bias else [None] * e
                pieces = [self._dense(p, k, b) for p, k, b in zip(pieces, kernels, biases)]
            return tf.stack(pieces, axis=1)
        # One batched matmul per layer over experts: (E, batch, u) @ (E, u, v).
        h = tf.transpose(self._first_layer(x), (1, 0, 2))
        for layer in range(1, len(self.units)):
            h = tf.matmul(h, tf.cast(self.kernels[layer], dtype))
            if self.use_bias:
                h = h + tf.cast(self.biases[layer], dtype)[:, None, :]
            h = self.activation(h)
        return tf.transpose(h, (1, 0, 2))

    def _dense(self, x, kernel, bias):
        h = tf.matmul(x, kernel)
        if bias is not None:
            h = tf.nn.bias_add(h, bias)
        return self.activation(h)

    def compute_output_shape(self, input_shape: _utils.ShapeLike) -> tuple:
        batch = tf.TensorShape(input_shape)[0]
        return (batch, self.num_experts, self.output_units)

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(
            num_experts=self.num_experts,
            units=None if self.experts is not None else list(self.units),
            **_utils.dense_arguments_config(self),
            experts=[serialize(e) for e in self.experts] if self.experts is not None else None,
            seed=self.seed,
            implementation=self.implementation,
        )
        return config
