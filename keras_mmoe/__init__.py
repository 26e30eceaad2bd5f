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


def _command_line_process():
    """True in the ``keras-mmoe`` console script and in ``python -m keras_mmoe.cli.main``."""
    if _sys.argv and _os.path.basename(_sys.argv[0]) == "keras-mmoe":
        return True
    orig = list(getattr(_sys, "orig_argv", ()))
    return any(a == "-m" and b == "keras_mmoe.cli.main" for a, b in zip(orig, orig[1:]))


_LAZY_NAMES = ("IS_KERAS_3", "KERAS_FLAVOR", "ExpertBank", "ExpertDropoutGate", "MMoELayer",
               "diagnostics", "models", "weighting")
_loaded = False


def _load():
    """Imports TensorFlow, Keras and every layer (registering them for ``load_model``), and sets
    the package's attributes. Runs at import, except in the ``keras-mmoe`` command, where it runs
    on first use (so that ``keras-mmoe --help`` does not wait for TensorFlow) with the C++
    start-up lines hidden."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    if _command_line_process() and not _os.environ.get("KERAS_MMOE_VERBOSE_IMPORT"):
        _quiet_tensorflow_import()
    import importlib

    from keras_mmoe import _keras
    from keras_mmoe.layers import ExpertBank, ExpertDropoutGate, MMoELayer

    namespace = globals()
    namespace.update(IS_KERAS_3=_keras.IS_KERAS_3, KERAS_FLAVOR=_keras.KERAS_FLAVOR, ExpertBank=ExpertBank,
                     ExpertDropoutGate=ExpertDropoutGate, MMoELayer=MMoELayer)
    for name in ("diagnostics", "models", "weighting"):  # public subpackages
        namespace[name] = importlib.import_module(f"keras_mmoe.{name}")


if _command_line_process():

    def __getattr__(name):
        if name in _LAZY_NAMES:
            _load()
            return globals()[name]
        raise AttributeError(f"module 'keras_mmoe' has no attribute {name!r}")

else:
    _load()

__version__ = "0.1.0"

__all__ = ["ExpertBank", "ExpertDropoutGate", "MMoELayer", "IS_KERAS_3", "KERAS_FLAVOR", "__version__"]
