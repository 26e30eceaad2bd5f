"""The training loop: one ``strategy.run`` step for every strategy and both Keras flavours.

:func:`fit` trains a multi-task model (dict outputs keyed by task name) on a dataset function
``dataset_fn(input_context) -> tf.data.Dataset`` of ``(features dict, labels dict)`` per-replica
batches, with Keras callbacks (progress bar, History, EarlyStopping...), per-task validation metrics
and checkpoints that a killed run resumes from. See the README's "Distributed training".
"""

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import tensorflow as tf

from keras_mmoe._keras import keras
from keras_mmoe.models.builders import TasksLike
from keras_mmoe.models.tasks import normalize_tasks
from keras_mmoe.training.checkpoints import Progress, TrainingCheckpoint
from keras_mmoe.training.distribution import Distribution, make_distribution

DatasetFn = Callable[[tf.distribute.InputContext], tf.data.Dataset]

# Parameter-server steps are scheduled in chunks of at most this many before the chief waits for
# them (to log their losses): it bounds the queue, not the workers' parallelism.
_PS_CHUNK = 50


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        model: the trained Keras model (its variables live under the strategy).
        history: ``{metric: [value per epoch]}`` of the epochs trained by this run.
        epochs_done: epochs completed, counting those of a resumed run.
        global_step: training steps done in total, counting those of a resumed run.
        resumed_from: the checkpoint the run continued from, or None.
        stopped_early: whether a callback (e.g. EarlyStopping) stopped the training.
        distribution: the :class:`~keras_mmoe.training.Distribution` it ran on.
        checkpoint: the :class:`~keras_mmoe.training.TrainingCheckpoint`, or None.
        examples_per_second: training rows per second of each epoch trained (validation excluded).
        steps_this_run: training steps done by this call (``global_step`` less the resumed ones).
    """

    model: Any
    history: dict
    epochs_done: int
    global_step: int
    resumed_from: Optional[str]
    stopped_early: bool
    distribution: Distribution
    checkpoint: Optional[TrainingCheckpoint] = field(default=None, repr=False)
    examples_per_second: list = field(default_factory=list)
    steps_this_run: int = 0


def _per_example_losses(tasks):
    """``{task: loss(y_true, y_pred) -> (batch,)}``: binary cross-entropy or squared error."""
    losses = {}
    for name, kind in tasks.items():
        if kind == "binary":
            losses[name] = keras.losses.BinaryCrossentropy(reduction="none", name=f"{name}_loss")
        else:
            losses[name] = keras.losses.MeanSquaredError(reduction="none", name=f"{name}_loss")
    return losses


def _make_optimizer(optimizer, learning_rate):
    if callable(optimizer) and not isinstance(optimizer, (str, keras.optimizers.Optimizer)):
        optimizer = optimizer()
    elif isinstance(optimizer, str):
        try:
            default = keras.optimizers.get(optimizer)
        except ValueError:
            raise ValueError(f"`optimizer` {optimizer!r} is not a Keras optimizer name (e.g. 'adam', 'sgd')") from None
        optimizer = type(default).from_config({**default.get_config(), "learning_rate": float(learning_rate)})
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise ValueError(
            "`optimizer` must be an optimizer name (e.g. 'adam') or a callable returning a Keras optimizer, "
            f"received: optimizer={optimizer!r}"
        )
    return optimizer


def _check_model(model):
    if not isinstance(model, keras.Model):
        raise ValueError(f"`model_fn` must return a keras.Model, received: {type(model).__name__}")
    policies = {keras.mixed_precision.global_policy().name, getattr(model.dtype_policy, "name", None)}
    if "mixed_float16" in policies:
        raise ValueError(
            "the training loop does not scale losses, which mixed_float16 needs; use the 'mixed_bfloat16' "
            "or 'float32' policy"
        )


def _check_outputs(outputs, tasks):
    if not isinstance(outputs, Mapping):
        raise ValueError(f"the model must return a dict with one output per task; it returned a {type(outputs).__name__}")
    missing = [t for t in tasks if t not in outputs]
    if missing:
        raise ValueError(f"the model has no output for task(s) {missing}; its outputs are {sorted(outputs)}")


def _check_labels(labels, tasks):
    if not isinstance(labels, Mapping):
        raise ValueError(
            f"the dataset must yield (features dict, labels dict) pairs; the labels are a {type(labels).__name__}"
        )
    missing = [t for t in tasks if t not in labels]
    if missing:
        raise ValueError(f"the dataset's labels have no entry for task(s) {missing}; its label keys are {sorted(labels)}")


def _split(batch):
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ValueError(
            "the dataset must yield (features dict, labels dict) pairs; received an element with "
            f"{len(batch) if isinstance(batch, (tuple, list)) else 1} part(s)"
        )
    return batch


class _Trainer:
    """The step functions and metrics of one run (built once, used by every epoch)."""

    def __init__(self, distribution, model, optimizer, tasks, loss_weights):
        self.distribution = distribution
        self.strategy = distribution.strategy
        self.model = model
        self.optimizer = optimizer
        self.tasks = tasks
        self.loss_weights = loss_weights
        self.losses = _per_example_losses(tasks)
        # Validation runs under the training strategy, except for parameter-server training, where
        # the chief evaluates on its own (its metrics are local, the model's variables remote).
        self.eval_strategy = tf.distribute.get_strategy() if distribution.coordinator else self.strategy
        with self.eval_strategy.scope():
            self.val_metrics = {}
            for name, kind in tasks.items():
                self.val_metrics[f"{name}_loss"] = keras.metrics.Mean(name=f"val_{name}_loss")
                if kind == "binary":
                    self.val_metrics[f"{name}_auc"] = keras.metrics.AUC(name=f"val_{name}_auc")
                else:
                    self.val_metrics[f"{name}_rmse"] = keras.metrics.RootMeanSquaredError(name=f"val_{name}_rmse")
        # No autograph: the steps have no tensor-dependent Python control flow, and a ValueError
        # raised while tracing (a missing label or output) then reaches the caller as it is.
        self.train_step = tf.function(self._train_step, reduce_retracing=True, autograph=False)
        self.eval_step = tf.function(self._eval_step, reduce_retracing=True, autograph=False)
        self.ps_train_step = tf.function(self._ps_train_step, autograph=False)

    # -- training ---------------------------------------------------------------------------------

    def _replica_train_step(self, features, labels):
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            outputs = self.model(features, training=True)
            _check_outputs(outputs, self.tasks)
            _check_labels(labels, self.tasks)
            count = tf.cast(tf.shape(labels[next(iter(self.tasks))])[0], tf.float32)
            global_count = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, count)
            sums = {
                name: tf.reduce_sum(tf.cast(loss(labels[name], outputs[name]), tf.float32))
                for name, loss in self.losses.items()
            }
            data_loss = tf.add_n([self.loss_weights[name] * value for name, value in sums.items()])
            regularization = tf.add_n([tf.cast(l, tf.float32) for l in self.model.losses]) if self.model.losses else 0.0
            # Summed over this replica's rows / rows of all replicas: the replicas' gradients, which
            # the optimizer sums, give the gradient of the mean loss of the global batch.
            loss = tf.math.divide_no_nan(data_loss, global_count) + regularization / self.strategy.num_replicas_in_sync
        gradients = tape.gradient(loss, variables)
        self.optimizer.apply_gradients(zip(gradients, variables))
        # Packed in one tensor (the layout of _EpochLogs.sums): one collective sums them.
        regularization = tf.convert_to_tensor(regularization, tf.float32)
        return tf.stack([count, regularization * count, *(sums[name] for name in self.tasks)])

    def _ps_train_step(self, iterator):
        """One step on the next batch of ``iterator``; returns the summed losses and row count."""
        features, labels = _split(next(iterator))
        totals = self.strategy.run(self._replica_train_step, args=(features, labels))
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, totals, axis=None)

    def _train_step(self, iterator, sums):
        """The same, added to ``sums`` on the device (the loop need not wait for the step)."""
        return sums + self._ps_train_step(iterator)

    # -- validation -------------------------------------------------------------------------------

    def _replica_eval_step(self, features, labels):
        outputs = self.model(features, training=False)
        _check_outputs(outputs, self.tasks)
        _check_labels(labels, self.tasks)
        for name, kind in self.tasks.items():
            y, p = labels[name], outputs[name]
            self.val_metrics[f"{name}_loss"].update_state(self.losses[name](y, p))
            self.val_metrics[f"{name}_auc" if kind == "binary" else f"{name}_rmse"].update_state(y, p)

    def _eval_step(self, batch):
        features, labels = _split(batch)
        self.eval_strategy.run(self._replica_eval_step, args=(features, labels))

    def evaluate(self, dataset_fn):
        """``{val_...: value}`` over one pass of ``dataset_fn``'s data."""
        for metric in self.val_metrics.values():
            metric.reset_state()
        dataset = self.eval_strategy.distribute_datasets_from_function(dataset_fn)
        for batch in dataset:
            self.eval_step(batch)
        logs = {f"val_{key}": float(metric.result()) for key, metric in self.val_metrics.items()}
        regularization = sum(float(l) for l in self.model.losses) if self.model.losses else 0.0
        logs["val_loss"] = regularization + sum(
            self.loss_weights[name] * logs[f"val_{name}_loss"] for name in self.tasks
        )
        return logs


