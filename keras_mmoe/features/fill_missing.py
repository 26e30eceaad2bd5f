"""FillMissing: replaces NaN (a missing number) by a fixed value, inside the model."""

from typing import Any, Dict

import tensorflow as tf

from keras_mmoe._keras import keras, register_serializable


@register_serializable
class FillMissing(keras.layers.Layer):
    """Imputes missing numbers: ``y = fill_value where isnan(x), else x``.

    The spec's ``default`` of a numeric feature: the data pipeline reads an empty cell, a NaN
    or an absent ``tf.train.Example`` feature as NaN, and this layer, inside the model, turns it
    into ``fill_value``. Because the rule is in the model, an exported SavedModel applies it to
    serving requests too (a NaN or an absent feature gets the default).

    Args:
        fill_value: the finite float that replaces NaN.

    Input shape: any float tensor, e.g. ``(batch, 1)``. Output shape: the same, float32.

    Example:

    >>> FillMissing(2.5)(tf.constant([[1.0], [float("nan")]]))   # [[1.0], [2.5]]
    """

    def __init__(self, fill_value: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(fill_value, bool) or not isinstance(fill_value, (int, float)) or fill_value != fill_value \
                or fill_value in (float("inf"), float("-inf")):
            raise ValueError(f"`fill_value` must be a finite number, received: fill_value={fill_value!r}")
        self.fill_value = float(fill_value)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        x = tf.cast(inputs, tf.float32)
        return tf.where(tf.math.is_nan(x), tf.constant(self.fill_value, tf.float32), x)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> Dict[str, Any]:
        return {**super().get_config(), "fill_value": self.fill_value}
