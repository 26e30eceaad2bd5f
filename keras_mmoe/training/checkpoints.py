"""Checkpoints of a training run (model, optimizer, progress counters) for resuming a killed run.

Every worker of a synchronous strategy takes part in saving (a checkpoint may need all of them);
only the chief's copy is kept, in ``checkpoint_dir``, which every worker must be able to read
(a shared file system or a bucket). The other workers write to a scratch directory and delete it.
"""

import os
from typing import Any, Optional

import tensorflow as tf

_SCRATCH_PREFIX = ".scratch-"


class Progress:
    """Where a run is: int64 ``tf.Variable`` counters, saved with the weights.

    ``epoch`` is the epoch being trained (0-based), ``step_in_epoch`` the steps of it already done,
    ``global_step`` all steps done. Create it outside the strategy's scope: every process keeps its own.
    """

    def __init__(self) -> None:
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.step_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="step_in_epoch")
        self.global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")

    def describe(self, epochs: int) -> str:
        return (
            f"epoch {int(self.epoch.numpy()) + 1} of {epochs}, {int(self.step_in_epoch.numpy())} of its steps done, "
            f"{int(self.global_step.numpy())} steps done in all"
        )


class TrainingCheckpoint:
    """The state that a restarted run continues from: weights, optimizer slots and its :class:`Progress`.

    Args:
        checkpoint_dir: directory of the chief's checkpoints (created if needed); a local path or
            any file system TensorFlow reads (``gs://...``).
        model, optimizer: the Keras model and optimizer (built, so restoring is immediate).
        progress: the run's :class:`Progress`.
        is_chief: whether this process keeps its checkpoints.
        task_name: a name for the scratch directory of a non-chief worker.
        max_to_keep: checkpoints kept (the newest ones).
    """

    def __init__(self, checkpoint_dir: str, model: Any, optimizer: Any, progress: Progress, *, is_chief: bool = True,
                 task_name: str = "worker", max_to_keep: int = 2) -> None:
        checkpoint_dir = os.fspath(checkpoint_dir)
        self.checkpoint_dir = checkpoint_dir if "://" in checkpoint_dir else os.path.abspath(checkpoint_dir)
        self.is_chief = is_chief
        self.progress = progress
        self.checkpoint = tf.train.Checkpoint(
            model=model, optimizer=optimizer,
            epoch=progress.epoch, step_in_epoch=progress.step_in_epoch, global_step=progress.global_step,
        )
        self.write_dir = self.checkpoint_dir if is_chief else os.path.join(self.checkpoint_dir, _SCRATCH_PREFIX + task_name)
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.write_dir, max_to_keep=max_to_keep)

    def restore(self) -> Optional[str]:
        """Restores the newest checkpoint of ``checkpoint_dir``; returns its path (None: none there).

        Raises:
            ValueError: the checkpoint does not belong to this model and optimizer.
        """
        path = tf.train.latest_checkpoint(self.checkpoint_dir)
        if path is None:
            return None
        try:
            self.checkpoint.restore(path).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ValueError(
                f"checkpoint {path} does not match this model and optimizer ({first[:300]}); "
                "use another checkpoint directory or remove it"
            ) from None
        return path

    def save(self) -> Optional[str]:
        """Saves the current state; returns the chief's checkpoint path (None on other workers)."""
        path = self.manager.save(checkpoint_number=int(self.progress.global_step.numpy()))
        if not self.is_chief:
            if tf.io.gfile.exists(self.write_dir):
                tf.io.gfile.rmtree(self.write_dir)
            return None
        return path

    def delete(self) -> None:
        """Removes this run's checkpoints (the chief's files; called once the model is saved)."""
        if not self.is_chief:
            return
        for prefix in self.manager.checkpoints:
            for name in tf.io.gfile.glob(prefix + ".*"):
                tf.io.gfile.remove(name)
        state = os.path.join(self.checkpoint_dir, "checkpoint")
        if tf.io.gfile.exists(state):
            tf.io.gfile.remove(state)
