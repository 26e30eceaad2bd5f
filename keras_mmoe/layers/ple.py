"""PLELayer: Progressive Layered Extraction, a stack of CGC levels."""

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import tensorflow as tf

from keras_mmoe._keras import deserialize_layer, keras, register_serializable, serialize
from keras_mmoe._validation import resolve_task_names
from keras_mmoe.layers import _utils
from keras_mmoe.layers._gate_inputs import GateInputsMixin
from keras_mmoe.layers.cgc import SHARED_GATE, TASK_GATES, CGCLayer, check_expert_layers, check_task_experts

#: Seed distance between levels (each level's banks and gates use less than this).
LEVEL_SEED_STRIDE = 1_000_003


def _copy_expert(layer):
    """A new, unbuilt layer with ``layer``'s configuration (fresh weights)."""
    return deserialize_layer(serialize(layer))


@register_serializable
class PLELayer(GateInputsMixin, keras.layers.Layer):
    """Progressive Layered Extraction (PLE): ``num_levels`` stacked :class:`CGCLayer` levels.

    Level 1 is a CGC on the input ``x``; level ``j > 1`` is a CGC whose task ``k`` reads
    level ``j - 1``'s task ``k`` output and whose shared experts read level ``j - 1``'s
    shared output (Tang et al., RecSys 2020, eq. 5-6), for tasks ``k = 1..T``:

        g^{k,1}(x) = w^{k,1}(x) S^{k,1}(x)                                  (level 1: eq. 2-4)
        g^{k,j}(x) = w^{k,j}(g^{k,j-1}(x)) S^{k,j}(g^{k,j-1}(x), g^{s,j-1}(x))   (eq. 5)
        g^{s,j}(x) = w^{s,j}(g^{s,j-1}(x)) S^{s,j}(g^{1,j-1}(x), ..., g^{T,j-1}(x), g^{s,j-1}(x))

    where ``S^{k,j}`` stacks task ``k``'s own experts (reading ``g^{k,j-1}``) and then the
    shared experts (reading ``g^{s,j-1}``), ``S^{s,j}`` every task's experts then the shared
    ones, and ``w`` are softmax gates (:class:`ExpertDropoutGate`, so ``expert_dropout_rate``
    applies expert dropout in every gate). The model's towers give ``y_k = t^k(g^{k,N}(x))``
    (eq. 6). Every level but the last has a shared gate; the last returns the task outputs
    only. Each level has the same expert configuration; levels after the first read inputs of
    width ``u`` (the experts' output width). With ``gate_inputs``, every gate of every level
    reads that tensor instead of its level input.

    The levels are tracked sub-layers ``self.levels`` (``level_0``, ``level_1``, ...).

    Args:
        num_levels: number of extraction levels N (>= 1; 1 is CGC).
        shared_experts: optional list of unbuilt Keras layers: the first level's shared
            experts; every further level gets copies of them (same configuration, new weights).
        task_experts: optional list of ``num_tasks`` lists of unbuilt Keras layers, likewise.
        Other arguments: as for :class:`CGCLayer` (``num_shared_experts``, ``num_task_experts``,
            ``expert_units``, ``num_tasks``, ``task_names``, ``expert_activation``,
            ``expert_dropout_rate``, ``gate_temperature``, ``gate_hidden_units``,
            ``return_gate_weights``, ``use_bias``, ``gate_use_bias``, ``kernel_initializer``,
            ``bias_initializer``, ``kernel_regularizer``, ``bias_regularizer``, ``seed``).

    Call arguments:
        inputs: tensor (batch, d).
        gate_inputs: optional tensor (batch, d_g) read by every gate.
        training: Keras training flag; expert dropout is active only in training.

    Returns:
        A list of ``num_tasks`` tensors (batch, u), the last level's task outputs. With
        ``return_gate_weights=True`` a tuple ``(outputs, gate_weights)`` with ``gate_weights``
        the dict of :meth:`gate_weights`.

    Example:

    >>> inputs = keras.Input((100,), name="features")
    >>> click, conversion = keras_mmoe.PLELayer(
    ...     num_levels=2, num_shared_experts=4, num_task_experts=2, expert_units=16,
    ...     task_names=["click", "conversion"])(inputs)
    >>> outputs = {"click": keras.layers.Dense(1, "sigmoid", name="click")(click),
    ...            "conversion": keras.layers.Dense(1, "sigmoid", name="conversion")(conversion)}
    >>> model = keras.Model({"features": inputs}, outputs)

    References: Tang, Liu, Zhao, Gong, "Progressive Layered Extraction (PLE): A Novel
    Multi-Task Learning (MTL) Model for Personalized Recommendations", RecSys 2020.
    """

    def __init__(
        self,
        num_levels: Optional[int] = None,
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
        self.num_levels = _utils.check_positive_int("num_levels", num_levels)
        self.return_gate_weights = bool(return_gate_weights)
        self.seed = _utils.check_seed("seed", seed)
        if shared_experts is not None:
            shared_experts = self._check_unbuilt("shared_experts", check_expert_layers("shared_experts", shared_experts))
        if task_experts is not None:
            names = resolve_task_names(num_tasks, task_names)
            task_experts = [
                self._check_unbuilt(f"task_experts[{k}]", experts)
                for k, experts in enumerate(check_task_experts(task_experts, names))
            ]
        # Kept as given (unbuilt) for get_config: every level's experts are built from them.
        self._shared_expert_configs = None if shared_experts is None else [serialize(e) for e in shared_experts]
        self._task_expert_configs = None if task_experts is None else [[serialize(e) for e in t] for t in task_experts]
        kernel_initializer = keras.initializers.get(kernel_initializer)
        base = _utils.base_seed(kernel_initializer, seed)
        self._initializer = kernel_initializer
        levels = []
        for level in range(self.num_levels):
            first = level == 0
            levels.append(
                CGCLayer(
                    num_shared_experts=num_shared_experts,
                    num_task_experts=num_task_experts,
                    expert_units=expert_units,
                    num_tasks=num_tasks,
                    task_names=task_names,
                    expert_activation=expert_activation,
                    expert_dropout_rate=expert_dropout_rate,
                    gate_temperature=gate_temperature,
                    gate_hidden_units=gate_hidden_units,
                    shared_experts=None if shared_experts is None else [
                        e if first else _copy_expert(e) for e in shared_experts
                    ],
                    task_experts=None if task_experts is None else [
                        [e if first else _copy_expert(e) for e in experts] for experts in task_experts
                    ],
                    return_shared=level < self.num_levels - 1,
                    return_gate_weights=True,
                    use_bias=use_bias,
                    gate_use_bias=gate_use_bias,
                    kernel_initializer=_utils.seeded_copy(kernel_initializer, base + LEVEL_SEED_STRIDE * level),
                    bias_initializer=bias_initializer,
                    kernel_regularizer=kernel_regularizer,
                    bias_regularizer=bias_regularizer,
                    seed=None if seed is None else seed + LEVEL_SEED_STRIDE * level,
                    dtype=self.dtype_policy,
                    name=f"level_{level}",
                )
            )
        self.levels = levels
        first = self.levels[0]
        self.task_names = list(first.task_names)
        self.num_tasks = first.num_tasks

    @staticmethod
    def _check_unbuilt(name, experts):
        for i, expert in enumerate(experts):
            if expert.built:
                raise ValueError(
                    f"`{name}[{i}]` ({expert.name!r}) is already built; PLELayer copies the custom experts for "
                    "every level, so give unbuilt layers"
                )
        return experts

    @property
    def output_units(self) -> Optional[int]:
        """Width u of every output (known after build for custom experts)."""
        return self.levels[-1].output_units

    # ----------------------------------------------------------------------------------- build

    def build(self, inputs_shape: _utils.ShapeLike, gate_inputs_shape: Optional[_utils.ShapeLike] = None) -> None:
        shape = _utils.check_rank2(self, "inputs", inputs_shape)
        gate_shape = self.gate_inputs_shape(gate_inputs_shape)
        level_shape = shape
        for level in self.levels:
            with tf.name_scope(level.name):
                level.build(level_shape, gate_shape)
            # The next level reads T task inputs and the shared input, each (batch, u).
            level_shape = [tf.TensorShape([shape[0], level.output_units])] * (self.num_tasks + 1)
        self.built = True

    # ------------------------------------------------------------------------------------ call

    def _forward(self, inputs, gate_inputs, training):
        _utils.check_rank2(self, "inputs", inputs.shape)
        if gate_inputs is not None:
            gate_inputs = self.check_gate_inputs(gate_inputs, inputs)
        x, gate_weights = inputs, {}
        for index, level in enumerate(self.levels):
            x, weights = level(x, gate_inputs=gate_inputs, training=training)
            for key, value in weights.items():
                gate_weights[f"level_{index}_{key}"] = value
        return x, gate_weights

    def call(
        self, inputs: tf.Tensor, gate_inputs: Optional[tf.Tensor] = None, training: Optional[bool] = None
    ) -> Union[List[tf.Tensor], Tuple[List[tf.Tensor], Dict[str, tf.Tensor]]]:
        outputs, gate_weights = self._forward(inputs, gate_inputs, training)
        if self.return_gate_weights:
            return outputs, gate_weights
        return outputs

    def gate_weights(self, inputs: tf.Tensor, gate_inputs: Optional[tf.Tensor] = None) -> Dict[str, tf.Tensor]:
        """The gates' softmax weights of every level at inference, for concrete tensors.

        Returns:
            A dict with, for each level ``l``, ``"level_{l}_tasks"`` (batch, num_tasks, m + s)
            (task ``k``'s weights on its own experts, then the shared ones) and, for every
            level but the last, ``"level_{l}_shared"`` (batch, num_tasks * m + s) (every
            task's experts in task order, then the shared ones). Rows sum to 1.
        """
        if not self.built:
            self(inputs, gate_inputs=gate_inputs)
        return self._forward(inputs, gate_inputs, training=False)[1]

    def compute_output_shape(
        self, inputs_shape: _utils.ShapeLike, gate_inputs_shape: Optional[_utils.ShapeLike] = None
    ) -> Union[List[tuple], Tuple[List[tuple], Dict[str, tuple]]]:
        batch = tf.TensorShape(inputs_shape)[0]
        outputs = [(batch, self.output_units)] * self.num_tasks
        if not self.return_gate_weights:
            return outputs
        gate_weights = {}
        for index, level in enumerate(self.levels):
            gate_weights[f"level_{index}_{TASK_GATES}"] = (
                batch, self.num_tasks, level.num_task_experts + level.num_shared_experts
            )
            if level.return_shared:
                gate_weights[f"level_{index}_{SHARED_GATE}"] = (batch, level.num_experts)
        return outputs, gate_weights

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        first = self.levels[0]
        config.update(
            num_levels=self.num_levels,
            num_shared_experts=first.num_shared_experts,
            num_task_experts=first.num_task_experts,
            expert_units=None if first.expert_units is None else list(first.expert_units),
            num_tasks=self.num_tasks,
            task_names=list(self.task_names),
            expert_activation=keras.activations.serialize(first.activation),
            expert_dropout_rate=first.expert_dropout_rate,
            gate_temperature=first.gate_temperature,
            gate_hidden_units=list(first.gate_hidden_units),
            shared_experts=self._shared_expert_configs,
            task_experts=self._task_expert_configs,
            return_gate_weights=self.return_gate_weights,
            use_bias=first.use_bias,
            gate_use_bias=first.gate_use_bias,
            kernel_initializer=serialize(self._initializer),
            bias_initializer=serialize(first.bias_initializer),
            kernel_regularizer=serialize(first.kernel_regularizer),
            bias_regularizer=serialize(first.bias_regularizer),
            seed=self.seed,
        )
        return config
