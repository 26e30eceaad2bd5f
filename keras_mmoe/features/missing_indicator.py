"""MissingIndicator: 1.0 where a number is missing (NaN), else 0.0, inside the model."""

from typing import Any

import tensorflow as tf

from keras_mmoe._keras import keras, register_serializable


@register_serializable
class MissingIndicator(keras.layers.Layer):
    """The spec's ``missing_indicator``: ``y = 1.0 if isnan(x) else 0.0``.

    Placed on the raw input, before :class:`FillMissing`, so the model sees both the imputed
    value and the fact that it was imputed.

    Input shape: any float tensor, e.g. ``(batch, 1)``. Output shape: the same, float32.

    Example:

    >>> MissingIndicator()(tf.constant([[1.0], [float("nan")]]))   # [[0.0], [1.0]]
    """

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        return tf.cast(tf.math.is_nan(tf.cast(inputs, tf.float32)), tf.float32)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape
