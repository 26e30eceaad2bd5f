"""keras-mmoe: Multi-gate Mixture-of-Experts layers for multi-task learning in Keras.

The same classes run under Keras 3 (default) and tf-keras (``TF_USE_LEGACY_KERAS=1``);
see :mod:`keras_mmoe._keras`. Importing the package registers every layer, so saved
models load without ``custom_objects``; the subpackages ``data``, ``diagnostics``, ``features``,
``models``, ``serving`` and ``weighting`` come with it. TensorFlow's known C++ start-up lines are
filtered out of stderr while it loads (:mod:`keras_mmoe._startup`; ``KERAS_MMOE_VERBOSE_IMPORT=1``
shows them). In the ``keras-mmoe`` command the import waits until a command needs TensorFlow,
so ``keras-mmoe --help`` answers at once.
"""

from keras_mmoe import _startup

__version__ = "0.1.0"

#: Subpackages and modules bound as attributes of the package.
SUBMODULES = ("data", "diagnostics", "features", "metrics", "models", "saving", "serving", "weighting")
_LAYERS = ("CGCLayer", "ExpertBank", "ExpertDropoutGate", "MMoELayer", "PLELayer")
_NAMES = _LAYERS + ("IS_KERAS_3", "KERAS_FLAVOR") + SUBMODULES
_WITHOUT_TENSORFLOW = ("metrics", "saving")  # modules that import no TensorFlow at import time
_loaded = False


def _load() -> None:
    """Imports TensorFlow (quietly), Keras and every layer, registering them for ``load_model``,
    and binds the package's public names. Runs once."""
    global _loaded
    if _loaded:
        return
    _startup.import_tensorflow()
    import importlib

    from keras_mmoe import _keras, layers

    namespace = globals()
    namespace.update(IS_KERAS_3=_keras.IS_KERAS_3, KERAS_FLAVOR=_keras.KERAS_FLAVOR)
    namespace.update({name: getattr(layers, name) for name in _LAYERS})
    for name in SUBMODULES:
        namespace[name] = importlib.import_module(f"keras_mmoe.{name}")
    _loaded = True


if _startup.running_command_line():

    def __getattr__(name: str):
        if name in _WITHOUT_TENSORFLOW:
            import importlib

            return importlib.import_module(f"keras_mmoe.{name}")
        if name in _NAMES:
            _load()
            return globals()[name]
        raise AttributeError(f"module 'keras_mmoe' has no attribute {name!r}")

else:
    _load()

__all__ = ["ExpertBank", "ExpertDropoutGate", "MMoELayer", "CGCLayer", "PLELayer", "IS_KERAS_3", "KERAS_FLAVOR",
           "__version__"]