class _ProgressLogger(keras.callbacks.Callback):
    """Keras's ``Progbar`` per epoch (verbose 1: updated every step; 2: one line at the epoch's end).

    The number of steps of an epoch is ``steps_per_epoch``, else learned from the first epoch;
    the loop sets ``seen`` (the epoch's steps) before ``on_epoch_end``.
    """

    def __init__(self, verbose, epochs, steps, log_names):
        super().__init__()
        self.verbose, self.epochs, self.steps = verbose, epochs, steps
        self.log_names = list(log_names)  # already averaged: the progress bar shows them as they are
        self.progbar, self.seen = None, 0

    def on_epoch_begin(self, epoch, logs=None):
        print(f"Epoch {epoch + 1}/{self.epochs}", flush=True)
        self.progbar = keras.utils.Progbar(self.steps, verbose=self.verbose, stateful_metrics=self.log_names, unit_name="step")
        self.seen = 0

    def on_train_batch_end(self, batch, logs=None):
        if self.verbose == 1:
            self.progbar.update(batch + 1, [(k, float(v)) for k, v in (logs or {}).items()])

    def on_epoch_end(self, epoch, logs=None):
        if self.steps is None:
            self.steps = self.seen
            self.progbar.target = self.seen
        self.progbar.update(self.seen, list((logs or {}).items()), finalize=True)


