"""Dataset functions for :func:`keras_mmoe.training.fit`: ``dataset_fn(input_context) -> tf.data.Dataset``.

A dataset function is called once per input pipeline (one per worker) with a
``tf.distribute.InputContext``; it returns that pipeline's share of the data in batches of
``input_context.get_per_replica_batch_size(global_batch_size)`` rows. Shard by file when there are
at least as many files as pipelines (:func:`shard_files`), else by data (``dataset.shard``).
"""

from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf


def shard_files(files: Sequence[str], input_context: tf.distribute.InputContext) -> Optional[list]:
    """This input pipeline's files (every ``num_input_pipelines``-th, from its id), or None when there
    are fewer files than pipelines (then shard the rows with ``dataset.shard``)."""
    files = list(files)
    pipelines = input_context.num_input_pipelines
    if len(files) < pipelines:
        return None
    return files[input_context.input_pipeline_id::pipelines]


def in_memory_dataset_fn(features: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray], global_batch_size: int,
                         *, shuffle: bool = True,
                         seed: int = 0) -> Callable[[tf.distribute.InputContext], tf.data.Dataset]:
    """A dataset function over arrays: rows sharded by pipeline, shuffled (seeded), batched per replica.

    Example:

    >>> dataset_fn = in_memory_dataset_fn({"features": x}, {"ctr": y1, "cvr": y2}, global_batch_size=256)
    >>> training.fit(model_fn, dataset_fn, {"ctr": "binary", "cvr": "binary"}, distribution=distribution)
    """
    if isinstance(global_batch_size, bool) or not isinstance(global_batch_size, int) or global_batch_size < 1:
        raise ValueError(f"`global_batch_size` must be a positive integer, received: global_batch_size={global_batch_size!r}")
    features, labels = dict(features), dict(labels)
    rows = {len(v) for v in list(features.values()) + list(labels.values())}
    if len(rows) != 1:
        raise ValueError(f"features and labels must have the same number of rows, received row counts {sorted(rows)}")
    num_rows = rows.pop()

    tensors = (
        {k: tf.convert_to_tensor(v) for k, v in features.items()},
        {k: tf.convert_to_tensor(v) for k, v in labels.items()},
    )

    def take_rows(rows):
        return tf.nest.map_structure(lambda t: tf.gather(t, rows), tensors)

    def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        batch_size = input_context.get_per_replica_batch_size(global_batch_size)
        # Row numbers are sharded, shuffled and batched; each batch of rows is gathered at once.
        rows = tf.data.Dataset.range(num_rows).shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        if shuffle:
            rows = rows.shuffle(max(1, min(num_rows, 1_000_000)), seed=seed, reshuffle_each_iteration=True)
        return rows.batch(batch_size).map(take_rows, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)

    return dataset_fn
