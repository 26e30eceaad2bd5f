"""Training on ``tf.distribute``: strategies, a custom loop for both Keras flavours, checkpoints.

>>> from keras_mmoe import training
>>> distribution = training.make_distribution("mirrored", devices=2)   # first, before any tensor
>>> result = training.fit(model_fn, dataset_fn, {"ctr": "binary"}, distribution=distribution,
...                       epochs=3, checkpoint_dir="ckpt")
>>> training.save_and_export(result, "out/model.keras", "out/model")   # chief only
"""

from keras_mmoe.training.checkpoints import Progress, TrainingCheckpoint
from keras_mmoe.training.distribution import STRATEGIES, Distribution, make_distribution, read_tf_config
from keras_mmoe.training.inputs import in_memory_dataset_fn, shard_files
from keras_mmoe.training.loop import FitResult, fit
from keras_mmoe.training.outputs import save_and_export

__all__ = [
    "STRATEGIES", "Distribution", "FitResult", "Progress", "TrainingCheckpoint", "fit", "in_memory_dataset_fn",
    "make_distribution", "read_tf_config", "save_and_export", "shard_files",
]
