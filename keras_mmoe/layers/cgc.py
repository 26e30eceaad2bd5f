"""CGCLayer: Customized Gate Control, task-specific and shared experts (one level of PLE)."""

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import tensorflow as tf

from keras_mmoe._keras import deserialize_layer, keras, register_serializable, serialize
from keras_mmoe._validation import check_non_negative_int, resolve_task_names
from keras_mmoe.layers import _utils
from keras_mmoe.layers._gate_inputs import GateInputsMixin
from keras_mmoe.layers.experts import ExpertBank
from keras_mmoe.layers.gates import ExpertDropoutGate

#: Seed distance between expert banks (and between a layer's banks and its gates); a bank
#: draws ``num_layers * num_experts`` consecutive seeds, so banks never share one below this.
BANK_SEED_STRIDE = 10_007
#: Keys of the gate-weight dict of :class:`CGCLayer` (see its docstring).
TASK_GATES, SHARED_GATE = "tasks", "shared"


def check_expert_layers(name: str, experts: Any) -> List["keras.layers.Layer"]:
    """A non-empty list of Keras layers (serialized layers are rebuilt), else a ValueError naming ``name``."""
    if not isinstance(experts, (list, tuple)) or not experts:
        raise ValueError(f"`{name}` must be a non-empty list of Keras layers, received: {name}={experts!r}")
    experts = [deserialize_layer(e) if isinstance(e, dict) else e for e in experts]
    for i, expert in enumerate(experts):
        if not isinstance(expert, keras.layers.Layer):
            raise ValueError(f"`{name}[{i}]` must be a Keras layer or model, received: {type(expert).__name__}")
    return experts


def check_task_experts(task_experts: Any, task_names: Sequence[str]) -> List[List["keras.layers.Layer"]]:
    """``task_experts``: one equally long list of Keras layers per task, else a ValueError."""
    if not isinstance(task_experts, (list, tuple)) or len(task_experts) != len(task_names):
        raise ValueError(
            f"`task_experts` must be a list of {len(task_names)} lists of Keras layers, one per task "
            f"{task_names}, received: task_experts={task_experts!r}"
        )
    lists = [check_expert_layers(f"task_experts[{k}]", experts) for k, experts in enumerate(task_experts)]
    counts = [len(experts) for experts in lists]
    if len(set(counts)) != 1:
        raise ValueError(
            f"Every task needs the same number of experts in `task_experts`, received {counts} for tasks {task_names}"
        )
    return lists


def split_shape(
    layer: "keras.layers.Layer", argument: str, shape: Any, count: int
) -> Optional[List[tf.TensorShape]]:
    """``shape`` of one tensor, or of a list of ``count`` tensors, as a list of TensorShapes (or None: one tensor)."""
    if isinstance(shape, tf.TensorShape):
        return None
    if isinstance(shape, (list, tuple)) and shape and all(
        isinstance(s, (list, tuple, tf.TensorShape)) or s is None for s in shape
    ) and not all(s is None for s in shape):
        if len(shape) != count:
            raise ValueError(
                f"{type(layer).__name__} '{layer.name}' expects `{argument}` to be one tensor (first level) or a list "
                f"of {count} tensors ({count - 1} task inputs, then the shared input), received a list of {len(shape)}"
            )
        return [tf.TensorShape(s) for s in shape]
    return None


def mix(weights: tf.Tensor, banks: Sequence[tf.Tensor]) -> tf.Tensor:
    """``w S``: gate weights (batch, E_1 + ... + E_n) on the experts of ``banks``, each (batch, E_j, u).

    Each bank's block of weights is applied to that bank's outputs and the n sums added, so
    that the banks are never concatenated into one (batch, E, u) tensor (a copy, and in the
    gradient a split, of every expert output for every gate).
    """
    sizes = [bank.shape[1] for bank in banks]
    blocks = tf.split(weights, sizes, axis=1) if len(banks) > 1 else [weights]
    return tf.add_n([tf.reduce_sum(w[:, :, None] * experts, axis=1) for w, experts in zip(blocks, banks)])


