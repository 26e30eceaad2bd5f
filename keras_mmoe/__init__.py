"""keras-mmoe: Multi-gate Mixture-of-Experts layers for multi-task learning in Keras.

The same classes run under Keras 3 (default) and tf-keras (``TF_USE_LEGACY_KERAS=1``);
see :mod:`keras_mmoe._keras`. Importing the package registers every layer, so saved
models load without ``custom_objects``.
"""

import os as _os
import sys as _sys


def _quiet_tensorflow_import():
    """For the ``keras-mmoe`` command only: imports TensorFlow and Keras with file descriptor 2
    sent to /dev/null, so that the C++ start-up lines (oneDNN, CUDA, absl) do not bury the
    command's progress lines and one-line errors. Python errors still surface (raised after)."""
    _os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    saved, devnull = _os.dup(2), _os.open(_os.devnull, _os.O_WRONLY)
    _sys.stderr.flush()
    _os.dup2(devnull, 2)
    try:
        import keras_mmoe._keras  # noqa: F401  (TensorFlow and Keras)
    finally:
        _os.dup2(saved, 2)
        _os.close(saved)
        _os.close(devnull)


if _sys.argv and _os.path.basename(_sys.argv[0]) == "keras-mmoe" and not _os.environ.get("KERAS_MMOE_VERBOSE_IMPORT"):
    _quiet_tensorflow_import()

from keras_mmoe._keras import IS_KERAS_3, KERAS_FLAVOR  # noqa: E402
from keras_mmoe.layers import CGCLayer, ExpertBank, ExpertDropoutGate, MMoELayer, PLELayer  # noqa: E402
from keras_mmoe import diagnostics, features, models, weighting  # noqa: E402  (public subpackages)

__version__ = "0.1.0"

__all__ = ["ExpertBank", "ExpertDropoutGate", "MMoELayer", "CGCLayer", "PLELayer", "IS_KERAS_3", "KERAS_FLAVOR",
           "__version__"]
