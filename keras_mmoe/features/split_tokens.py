"""SplitTokens: a cell holding several tokens joined by a separator -> a padded row of tokens."""

from typing import Any, Dict

import tensorflow as tf

from keras_mmoe._keras import keras, register_serializable


def split_tokens(strings: tf.Tensor, separator: str) -> tf.RaggedTensor:
    """Splits a ``(batch,)`` or ``(batch, 1)`` string tensor on ``separator``: a ragged ``(batch, None)``.

    Empty tokens (an empty cell, or ``a||b``) are dropped, so an empty cell is a bag of no token.
    The data statistics and :class:`SplitTokens` share this function, so the vocabulary is learned
    on exactly the tokens the model sees.
    """
    strings = tf.convert_to_tensor(strings, tf.string)
    if strings.shape.rank == 2:
        strings = tf.squeeze(strings, axis=1)
    tokens = tf.strings.split(strings, sep=separator)
    return tf.ragged.boolean_mask(tokens, tf.not_equal(tokens, ""))


@register_serializable
class SplitTokens(keras.layers.Layer):
    """Splits each joined string into its tokens, padded with ``""`` to the longest row.

    ``"mobile|tablet"`` -> ``["mobile", "tablet"]``; ``""`` -> ``[""]`` (no token). The output
    feeds a lookup whose mask token is ``""`` (``StringLookup(mask_token="")`` or
    ``Hashing(mask_value="")``), so padding maps to index 0, which :class:`TokenPooling` ignores.
    Tokens are taken verbatim (no whitespace stripping); empty tokens are dropped.

    Args:
        separator: the string between tokens (e.g. ``"|"``).

    Input shape: ``(batch, 1)`` string. Output shape: ``(batch, max_tokens)`` string, at least
    one column.

    Example:

    >>> SplitTokens("|")(tf.constant([["a|b"], [""]]))   # [[b"a", b"b"], [b"", b""]]
    """

    def __init__(self, separator: str = "|", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(separator, str) or not separator:
            raise ValueError(f"`separator` must be a non-empty string, received: separator={separator!r}")
        self.separator = separator

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        tokens = split_tokens(inputs, self.separator)
        dense = tokens.to_tensor(default_value="")
        # At least one column, so an all-empty batch still has shape (batch, 1).
        padding = tf.fill(tf.stack([tf.shape(dense)[0], tf.maximum(1 - tf.shape(dense)[1], 0)]), "")
        return tf.concat([dense, padding], axis=1)

    def compute_output_shape(self, input_shape: Any) -> tuple:
        return (input_shape[0], None)

    def get_config(self) -> Dict[str, Any]:
        return {**super().get_config(), "separator": self.separator}