class _EpochLogs:
    """Running sums of one epoch's steps -> Keras-style logs (``loss``, ``<task>_loss``).

    ``sums`` is one vector (rows, regularization x rows, then each task's summed loss): the step
    function adds to it on the device, so the loop never waits for a step's result.
    """

    def __init__(self, tasks, loss_weights):
        self.tasks, self.loss_weights = tasks, loss_weights
        self.sums = tf.zeros([2 + len(tasks)], tf.float32)

    def add(self, totals):
        self.sums = self.sums + totals

    def logs(self, sums=None):
        sums = self.sums if sums is None else sums
        count = sums[0]
        logs = {f"{name}_loss": tf.math.divide_no_nan(sums[2 + i], count) for i, name in enumerate(self.tasks)}
        logs["loss"] = tf.math.divide_no_nan(sums[1], count) + tf.add_n(
            [self.loss_weights[name] * logs[f"{name}_loss"] for name in self.tasks]
        )
        return logs

    def final_logs(self):
        """Python floats (waits for the last step); empty when the epoch had no rows."""
        sums = self.sums.numpy()
        return {key: float(value) for key, value in self.logs(sums).items()} if sums[0] else {}

    @property
    def count(self):
        return float(self.sums[0])


def _has_batch_hooks(callback):
    base = keras.callbacks.Callback
    return any(
        getattr(type(callback), name) is not getattr(base, name)
        for name in ("on_train_batch_begin", "on_train_batch_end", "on_batch_begin", "on_batch_end")
    )


