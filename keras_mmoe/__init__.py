"""keras-mmoe: Multi-gate Mixture-of-Experts layers for multi-task learning in Keras.

The same classes run under Keras 3 (default) and tf-keras (``TF_USE_LEGACY_KERAS=1``);
see :mod:`keras_mmoe._keras`. Importing the package registers every layer, so saved
models load without ``custom_objects``.
"""

from keras_mmoe._keras import IS_KERAS_3, KERAS_FLAVOR
from keras_mmoe.layers import ExpertBank, ExpertDropoutGate, MMoELayer
from keras_mmoe import diagnostics, models  # noqa: E402  (public subpackages)

__version__ = "0.1.0"

__all__ = ["ExpertBank", "ExpertDropoutGate", "MMoELayer", "IS_KERAS_3", "KERAS_FLAVOR", "__version__"]
