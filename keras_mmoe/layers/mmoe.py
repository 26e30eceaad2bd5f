"""MMoELayer: shared experts with one softmax gate per task (MMoE) or one shared gate (OMoE)."""

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import tensorflow as tf

from keras_mmoe._keras import IS_KERAS_3, keras, register_serializable, serialize
from keras_mmoe._validation import resolve_task_names
from keras_mmoe.layers import _utils
from keras_mmoe.layers.experts import ExpertBank
from keras_mmoe.layers.gating import record_call
from keras_mmoe.layers.gates import ExpertDropoutGate

@register_serializable
class MMoELayer(keras.layers.Layer):
    """Multi-gate Mixture-of-Experts (Ma et al., KDD 2018), or One-gate MoE with ``shared_gate``.

    For input ``x`` (and optional gate input ``x_g``, default ``x``), with experts
    ``f_1..f_n`` and one gate per task ``k``:

        g^k(x_g) = softmax(W_gk x_g / temperature)          (batch, n)   eq. 8
        f^k(x)   = sum_i g^k(x_g)_i f_i(x)                   (batch, u)   eq. 7

    and the model's tower ``h^k`` then gives ``y_k = h^k(f^k(x))`` (eq. 6). With
    ``shared_gate=True`` a single gate serves all tasks (the OMoE baseline). Gates are
    :class:`ExpertDropoutGate` layers, so ``expert_dropout_rate`` applies expert dropout to
    every gate during training. Built-in experts are an :class:`ExpertBank`: all experts
    computed at once with stacked kernels, each expert initialized differently, and the
    expert outputs computed once per call and shared by all tasks.

    Args:
        num_experts: number of experts n (>= 1).
        expert_units: int (one-layer experts, as in the paper) or sequence (MLP experts).
        num_tasks: number of tasks; optional when ``task_names`` is given.
        task_names: names of the tasks (letters, digits, underscores); default ``task_0...``.
        expert_activation: activation of the built-in experts' layers.
        expert_dropout_rate: expert dropout probability of the gates, in [0, 1).
        gate_temperature: softmax temperature of the gates (> 0).
        gate_hidden_units: hidden layer sizes of the gate networks (default: linear gates).
        shared_gate: one gate for all tasks (OMoE) instead of one per task (MMoE).
        experts: optional list of Keras layers/models used as the experts instead of
            built-in ones; each maps (batch, d) to (batch, u).
        return_gate_weights: also return the gate weights.
        use_bias, kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer:
            as in ``keras.layers.Dense``, for experts and gates.
        seed: seed of initializers and expert dropout (None: random).
        gate_use_bias: whether the gates' dense layers have a bias (default: ``use_bias``).
            ``False`` gives gates ``softmax(W_gk x)`` without bias, as in the paper's eq. 8
            and in DeepCTR's ``MMOE``.
        expert_implementation: how the built-in experts' deeper layers are computed,
            ``"auto"`` (chosen from the sizes), ``"batched"`` or ``"per_expert"``: speed only,
            same weights and results (see :class:`ExpertBank`).

    Mixed precision: under a ``mixed_bfloat16`` (or ``mixed_float16``) dtype policy, global or
    given as ``dtype``, experts, gates and the mixture compute in the policy's compute dtype;
    the variables stay float32 and each gate's softmax is computed in float32. The outputs
    are in the compute dtype.

    Call arguments:
        inputs: expert input, (batch, d).
        gate_inputs: optional gate input, (batch, d_g) with the same batch (the YouTube
            placement, where gates may read a different input than the experts).
        training: Keras training flag; expert dropout is active only in training.

    Returns:
        A list of ``num_tasks`` tensors (batch, u), in task order; with
        ``return_gate_weights=True`` a tuple ``(task_outputs, gate_weights)`` with
        ``gate_weights`` of shape (batch, num_tasks, num_experts).

    Example:

    >>> inputs = keras.Input((100,), name="features")
    >>> click, conversion = keras_mmoe.MMoELayer(8, 16, task_names=["click", "conversion"])(inputs)
    >>> outputs = {"click": keras.layers.Dense(1, "sigmoid", name="click")(click),
    ...            "conversion": keras.layers.Dense(1, "sigmoid", name="conversion")(conversion)}
    >>> model = keras.Model({"features": inputs}, outputs)

    References: Ma et al., "Modeling Task Relationships in Multi-task Learning with
    Multi-gate Mixture-of-Experts", KDD 2018; Zhao et al., RecSys 2019 (expert dropout).
    """

    def __init__(
        self,
        num_experts: Optional[int] = None,
        expert_units: Union[int, Sequence[int], None] = None,
        num_tasks: Optional[int] = None,
        task_names: Optional[Sequence[str]] = None,
        expert_activation: Any = "relu",
        expert_dropout_rate: float = 0.0,
        gate_temperature: float = 1.0,
        gate_hidden_units: Sequence[int] = (),
        shared_gate: bool = False,
        experts: Optional[Sequence[Any]] = None,
        return_gate_weights: bool = False,
        use_bias: bool = True,
        kernel_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        kernel_regularizer: Any = None,
        bias_regularizer: Any = None,
        seed: Optional[int] = None,
        gate_use_bias: Optional[bool] = None,
        expert_implementation: str = "auto",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.task_names = resolve_task_names(num_tasks, task_names)
        self.num_tasks = len(self.task_names)
        self.expert_dropout_rate = _utils.check_rate("expert_dropout_rate", expert_dropout_rate)
        self.gate_temperature = _utils.check_temperature("gate_temperature", gate_temperature)
        self.gate_hidden_units = _utils.check_hidden_units("gate_hidden_units", gate_hidden_units)
        self.shared_gate = bool(shared_gate)
        self.return_gate_weights = bool(return_gate_weights)
        self.seed = _utils.check_seed("seed", seed)
        if experts is None:
            # Validated here so that errors name this layer's arguments, not the bank's.
            if num_experts is None or expert_units is None:
                raise ValueError(
                    "Give `num_experts` and `expert_units` (built-in experts) or `experts` (custom experts), "
                    f"received: num_experts={num_experts!r}, expert_units={expert_units!r}"
                )
            _utils.check_positive_int("num_experts", num_experts)
            expert_units = _utils.check_units("expert_units", expert_units)
        self.expert_bank = ExpertBank(
            num_experts=num_experts,
            units=expert_units,
            activation=expert_activation,
            use_bias=use_bias,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            experts=experts,
            seed=seed,
            implementation=expert_implementation,
            dtype=self.dtype_policy,
            name="experts",
        )
        self.num_experts = self.expert_bank.num_experts
        self.gate_use_bias = self.expert_bank.use_bias if gate_use_bias is None else bool(gate_use_bias)
        # Gates share the experts' settings; each gets its own seed range so that gates
        # start different and draw independent dropout masks.
        gate_seed = _utils.base_seed(self.expert_bank.kernel_initializer, seed) + 7919
        num_gates = 1 if self.shared_gate else self.num_tasks
        self.gates = [
            ExpertDropoutGate(
                num_experts=self.num_experts,
                rate=self.expert_dropout_rate,
                temperature=self.gate_temperature,
                hidden_units=self.gate_hidden_units,
                activation=expert_activation,
                use_bias=self.gate_use_bias,
                kernel_initializer=_utils.seeded_copy(self.expert_bank.kernel_initializer, gate_seed + 1000 * g),
                bias_initializer=bias_initializer,
                kernel_regularizer=kernel_regularizer,
                bias_regularizer=bias_regularizer,
                seed=None if seed is None else seed + 1000 * g + 1,
                dtype=self.dtype_policy,
                name="shared_gate" if self.shared_gate else f"gate_{self.task_names[g]}",
            )
            for g in range(num_gates)
        ]

    def __call__(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        record_call(self, (inputs,) + args, kwargs)  # for keras_mmoe.layers.gating (gate weights in a model)
        # Keras 3 passes every call argument's shape to build(); tf-keras passes only the
        # first, so note the gate input's shape for build() before the first call.
        if not IS_KERAS_3 and not self.built:
            gate_inputs = kwargs.get("gate_inputs", args[0] if args else None)
            self._gate_inputs_shape = None if gate_inputs is None else gate_inputs.shape
        return super().__call__(inputs, *args, **kwargs)

    def build(self, inputs_shape: _utils.ShapeLike, gate_inputs_shape: Optional[_utils.ShapeLike] = None) -> None:
        inputs_shape = _utils.check_rank2(self, "inputs", inputs_shape)
        _utils.build_sublayer(self.expert_bank, inputs_shape)
        if gate_inputs_shape is None:
            gate_inputs_shape = getattr(self, "_gate_inputs_shape", None)
        gate_shape = inputs_shape if gate_inputs_shape is None else gate_inputs_shape
        gate_shape = _utils.check_rank2(self, "gate_inputs", gate_shape)
        for gate in self.gates:
            _utils.build_sublayer(gate, gate_shape)
        self._gate_inputs_shape = None if gate_inputs_shape is None else tuple(gate_shape.as_list())
        self.built = True

    def get_build_config(self) -> Optional[Dict[str, Any]]:
        # tf-keras rebuilds a loaded layer from the first input's shape only; keep the gates'.
        config = super().get_build_config()
        if config is not None and getattr(self, "_gate_inputs_shape", None) is not None:
            config["gate_inputs_shape"] = list(self._gate_inputs_shape)
        return config

    def build_from_config(self, config: Dict[str, Any]) -> None:
        if config.get("gate_inputs_shape") is not None:
            self._gate_inputs_shape = tuple(config["gate_inputs_shape"])
        super().build_from_config(config)

    def call(
        self, inputs: tf.Tensor, gate_inputs: Optional[tf.Tensor] = None, training: Optional[bool] = None
    ) -> Union[List[tf.Tensor], Tuple[List[tf.Tensor], tf.Tensor]]:
        _utils.check_rank2(self, "inputs", inputs.shape)
        if gate_inputs is None:
            gate_inputs = inputs
        else:
            _utils.check_rank2(self, "gate_inputs", gate_inputs.shape)
            batch, gate_batch = inputs.shape[0], gate_inputs.shape[0]
            if batch is not None and gate_batch is not None and batch != gate_batch:
                raise ValueError(
                    f"MMoELayer '{self.name}': `gate_inputs` batch size {gate_batch} differs from "
                    f"`inputs` batch size {batch}"
                )
            tf.debugging.assert_equal(
                tf.shape(gate_inputs)[0], tf.shape(inputs)[0],
                message=f"MMoELayer '{self.name}': `gate_inputs` batch size differs from `inputs` batch size",
            )
        experts = self.expert_bank(inputs, training=training)  # (batch, E, u), computed once
        if self.shared_gate:
            weights = self.gates[0](gate_inputs, training=training)  # (batch, E)
            mixed = tf.squeeze(tf.matmul(weights[:, None, :], experts), axis=1)  # (batch, u)
            outputs = [tf.identity(mixed) for _ in self.task_names]
            if self.return_gate_weights:
                gate_weights = tf.broadcast_to(
                    weights[:, None, :], (tf.shape(weights)[0], self.num_tasks, self.num_experts)
                )
        else:
            gate_weights = tf.stack([gate(gate_inputs, training=training) for gate in self.gates], axis=1)
            # (batch, T, E) @ (batch, E, u): one batched matmul mixes every task's experts.
            mixed = tf.matmul(gate_weights, experts)  # (batch, T, u)
            outputs = tf.unstack(mixed, num=self.num_tasks, axis=1)
        if self.return_gate_weights:
            return outputs, gate_weights
        return outputs

    def gate_weights(self, inputs: tf.Tensor, gate_inputs: Optional[tf.Tensor] = None) -> tf.Tensor:
        """The weights the gates put on the experts, in inference mode (no expert dropout).

        Takes the arguments of ``call`` and applies the layer's own gates to ``gate_inputs``
        (default ``inputs``) with ``training=False``: ``g^k(x_g) = softmax(W_gk x_g / temperature)``
        for each task ``k``; a shared gate (OMoE) is broadcast to every task. The layer must be
        built (called once). To read them inside a model, see :mod:`keras_mmoe.layers.gating`.

        Args:
            inputs: expert input, (batch, d).
            gate_inputs: optional gate input, (batch, d_g).

        Returns:
            A tensor (batch, num_tasks, num_experts) whose rows sum to 1, in the layer's
            compute dtype.

        Example:

        >>> layer = keras_mmoe.MMoELayer(4, 8, task_names=["click", "buy"])
        >>> outputs = layer(tf.ones((2, 16)))
        >>> layer.gate_weights(tf.ones((2, 16))).shape
        TensorShape([2, 2, 4])
        """
        if not self.built:
            raise ValueError(
                f"MMoELayer '{self.name}' is not built yet: call it on its inputs before reading its gate weights"
            )
        x = inputs if gate_inputs is None else gate_inputs
        _utils.check_rank2(self, "inputs" if gate_inputs is None else "gate_inputs", x.shape)
        per_gate = [gate(x, training=False) for gate in self.gates]
        if self.shared_gate:
            weights = per_gate[0]
            return tf.broadcast_to(weights[:, None, :], (tf.shape(weights)[0], self.num_tasks, self.num_experts))
        return tf.stack(per_gate, axis=1)

    def compute_output_shape(
        self, inputs_shape: _utils.ShapeLike, gate_inputs_shape: Optional[_utils.ShapeLike] = None
    ) -> Union[List[tuple], Tuple[List[tuple], tuple]]:
        batch = tf.TensorShape(inputs_shape)[0]
        outputs = [(batch, self.expert_bank.output_units) for _ in self.task_names]
        if self.return_gate_weights:
            return outputs, (batch, self.num_tasks, self.num_experts)
        return outputs

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        bank = self.expert_bank
        config.update(
            num_experts=self.num_experts,
            expert_units=None if bank.experts is not None else list(bank.units),
            num_tasks=self.num_tasks,
            task_names=list(self.task_names),
            expert_activation=keras.activations.serialize(bank.activation),
            expert_dropout_rate=self.expert_dropout_rate,
            gate_temperature=self.gate_temperature,
            gate_hidden_units=list(self.gate_hidden_units),
            shared_gate=self.shared_gate,
            experts=[serialize(e) for e in bank.experts] if bank.experts is not None else None,
            return_gate_weights=self.return_gate_weights,
            use_bias=bank.use_bias,
            kernel_initializer=serialize(bank.kernel_initializer),
            bias_initializer=serialize(bank.bias_initializer),
            kernel_regularizer=serialize(bank.kernel_regularizer),
            bias_regularizer=serialize(bank.bias_regularizer),
            seed=self.seed,
            gate_use_bias=self.gate_use_bias,
            expert_implementation=bank.implementation,
        )
        return config