def _skip(dataset_fn, steps, repeat=False):
    """``dataset_fn`` whose datasets skip the batches of ``steps`` steps (each local replica takes
    one batch per step from its input pipeline), repeated if asked."""
    if not steps and not repeat:
        return dataset_fn

    def skipped(input_context):
        dataset = dataset_fn(input_context)
        if repeat:
            dataset = dataset.repeat()
        local_replicas = max(1, input_context.num_replicas_in_sync // input_context.num_input_pipelines)
        return dataset.skip(steps * local_replicas) if steps else dataset

    return skipped


def _check_int(name, value, minimum, allow_none=False):
    if allow_none and value is None:
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, received: {name}={value!r}")
    return value


def fit(
    model_fn: Callable[[], Any],
    train_dataset_fn: DatasetFn,
    tasks: TasksLike,
    *,
    distribution: Optional[Distribution] = None,
    validation_dataset_fn: Optional[DatasetFn] = None,
    epochs: int = 1,
    steps_per_epoch: Optional[int] = None,
    optimizer: Union[str, Callable[[], Any]] = "adam",
    learning_rate: float = 1e-3,
    loss_weights: Optional[Mapping[str, float]] = None,
    checkpoint_dir: Optional[str] = None,
    checkpoint_every_steps: Optional[int] = None,
    callbacks: Sequence[Any] = (),
    verbose: int = 2,
    log: Optional[Callable[[str], None]] = print,
) -> FitResult:
    """Trains a multi-task model under a ``tf.distribute`` strategy with a custom loop.

    Each step runs ``strategy.run`` on every replica: forward pass, the per-task losses summed over
    the replica's rows and divided by the rows of the whole global batch (plus the model's
    regularization losses / replicas), gradients, ``optimizer.apply_gradients`` (which sums the
    replicas' gradients). The loss is ``sum_k loss_weights[k] * mean loss_k``: binary cross-entropy
    for binary tasks, mean squared error for regression tasks, as ``compile_kwargs`` sets for ``fit``.

    Args:
        model_fn: builds the Keras model (called inside the strategy's scope); its outputs are a
            dict with one entry per task.
        train_dataset_fn: ``dataset_fn(input_context)`` returning a ``tf.data.Dataset`` of
            ``(features dict, labels dict)`` batches of ``input_context.get_per_replica_batch_size(
            global_batch_size)`` rows, sharded for ``input_context.input_pipeline_id`` (see
            :func:`~keras_mmoe.training.in_memory_dataset_fn`). One pass is one epoch, unless
            ``steps_per_epoch`` is given (the dataset is then repeated).
        tasks: ``{task: "binary" | "regression"}`` or a list of binary task names.
        distribution: from :func:`~keras_mmoe.training.make_distribution` (default: ``"none"``).
        validation_dataset_fn: like ``train_dataset_fn``; evaluated after every epoch into
            ``val_loss``, ``val_<task>_loss`` and ``val_<task>_auc`` (binary) or ``val_<task>_rmse``.
        epochs: epochs to train in total (a resumed run trains the remaining ones).
        steps_per_epoch: steps per epoch on the repeated dataset; required for parameter-server
            training, whose workers each read their own copy of the data.
        optimizer: an optimizer name (``"adam"``, ``"sgd"``...) or a callable returning a Keras
            optimizer (called in the strategy's scope).
        learning_rate: for an optimizer given by name.
        loss_weights: ``{task: weight}`` (default 1.0 each).
        checkpoint_dir: save model, optimizer and progress here after every epoch (and every
            ``checkpoint_every_steps`` steps) and resume from the newest checkpoint found at start.
        checkpoint_every_steps: also save every this many steps.
        callbacks: Keras callbacks; they get ``on_train_begin/end``, ``on_epoch_begin/end`` with
            the epoch's logs and ``on_train_batch_begin/end`` with the running logs; setting
            ``model.stop_training`` (EarlyStopping does) ends the training after the epoch.
        verbose: 0 silent, 1 progress bar, 2 one line per epoch (Keras's ``ProgbarLogger``).
        log: callable taking one line of the plan and of resuming (None: silent).

    Returns:
        A :class:`FitResult`.

    Raises:
        ValueError: bad arguments, a model without an output per task, labels missing a task, a
            checkpoint of another model.
    """
    distribution = distribution or make_distribution("none")
    tasks = normalize_tasks(tasks)
    _check_int("epochs", epochs, 1)
    _check_int("steps_per_epoch", steps_per_epoch, 1, allow_none=True)
    _check_int("checkpoint_every_steps", checkpoint_every_steps, 1, allow_none=True)
    if verbose not in (0, 1, 2):
        raise ValueError(f"`verbose` must be 0, 1 or 2, received: verbose={verbose!r}")
    loss_weights = dict(loss_weights or {})
    unknown = sorted(set(loss_weights) - set(tasks))
    if unknown:
        raise ValueError(f"`loss_weights` names unknown tasks {unknown}; the tasks are {list(tasks)}")
    loss_weights = {name: float(loss_weights.get(name, 1.0)) for name in tasks}
    if distribution.coordinator is not None and steps_per_epoch is None:
        raise ValueError(
            "parameter-server training needs `steps_per_epoch`: each worker reads its own repeated copy of "
            "the data, so an epoch has no natural end"
        )
    if checkpoint_every_steps is not None and checkpoint_dir is None:
        raise ValueError("`checkpoint_every_steps` needs `checkpoint_dir`")
    say = log or (lambda line: None)

    strategy = distribution.strategy
    with distribution.scope():
        model = model_fn()
        _check_model(model)
        optimizer = _make_optimizer(optimizer, learning_rate)
        optimizer.build(model.trainable_variables)
    trainer = _Trainer(distribution, model, optimizer, tasks, loss_weights)
    say(distribution.describe())

    counters = Progress()
    checkpoint = None
    resumed_from = None
    if checkpoint_dir is not None:
        checkpoint = TrainingCheckpoint(
            checkpoint_dir, model, optimizer, counters, is_chief=distribution.is_chief,
            task_name=f"{distribution.task_type or 'worker'}-{distribution.task_id}",
        )
        resumed_from = checkpoint.restore()
        if resumed_from is None:
            say(f"no checkpoint in {checkpoint.checkpoint_dir}: training from the start")
        else:
            say(f"resuming from checkpoint {resumed_from}: {counters.describe(epochs)}")

    history = keras.callbacks.History()
    log_names = ["loss", *(f"{name}_loss" for name in tasks), "val_loss", *(f"val_{key}" for key in trainer.val_metrics)]
    progress = [_ProgressLogger(verbose, epochs, steps_per_epoch, log_names)] if verbose else []
    callback_list = keras.callbacks.CallbackList(
        [history, *progress, *callbacks], model=model, verbose=verbose, epochs=epochs, steps=steps_per_epoch
    )
    # Batch-level calls (and their logs, which wait for each step) only when a callback uses them.
    batch_hooks = verbose == 1 or any(_has_batch_hooks(callback) for callback in callbacks)
    model.stop_training = False
    per_worker_iterator = None
    if distribution.coordinator is not None:
        per_worker = distribution.coordinator.create_per_worker_dataset(
            strategy.distribute_datasets_from_function(_skip(train_dataset_fn, 0, repeat=True))
        )
        per_worker_iterator = iter(per_worker)
    repeated_iterator = None

    epoch_index = int(counters.epoch.numpy())
    step_in_epoch = int(counters.step_in_epoch.numpy())
    global_step = int(counters.global_step.numpy())
    first_step = global_step

    def save_checkpoint():
        if checkpoint is not None:
            counters.epoch.assign(epoch_index)
            counters.step_in_epoch.assign(step_in_epoch)
            counters.global_step.assign(global_step)
            checkpoint.save()

    def begin_step(batch_index):
        if batch_hooks:
            callback_list.on_train_batch_begin(batch_index)

    def end_step(epoch_logs, batch_index):
        nonlocal step_in_epoch, global_step
        step_in_epoch += 1
        global_step += 1
        if batch_hooks:
            callback_list.on_train_batch_end(batch_index, epoch_logs.logs())
        if checkpoint_every_steps and global_step % checkpoint_every_steps == 0:
            save_checkpoint()

    callback_list.on_train_begin()
    if epoch_index >= epochs:
        say(f"the checkpoint has all {epochs} epochs done: nothing left to train")
    logs = {}
    throughput = []
    while epoch_index < epochs:
        done = step_in_epoch
        epoch_logs = _EpochLogs(tasks, loss_weights)
        callback_list.on_epoch_begin(epoch_index)
        started = time.perf_counter()
        if distribution.coordinator is not None:
            remaining = steps_per_epoch - done
            while remaining > 0:
                chunk = min(remaining, _PS_CHUNK, checkpoint_every_steps or _PS_CHUNK)
                results = []
                for i in range(chunk):
                    begin_step(done + i)
                    results.append(distribution.coordinator.schedule(trainer.ps_train_step, args=(per_worker_iterator,)))
                distribution.coordinator.join()
                for i, result in enumerate(results):
                    epoch_logs.add(result.fetch())
                    end_step(epoch_logs, done + i)
                done += chunk
                remaining -= chunk
        elif steps_per_epoch is not None:
            if repeated_iterator is None:
                repeated_iterator = iter(strategy.distribute_datasets_from_function(_skip(train_dataset_fn, done, repeat=True)))
            for index in range(done, steps_per_epoch):
                begin_step(index)
                epoch_logs.sums = trainer.train_step(repeated_iterator, epoch_logs.sums)
                end_step(epoch_logs, index)
        else:
            iterator = iter(strategy.distribute_datasets_from_function(_skip(train_dataset_fn, done)))
            index = done
            while True:
                begin_step(index)
                try:
                    epoch_logs.sums = trainer.train_step(iterator, epoch_logs.sums)
                except (StopIteration, tf.errors.OutOfRangeError):
                    break  # the end of the epoch's data
                end_step(epoch_logs, index)
                index += 1
        logs = epoch_logs.final_logs()  # waits for the epoch's last step
        if epoch_logs.count:
            throughput.append(epoch_logs.count / (time.perf_counter() - started))
        if validation_dataset_fn is not None:
            logs.update(trainer.evaluate(validation_dataset_fn))
        for callback in progress:
            callback.seen = step_in_epoch
        epoch_index += 1
        step_in_epoch = 0
        save_checkpoint()
        callback_list.on_epoch_end(epoch_index - 1, logs)
        if model.stop_training:
            break
    callback_list.on_train_end(logs)
    return FitResult(
        model=model,
        history=dict(history.history),
        epochs_done=epoch_index,
        global_step=global_step,
        resumed_from=resumed_from,
        stopped_early=bool(model.stop_training) and epoch_index < epochs,
        distribution=distribution,
        checkpoint=checkpoint,
        examples_per_second=throughput,
        steps_this_run=global_step - first_step,
    )
