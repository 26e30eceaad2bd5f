"""The layers of keras-mmoe: each one module, registered as ``keras_mmoe>ClassName``."""

from keras_mmoe.layers.experts import ExpertBank
from keras_mmoe.layers.gates import ExpertDropoutGate
from keras_mmoe.layers.mmoe import MMoELayer

__all__ = ["ExpertBank", "ExpertDropoutGate", "MMoELayer"]
