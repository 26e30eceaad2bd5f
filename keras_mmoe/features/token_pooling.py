"""TokenPooling: the mean or sum of the embeddings of a bag of tokens, padding excluded."""

from typing import Any, Dict, Sequence

import tensorflow as tf

from keras_mmoe._keras import keras, register_serializable

COMBINERS = ("mean", "sum")


@register_serializable
class TokenPooling(keras.layers.Layer):
    """Combines a bag of token embeddings into one vector, ignoring padding (token index 0).

    With token indices ``t`` (batch, L), embeddings ``e`` (batch, L, d) and ``m_j = [t_j != 0]``:

        sum:   y = sum_j m_j e_j
        mean:  y = sum_j m_j e_j / max(1, sum_j m_j)

    A bag with no token (an empty cell) gives the zero vector.

    Args:
        combiner: ``"mean"`` or ``"sum"``.

    Call arguments: ``[embeddings, indices]``, shapes ``(batch, L, d)`` and ``(batch, L)``.
    Output shape: ``(batch, d)``.

    Example:

    >>> e = tf.ones((1, 3, 4)); t = tf.constant([[5, 7, 0]])
    >>> TokenPooling("sum")([e, t])   # [[2., 2., 2., 2.]]
    """

    def __init__(self, combiner: str = "mean", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if combiner not in COMBINERS:
            raise ValueError(f"`combiner` must be one of {COMBINERS}, received: combiner={combiner!r}")
        self.combiner = combiner

    def call(self, inputs: Sequence[tf.Tensor]) -> tf.Tensor:
        embeddings, indices = inputs
        mask = tf.cast(tf.not_equal(indices, 0), embeddings.dtype)[..., None]
        total = tf.reduce_sum(embeddings * mask, axis=1)
        if self.combiner == "sum":
            return total
        return total / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)

    def compute_output_shape(self, input_shape: Sequence[Any]) -> tuple:
        embeddings_shape = input_shape[0]
        return (embeddings_shape[0], embeddings_shape[-1])

    def get_config(self) -> Dict[str, Any]:
        return {**super().get_config(), "combiner": self.combiner}
