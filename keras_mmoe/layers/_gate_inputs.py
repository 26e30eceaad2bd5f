"""GateInputsMixin: the ``gate_inputs`` call argument of the mixture layers, under both Keras flavours."""

from typing import Any, Dict, Optional

import tensorflow as tf

from keras_mmoe._keras import IS_KERAS_3
from keras_mmoe.layers import _utils
from keras_mmoe.layers.gating import record_call


class GateInputsMixin:
    """For layers whose ``call(inputs, gate_inputs=None, training=None)`` builds gates on ``gate_inputs``.

    Keras 3 passes every call argument's shape to ``build(inputs_shape, gate_inputs_shape)``;
    tf-keras passes only the first, so ``__call__`` notes the gate input's shape in
    ``self._gate_inputs_shape`` before the first call, and the build config keeps it (tf-keras
    rebuilds a loaded layer from its build config). ``build`` reads the shape from there when
    it receives none. Put the mixin before ``keras.layers.Layer`` in the bases.
    """

    def __call__(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        record_call(self, (inputs,) + args, kwargs)  # for keras_mmoe.layers.gating (gate weights in a model)
        if not IS_KERAS_3 and not self.built:
            gate_inputs = kwargs.get("gate_inputs", args[0] if args else None)
            self._gate_inputs_shape = None if gate_inputs is None else gate_inputs.shape
        return super().__call__(inputs, *args, **kwargs)

    def gate_inputs_shape(self, gate_inputs_shape: Optional[_utils.ShapeLike]) -> Optional[tf.TensorShape]:
        """The gate input's shape given to ``build`` (or noted by ``__call__``), checked; None if none."""
        if gate_inputs_shape is None:
            gate_inputs_shape = getattr(self, "_gate_inputs_shape", None)
        if gate_inputs_shape is None:
            self._gate_inputs_shape = None
            return None
        shape = _utils.check_rank2(self, "gate_inputs", gate_inputs_shape)
        self._gate_inputs_shape = tuple(shape.as_list())
        return shape

    def get_build_config(self) -> Optional[Dict[str, Any]]:
        config = super().get_build_config()
        if config is not None and getattr(self, "_gate_inputs_shape", None) is not None:
            config["gate_inputs_shape"] = list(self._gate_inputs_shape)
        return config

    def build_from_config(self, config: Dict[str, Any]) -> None:
        if config.get("gate_inputs_shape") is not None:
            self._gate_inputs_shape = tuple(config["gate_inputs_shape"])
        super().build_from_config(config)

    def check_gate_inputs(self, gate_inputs: tf.Tensor, inputs: tf.Tensor) -> tf.Tensor:
        """``gate_inputs``, checked to be (batch, d_g) with the batch of ``inputs`` (at run time too).

        In a graph the returned tensor depends on the run-time check, so nothing computed from
        it (gates, mixture) can fail first with a less clear shape error.
        """
        _utils.check_rank2(self, "gate_inputs", gate_inputs.shape)
        batch, gate_batch = inputs.shape[0], gate_inputs.shape[0]
        if batch is not None and gate_batch is not None and batch != gate_batch:
            raise ValueError(
                f"{type(self).__name__} '{self.name}': `gate_inputs` batch size {gate_batch} differs from "
                f"`inputs` batch size {batch}"
            )
        check = tf.debugging.assert_equal(
            tf.shape(gate_inputs)[0], tf.shape(inputs)[0],
            message=f"{type(self).__name__} '{self.name}': `gate_inputs` batch size differs from `inputs` batch size",
        )
        if check is None:  # eager: already checked
            return gate_inputs
        with tf.control_dependencies([check]):
            return tf.identity(gate_inputs)
