"""The one place that decides which Keras the package runs on.

TensorFlow's ``tf.keras`` is Keras 3 by default and tf-keras (Keras 2) when the
environment variable ``TF_USE_LEGACY_KERAS`` is ``1``, ``true`` or ``True`` when TensorFlow
resolves ``tf.keras``. Every module of keras_mmoe takes ``keras`` from here, so the same layer
classes work under both and follow TensorFlow's own switch. Layer math is written with
TensorFlow ops, which run under both.

The flavour is read from the classes ``tf.keras`` really holds, not from the module's name:
``from tensorflow.keras.layers import Dense`` run before this module renames ``tf.keras`` to
``tensorflow.keras`` whichever Keras it holds.
"""

from typing import Any, Optional, TypeVar

import tensorflow as tf

#: True under Keras 3, False under tf-keras (``TF_USE_LEGACY_KERAS=1``).
IS_KERAS_3 = not tf.keras.layers.Layer.__module__.startswith("tf_keras")

if IS_KERAS_3:
    # tf.keras is then `keras._tf_keras.keras`, a reduced namespace (no `saving`, no
    # `export`); the classes are the same, so take the full top-level Keras 3 module.
    import keras
else:
    keras = tf.keras

#: Human-readable name of the Keras in use, for messages and reports.
KERAS_FLAVOR = "keras3" if IS_KERAS_3 else "tf_keras"

_T = TypeVar("_T")


def register_serializable(cls: _T) -> _T:
    """Registers ``cls`` as ``keras_mmoe>ClassName`` so loading needs no ``custom_objects``."""
    return keras.utils.register_keras_serializable(package="keras_mmoe")(cls)


def serialize(obj: Any) -> Optional[dict]:
    """Serializes a layer, initializer or regularizer into a config dict (None passes through)."""
    if obj is None:
        return None
    return keras.saving.serialize_keras_object(obj)


def deserialize_layer(config: Any) -> "keras.layers.Layer":
    """Rebuilds a layer (or model) from the output of :func:`serialize`."""
    return keras.layers.deserialize(config)
