"""The layers of keras-mmoe: each one module, registered as ``keras_mmoe>ClassName``."""

from keras_mmoe.layers.experts import ExpertBank
from keras_mmoe.layers.gates import ExpertDropoutGate
from keras_mmoe.layers.mmoe import MMoELayer
from keras_mmoe.layers.cgc import CGCLayer
from keras_mmoe.layers.ple import PLELayer
from keras_mmoe.layers.cross_stitch import CrossStitch
from keras_mmoe.layers.l2_tied_dense import L2TiedDense
from keras_mmoe.layers.tensor_factorization import TensorFactorizedDense

__all__ = ["ExpertBank", "ExpertDropoutGate", "MMoELayer", "CGCLayer", "PLELayer"]
__all__ += ["CrossStitch", "L2TiedDense", "TensorFactorizedDense"]
