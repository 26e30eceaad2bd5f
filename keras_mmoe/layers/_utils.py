"""Small helpers shared by the layers: shape checks, per-copy initializers, Dense-style arguments."""

import random
from typing import Any, Dict, Optional, Sequence, Union

import tensorflow as tf

from keras_mmoe._keras import keras, serialize
from keras_mmoe._validation import (  # noqa: F401  (the layers' argument checks)
    check_hidden_units,
    check_positive_int,
    check_rate,
    check_seed,
    check_temperature,
    check_units,
)

#: A shape as Keras passes it to ``build``: a tuple under Keras 3, a ``tf.TensorShape`` under tf-keras.
ShapeLike = Union[tf.TensorShape, Sequence[Optional[int]]]


def check_rank2(layer: "keras.layers.Layer", argument: str, shape: ShapeLike) -> tf.TensorShape:
    """Raises a ValueError unless ``shape`` is (batch, features) with known features."""
    shape = tf.TensorShape(shape)
    if shape.rank != 2:
        raise ValueError(
            f"{type(layer).__name__} '{layer.name}' expects `{argument}` of rank 2 "
            f"(batch, features), received shape {tuple(shape.as_list()) if shape.rank is not None else shape}"
        )
    if shape[-1] is None:
        raise ValueError(
            f"{type(layer).__name__} '{layer.name}' needs the last dimension of `{argument}` to be known, "
            f"received shape {tuple(shape.as_list())}"
        )
    return shape


def fresh_seed() -> int:
    """A random seed for when the user gave none (initial values still differ per copy).

    Drawn from Python's global ``random``, which ``keras.utils.set_random_seed`` seeds (as Keras
    draws its own default seeds), so that a program that sets the seed builds the same weights
    and dropout draws every run; without it, the stream differs per process.
    """
    return random.randrange(2**31 - 1)


def seeded_copy(initializer: Any, seed: int) -> "keras.initializers.Initializer":
    """A copy of ``initializer`` with ``seed``, if it is a random initializer.

    Keras initializers (both Keras 3 and tf-keras) return the same values on every call
    when seeded, and tf-keras also when unseeded. A layer that needs several different
    initial tensors (one per expert, one per gate) therefore asks for one copy per tensor
    with seeds ``base, base + 1, ...``. Non-random initializers (zeros, constants) have
    no seed and are returned unchanged.
    """
    initializer = keras.initializers.get(initializer)
    config = initializer.get_config()
    if "seed" not in config:
        return initializer
    config["seed"] = int(seed) % (2**31 - 1)
    return type(initializer).from_config(config)


def base_seed(initializer: Any, layer_seed: Optional[int]) -> int:
    """The seed from which per-copy seeds are derived: the initializer's, the layer's, or random."""
    initializer = keras.initializers.get(initializer)
    own = initializer.get_config().get("seed")
    if isinstance(own, int):
        return own
    if layer_seed is not None:
        return layer_seed
    return fresh_seed()


class StackedInitializer:
    """Initial value for ``count`` copies of a weight stacked along ``axis``, each drawn separately.

    Each copy is drawn with the per-copy shape (the shape without ``axis``), so fan-in and
    fan-out based initializers (Glorot, He) scale as they would for one expert alone.
    """

    def __init__(self, initializer: Any, count: int, axis: int, seed: int) -> None:
        self.copies = [seeded_copy(initializer, seed + i) for i in range(count)]
        self.axis = axis

    def __call__(self, shape: Sequence[int], dtype: Any = None, **kwargs: Any) -> tf.Tensor:
        shape = list(shape)
        single = shape[: self.axis] + shape[self.axis + 1 :]
        values = [tf.convert_to_tensor(init(single, dtype=dtype)) for init in self.copies]
        return tf.stack(values, axis=self.axis)


def in_training(training: Union[bool, int, tf.Tensor, None]) -> Optional[bool]:
    """Python truth of Keras's ``training`` flag; a symbolic flag is resolved in the graph."""
    if training is None:
        return False
    if isinstance(training, (bool, int)):
        return bool(training)
    return None  # a tensor: the caller uses smart_cond


def build_sublayer(layer: "keras.layers.Layer", input_shape: ShapeLike) -> None:
    """Builds a tracked sub-layer under its own name scope.

    tf-keras names weights after the active name scope and opens none for an explicit
    ``build()``; without this, two gates' ``kernel`` weights get the same name (and HDF5
    saving fails). Keras 3 opens the scope itself; the extra scope is harmless there.
    """
    with tf.name_scope(layer.name):
        layer.build(input_shape)


def set_dense_arguments(
    layer: "keras.layers.Layer",
    activation: Any,
    use_bias: bool,
    kernel_initializer: Any,
    bias_initializer: Any,
    kernel_regularizer: Any,
    bias_regularizer: Any,
) -> None:
    """Stores the ``keras.layers.Dense``-style arguments on ``layer``, resolved to Keras objects."""
    layer.activation = keras.activations.get(activation)
    layer.use_bias = bool(use_bias)
    layer.kernel_initializer = keras.initializers.get(kernel_initializer)
    layer.bias_initializer = keras.initializers.get(bias_initializer)
    layer.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
    layer.bias_regularizer = keras.regularizers.get(bias_regularizer)


def dense_arguments_config(layer: "keras.layers.Layer") -> Dict[str, Any]:
    """The config entries of the arguments stored by :func:`set_dense_arguments`."""
    return dict(
        activation=keras.activations.serialize(layer.activation),
        use_bias=layer.use_bias,
        kernel_initializer=serialize(layer.kernel_initializer),
        bias_initializer=serialize(layer.bias_initializer),
        kernel_regularizer=serialize(layer.kernel_regularizer),
        bias_regularizer=serialize(layer.bias_regularizer),
    )