@register_serializable
class CGCLayer(GateInputsMixin, keras.layers.Layer):
    """Customized Gate Control (CGC): task-specific experts, shared experts, one gate per task.

    One extraction level of Progressive Layered Extraction (Tang et al., RecSys 2020). Each
    task ``k`` has ``m`` experts of its own ``E_{k,1..m}`` and all tasks share ``s`` experts
    ``E_{s,1..s}``. Task ``k``'s gate weighs its own experts followed by the shared ones
    (paper eq. 2-4), for input ``x`` (gate input ``x_g``, default ``x``):

        S^k(x)   = [E_{k,1}(x), ..., E_{k,m}(x), E_{s,1}(x), ..., E_{s,s}(x)]   (batch, m + s, u)
        w^k(x_g) = softmax(W_g^k x_g / temperature)                            (batch, m + s)
        g^k(x)   = w^k(x_g) S^k(x) = sum_i w^k(x_g)_i S^k(x)_i                  (batch, u)

    and the model's tower gives ``y_k = t^k(g^k(x))``. With ``return_shared=True`` the layer
    also returns the shared output for the next level, from a gate over every expert (all
    tasks' experts in task order, then the shared experts):

        S^s(x) = [E_{1,1..m}(x), ..., E_{T,1..m}(x), E_{s,1..s}(x)]   (batch, T m + s, u)
        g^s(x) = softmax(W_g^s x_g / temperature) S^s(x)

    **Deeper levels** (:class:`PLELayer` stacks them): ``inputs`` is a list of ``T`` task
    inputs followed by the shared input. Task ``k``'s experts read task input ``k``, the
    shared experts read the shared input, task ``k``'s gate reads task input ``k`` and the
    shared gate the shared input (paper eq. 5), unless ``gate_inputs`` is given, which every
    gate then reads.

    Gates are :class:`ExpertDropoutGate` layers, so ``expert_dropout_rate`` applies expert
    dropout to every gate in training. Built-in experts are :class:`ExpertBank` layers, one
    per task and one shared, with stacked kernels; every expert is initialized differently.
    Every task has the same number of own experts.

    Args:
        num_shared_experts: number of shared experts s (>= 0; 0 means no shared experts).
        num_task_experts: number of experts m of each task (>= 0; 0 leaves the shared experts
            only: MMoE). ``num_shared_experts + num_task_experts`` must be >= 1.
        expert_units: int (one-layer experts) or sequence (MLP experts) of the built-in experts.
        num_tasks: number of tasks T; optional when ``task_names`` is given.
        task_names: names of the tasks (letters, digits, underscores); default ``task_0...``.
        expert_activation: activation of the built-in experts' layers (and gates' hidden layers).
        expert_dropout_rate: expert dropout probability of the gates, in [0, 1).
        gate_temperature: softmax temperature of the gates (> 0).
        gate_hidden_units: hidden layer sizes of the gate networks (default: linear gates).
        shared_experts: optional list of Keras layers used as the shared experts instead of
            built-in ones; each maps (batch, d) to (batch, u).
        task_experts: optional list of ``num_tasks`` lists of Keras layers (the same number per
            task) used as each task's experts instead of built-in ones.
        return_shared: also return the shared output (a level that feeds another level).
        return_gate_weights: also return the gate weights (see Returns).
        use_bias: whether the experts' layers use a bias.
        gate_use_bias: whether the gates' layers use a bias (default None: as ``use_bias``;
            ``False`` matches DeepCTR, whose gates have none).
        kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer:
            as in ``keras.layers.Dense``, for experts and gates.
        seed: seed of initializers and expert dropout (None: random).

    Call arguments:
        inputs: one tensor (batch, d) (the first level), or a list of ``num_tasks`` task
            inputs followed by the shared input, each (batch, d_i) (deeper levels).
        gate_inputs: optional tensor (batch, d_g) read by every gate instead of its own input.
        training: Keras training flag; expert dropout is active only in training.

    Returns:
        A list of ``num_tasks`` tensors (batch, u) in task order, then the shared output
        (batch, u) if ``return_shared``. With ``return_gate_weights=True`` a tuple
        ``(outputs, gate_weights)`` where ``gate_weights`` is the dict of
        :meth:`gate_weights`: ``"tasks"`` (batch, num_tasks, m + s), the task gates' weights
        (own experts first), and with ``return_shared`` ``"shared"`` (batch, T m + s).

    Example:

    >>> inputs = keras.Input((100,), name="features")
    >>> click, conversion = keras_mmoe.CGCLayer(
    ...     num_shared_experts=4, num_task_experts=2, expert_units=16,
    ...     task_names=["click", "conversion"])(inputs)
    >>> outputs = {"click": keras.layers.Dense(1, "sigmoid", name="click")(click),
    ...            "conversion": keras.layers.Dense(1, "sigmoid", name="conversion")(conversion)}
    >>> model = keras.Model({"features": inputs}, outputs)

    References: Tang, Liu, Zhao, Gong, "Progressive Layered Extraction (PLE): A Novel
    Multi-Task Learning (MTL) Model for Personalized Recommendations", RecSys 2020;
    Zhao et al., RecSys 2019 (expert dropout).
    """

    def __init__(
        self,
        num_shared_experts: Optional[int] = None,
        num_task_experts: Optional[int] = None,
        expert_units: Union[int, Sequence[int], None] = None,
        num_tasks: Optional[int] = None,
        task_names: Optional[Sequence[str]] = None,
        expert_activation: Any = "relu",
        expert_dropout_rate: float = 0.0,
        gate_temperature: float = 1.0,
        gate_hidden_units: Sequence[int] = (),
        shared_experts: Optional[Sequence[Any]] = None,
        task_experts: Optional[Sequence[Sequence[Any]]] = None,
        return_shared: bool = False,
        return_gate_weights: bool = False,
        use_bias: bool = True,
        gate_use_bias: Optional[bool] = None,
        kernel_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        kernel_regularizer: Any = None,
        bias_regularizer: Any = None,
        seed: Optional[int] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.task_names = resolve_task_names(num_tasks, task_names)
        self.num_tasks = len(self.task_names)
        self.expert_dropout_rate = _utils.check_rate("expert_dropout_rate", expert_dropout_rate)
        self.gate_temperature = _utils.check_temperature("gate_temperature", gate_temperature)
        self.gate_hidden_units = _utils.check_hidden_units("gate_hidden_units", gate_hidden_units)
        self.return_shared = bool(return_shared)
        self.return_gate_weights = bool(return_gate_weights)
        self.gate_use_bias = bool(use_bias) if gate_use_bias is None else bool(gate_use_bias)
        self.seed = _utils.check_seed("seed", seed)
        _utils.set_dense_arguments(
            self, expert_activation, use_bias, kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer
        )

        # Which experts are built in, and how many of each kind.
        if shared_experts is not None:
            shared_experts = check_expert_layers("shared_experts", shared_experts)
            self.num_shared_experts = self._check_count(
                "num_shared_experts", num_shared_experts, len(shared_experts), "shared_experts"
            )
        else:
            self.num_shared_experts = check_non_negative_int(
                "num_shared_experts", 0 if num_shared_experts is None and task_experts is not None else num_shared_experts
            )
        if task_experts is not None:
            task_experts = check_task_experts(task_experts, self.task_names)
            self.num_task_experts = self._check_count(
                "num_task_experts", num_task_experts, len(task_experts[0]), "task_experts[k]"
            )
        else:
            self.num_task_experts = check_non_negative_int(
                "num_task_experts", 0 if num_task_experts is None and shared_experts is not None else num_task_experts
            )
        if self.num_shared_experts + self.num_task_experts == 0:
            raise ValueError(
                "Every task gate needs at least one expert: `num_shared_experts` + `num_task_experts` must be >= 1, "
                f"received: num_shared_experts=0, num_task_experts=0"
            )
        needs_units = (shared_experts is None and self.num_shared_experts > 0) or (
            task_experts is None and self.num_task_experts > 0
        )
        if expert_units is None and needs_units:
            raise ValueError(
                "Give `expert_units` for the built-in experts (or `shared_experts` and `task_experts`), "
                f"received: expert_units=None with num_shared_experts={self.num_shared_experts}, "
                f"num_task_experts={self.num_task_experts}"
            )
        self.expert_units = None if expert_units is None else _utils.check_units("expert_units", expert_units)

        # Expert banks: one per task, then the shared one; each with its own seed range.
        base = _utils.base_seed(self.kernel_initializer, seed)
        self.task_expert_banks = [
            self._expert_bank(self.num_task_experts, task_experts and task_experts[k], base, k, f"experts_{task}")
            for k, task in enumerate(self.task_names)
            if self.num_task_experts
        ]
        self.shared_expert_bank = None
        if self.num_shared_experts:
            self.shared_expert_bank = self._expert_bank(
                self.num_shared_experts, shared_experts, base, self.num_tasks, "shared_experts"
            )
        # Gates: one per task over (own, shared) experts, then the shared gate over all experts.
        self.num_experts = self.num_tasks * self.num_task_experts + self.num_shared_experts
        gate_sizes = [self.num_task_experts + self.num_shared_experts] * self.num_tasks
        gate_names = [f"gate_{task}" for task in self.task_names]
        if self.return_shared:
            gate_sizes.append(self.num_experts)
            gate_names.append("shared_gate")
        gate_base = base + BANK_SEED_STRIDE * (self.num_tasks + 1)
        self.gates = [
            ExpertDropoutGate(
                num_experts=size,
                rate=self.expert_dropout_rate,
                temperature=self.gate_temperature,
                hidden_units=self.gate_hidden_units,
                activation=self.activation,
                use_bias=self.gate_use_bias,
                kernel_initializer=_utils.seeded_copy(self.kernel_initializer, gate_base + 1000 * g),
                bias_initializer=self.bias_initializer,
                kernel_regularizer=self.kernel_regularizer,
                bias_regularizer=self.bias_regularizer,
                seed=None if seed is None else seed + 1000 * g + 1,
                dtype=self.dtype_policy,
                name=name,
            )
            for g, (size, name) in enumerate(zip(gate_sizes, gate_names))
        ]

    @staticmethod
    def _check_count(name, value, count, experts_name):
        if value is not None and value != count:
            raise ValueError(f"`{name}` ({value!r}) must equal the number of experts in `{experts_name}` ({count})")
        return count

    def _expert_bank(self, num_experts, experts, base, index, name):
        seed = base + BANK_SEED_STRIDE * index
        return ExpertBank(
            num_experts=num_experts,
            units=self.expert_units,
            activation=self.activation,
            use_bias=self.use_bias,
            kernel_initializer=_utils.seeded_copy(self.kernel_initializer, seed),
            bias_initializer=self.bias_initializer,
            kernel_regularizer=self.kernel_regularizer,
            bias_regularizer=self.bias_regularizer,
            experts=experts or None,
            seed=seed,
            dtype=self.dtype_policy,
            name=name,
        )

    @property
    def banks(self) -> List[ExpertBank]:
        """The expert banks in the shared gate's order: each task's, then the shared one."""
        return self.task_expert_banks + ([self.shared_expert_bank] if self.shared_expert_bank is not None else [])

    @property
    def output_units(self) -> Optional[int]:
        """Width u of every output (known after build for custom experts)."""
        return self.banks[0].output_units

    # ----------------------------------------------------------------------------------- build

    def _input_shapes(self, inputs_shape):
        """(task input shapes, shared input shape), checked, from one shape or a list of T + 1."""
        shapes = split_shape(self, "inputs", inputs_shape, self.num_tasks + 1)
        if shapes is None:
            shape = _utils.check_rank2(self, "inputs", inputs_shape)
            return [shape] * self.num_tasks, shape
        names = [f"inputs[{i}]" for i in range(self.num_tasks + 1)]
        shapes = [_utils.check_rank2(self, name, shape) for name, shape in zip(names, shapes)]
        return shapes[:-1], shapes[-1]

    def build(
        self,
        inputs_shape: Union[_utils.ShapeLike, Sequence[_utils.ShapeLike]],
        gate_inputs_shape: Optional[_utils.ShapeLike] = None,
    ) -> None:
        task_shapes, shared_shape = self._input_shapes(inputs_shape)
        for bank, shape in zip(self.task_expert_banks, task_shapes):
            _utils.build_sublayer(bank, shape)
        if self.shared_expert_bank is not None:
            _utils.build_sublayer(self.shared_expert_bank, shared_shape)
        widths = {bank.name: bank.output_units for bank in self.banks}
        if len(set(widths.values())) != 1:
            raise ValueError(
                f"CGCLayer '{self.name}': task and shared experts must output the same width, received {widths}"
            )
        gate_shape = self.gate_inputs_shape(gate_inputs_shape)
        if gate_shape is not None:
            gate_shapes = [gate_shape] * len(self.gates)
        else:
            gate_shapes = (task_shapes + [shared_shape])[: len(self.gates)]
        for gate, shape in zip(self.gates, gate_shapes):
            _utils.build_sublayer(gate, shape)
        self.built = True

    # ------------------------------------------------------------------------------------ call

    def _split_inputs(self, inputs):
        if isinstance(inputs, (list, tuple)):
            if len(inputs) != self.num_tasks + 1:
                raise ValueError(
                    f"CGCLayer '{self.name}' expects `inputs` to be one tensor (first level) or a list of "
                    f"{self.num_tasks + 1} tensors ({self.num_tasks} task inputs, then the shared input), "
                    f"received a list of {len(inputs)}"
                )
            for i, x in enumerate(inputs):
                _utils.check_rank2(self, f"inputs[{i}]", x.shape)
            return list(inputs[:-1]), inputs[-1]
        _utils.check_rank2(self, "inputs", inputs.shape)
        return [inputs] * self.num_tasks, inputs

    def _forward(self, inputs, gate_inputs, training):
        """``(outputs, gate_weights)`` of the layer (see the class docstring)."""
        task_inputs, shared_input = self._split_inputs(inputs)
        if gate_inputs is not None:
            gate_inputs = self.check_gate_inputs(gate_inputs, shared_input)
            gate_reads = [gate_inputs] * len(self.gates)
        else:
            gate_reads = (task_inputs + [shared_input])[: len(self.gates)]
        # Each bank computed once: (batch, m, u) per task, (batch, s, u) shared.
        task_out = [bank(x, training=training) for bank, x in zip(self.task_expert_banks, task_inputs)]
        shared_out = [] if self.shared_expert_bank is None else [self.shared_expert_bank(shared_input, training=training)]
        weights = [gate(x, training=training) for gate, x in zip(self.gates, gate_reads)]
        # S^k = own experts, then shared; S^s = every task's experts, then shared.
        outputs = [mix(weights[k], task_out[k : k + 1] + shared_out) for k in range(self.num_tasks)]
        gate_weights = {TASK_GATES: tf.stack(weights[: self.num_tasks], axis=1)}
        if self.return_shared:
            outputs.append(mix(weights[-1], task_out + shared_out))
            gate_weights[SHARED_GATE] = weights[-1]
        return outputs, gate_weights

    def call(
        self,
        inputs: Union[tf.Tensor, Sequence[tf.Tensor]],
        gate_inputs: Optional[tf.Tensor] = None,
        training: Optional[bool] = None,
    ) -> Union[List[tf.Tensor], Tuple[List[tf.Tensor], Dict[str, tf.Tensor]]]:
        outputs, gate_weights = self._forward(inputs, gate_inputs, training)
        if self.return_gate_weights:
            return outputs, gate_weights
        return outputs

    def gate_weights(
        self, inputs: Union[tf.Tensor, Sequence[tf.Tensor]], gate_inputs: Optional[tf.Tensor] = None
    ) -> Dict[str, tf.Tensor]:
        """The gates' softmax weights at inference (no expert dropout), for concrete tensors.

        Args:
            inputs, gate_inputs: as for :meth:`call`.

        Returns:
            ``{"tasks": (batch, num_tasks, m + s)}`` (task ``k``'s weights on its own experts,
            then the shared ones), plus ``"shared": (batch, num_tasks * m + s)`` (every task's
            experts in task order, then the shared ones) when the layer has a shared gate
            (``return_shared=True``). Rows sum to 1. Works whether or not the layer returns
            its gate weights from ``call``; use it eagerly or inside a ``tf.function``.
        """
        if not self.built:
            self(inputs, gate_inputs=gate_inputs)
        return self._forward(inputs, gate_inputs, training=False)[1]

    def compute_output_shape(
        self,
        inputs_shape: Union[_utils.ShapeLike, Sequence[_utils.ShapeLike]],
        gate_inputs_shape: Optional[_utils.ShapeLike] = None,
    ) -> Union[List[tuple], Tuple[List[tuple], Dict[str, tuple]]]:
        shapes = split_shape(self, "inputs", inputs_shape, self.num_tasks + 1)
        batch = tf.TensorShape(inputs_shape if shapes is None else shapes[-1])[0]
        outputs = [(batch, self.output_units)] * (self.num_tasks + int(self.return_shared))
        if not self.return_gate_weights:
            return outputs
        gate_weights = {TASK_GATES: (batch, self.num_tasks, self.num_task_experts + self.num_shared_experts)}
        if self.return_shared:
            gate_weights[SHARED_GATE] = (batch, self.num_experts)
        return outputs, gate_weights

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        shared = self.shared_expert_bank
        custom_tasks = bool(self.task_expert_banks) and self.task_expert_banks[0].experts is not None
        config.update(
            num_shared_experts=self.num_shared_experts,
            num_task_experts=self.num_task_experts,
            expert_units=None if self.expert_units is None else list(self.expert_units),
            num_tasks=self.num_tasks,
            task_names=list(self.task_names),
            expert_activation=keras.activations.serialize(self.activation),
            expert_dropout_rate=self.expert_dropout_rate,
            gate_temperature=self.gate_temperature,
            gate_hidden_units=list(self.gate_hidden_units),
            shared_experts=(
                [serialize(e) for e in shared.experts] if shared is not None and shared.experts is not None else None
            ),
            task_experts=(
                [[serialize(e) for e in bank.experts] for bank in self.task_expert_banks] if custom_tasks else None
            ),
            return_shared=self.return_shared,
            return_gate_weights=self.return_gate_weights,
            gate_use_bias=self.gate_use_bias,
            **{k: v for k, v in _utils.dense_arguments_config(self).items() if k != "activation"},
            seed=self.seed,
        )
        return config
