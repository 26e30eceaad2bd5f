"""K independent training runs of one model as one vectorized model (stacked weights).

A study trains the same architecture many times (runs x learning rates). Here the K runs are
replicas held as one set of stacked weights, every weight with a leading replica axis K, as
:class:`keras_mmoe.layers.ExpertBank` stacks its experts. One training step computes all K
forward passes with batched products, minimizes the sum of the replicas' losses (replica k's
weights appear only in replica k's loss, so its gradient is its own) and applies Adam, which is
elementwise, so the stacked update equals K independent Adams. Each replica has its own data
draw, its own batch order, its own learning rate and its own early stopping.

Supported models are those of :func:`keras_mmoe.models.build_mmoe`, ``build_omoe`` and
``build_shared_bottom`` (dense features in; built-in experts, linear gates with optional expert
dropout and temperature, Dense towers; no regularizers or tower dropout), with the same math:

    MMoE   experts  h_k = a(x_k W_k + b_k)                    (K, B, E, u)   one batched matmul
           gates    g_k = softmax(mask(x_k V_k + c_k) / T)     (K, B, G, E)   G = tasks, or 1 (OMoE)
           mixture  f_k = sum_e g_k[..., e] h_k[..., e, :]     (K, B, T, u)
    Shared-Bottom   f_k = MLP_k(x_k)                           (K, B, u)
    towers          y_k = tower_k(f_k)                         (K, B, T)      all tasks at once

Loss per replica: the sum over tasks of the batch mean of the squared error (regression) or of
the binary cross-entropy (binary), as ``model.compile(**compile_kwargs(tasks))``. Adam as in
Keras (beta 0.9 / 0.999, epsilon 1e-7). Early stopping as ``keras.callbacks.EarlyStopping(
monitor="val_loss", patience=p, restore_best_weights=True)``: a replica stops when ``p`` epochs
in a row did not lower its best validation loss; its weights are then frozen, and at the end
every replica holds the weights of its best epoch.

Initial weights come from Keras models built by the builders (one per replica), so initial
values follow the product's initializers; :meth:`ReplicaStack.assign_to` writes a replica's
weights back into such a model. The tests check that replica k follows ``model.fit`` of its own
Keras model; benchmarks/README.md has what it saves.

Example (four runs, two data draws, two learning rates):

>>> tasks = {"y1": "regression", "y2": "regression"}                 # doctest: +SKIP
>>> stack = ReplicaStack([build_mmoe(100, tasks, seed=s) for s in range(4)], tasks)
>>> data = ReplicaData(x_train, y_train, x_val, y_val)               # (2, N, 100), (2, N, 2), ...
>>> trainer = ReplicaTrainer(stack, learning_rates=[1e-3, 1e-3, 1e-2, 1e-2], batch_size=256)
>>> records = trainer.fit(data, draws=[0, 1, 0, 1], seeds=range(4), max_epochs=200, patience=10)
>>> losses = trainer.evaluate(x_test, y_test, draws=[0, 1, 0, 1])     # (4, 2), best weights
"""

import math
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from keras_mmoe._keras import keras
from keras_mmoe._validation import check_positive_int
from keras_mmoe.layers import MMoELayer
from keras_mmoe.models.tasks import normalize_tasks

#: Adam's constants, those of ``keras.optimizers.Adam()``.
BETA_1, BETA_2, EPSILON = 0.9, 0.999, 1e-7


def _value(variable):
    return np.array(variable.numpy())


class ReplicaStack:
    """K replicas of one MMoE / OMoE / Shared-Bottom model, weights stacked on a leading axis.

    Args:
        models: K Keras models of one architecture, built by ``build_mmoe``, ``build_omoe`` or
            ``build_shared_bottom`` (their current weights are the replicas' initial weights).
        tasks: ``{task: "regression" | "binary"}`` (or a list of binary task names), the tasks
            the models were built with, in their order.

    Attributes:
        params: ``{name: tf.Variable of shape (K, ...)}``, the stacked trainable weights.
        num_replicas: K.
    """

    def __init__(self, models, tasks):
        models = list(models)
        if not models:
            raise ValueError("`models` must hold at least one Keras model, received none")
        self.tasks = normalize_tasks(tasks)
        self.num_replicas = len(models)
        self.layout = _layout(models[0], self.tasks)
        values = [_read(_layout(model, self.tasks)) for model in models]
        for i, v in enumerate(values[1:], start=1):
            shapes, reference = {n: a.shape for n, a in v.items()}, {n: a.shape for n, a in values[0].items()}
            if shapes != reference:
                raise ValueError(
                    f"`models[{i}]` differs in architecture from `models[0]`: weight shapes {shapes} "
                    f"vs {reference}"
                )
        self.params = {
            name: tf.Variable(np.stack([v[name] for v in values]).astype(np.float32), name=name.replace("/", "_"))
            for name in values[0]
        }
        gates = self.layout.get("gates", [])
        self.dropout_rate = gates[0].rate if gates else 0.0
        if self.dropout_rate > 0:
            # The gates' dropout seeds [seed, counter]; each replica-gate draws as its product layer.
            self.dropout_seeds = np.array(
                [[_value(g.seed_state)[0] for g in _layout(m, self.tasks)["gates"]] for m in models], dtype=np.int64
            )
        self.temperature = gates[0].temperature if gates else 1.0
        self.expert_activation = self.layout.get("expert_activation")
        self.kind = self.layout["kind"]

    # --- weights in and out -------------------------------------------------------------------

    def replica_weights(self, k):
        """``{name: np.ndarray}``: replica ``k``'s weights (without the replica axis)."""
        return {name: _value(v)[k] for name, v in self.params.items()}

    def assign_to(self, model, k):
        """Writes replica ``k``'s weights into ``model`` (same architecture as the stack's models)."""
        _write(model, _layout(model, self.tasks), self.replica_weights(k))
        return model

    # --- the vectorized forward pass ----------------------------------------------------------

    def outputs(self, params, x, training=False, step=None):
        """Task outputs before the output activation (logits for binary tasks), (K, B, T)."""
        if self.kind == "moe":
            h = self._experts(params, x)  # (K, B, E, u)
            g = self._gates(params, x, training, step)  # (K, B, G, E)
            f = tf.einsum("kbge,kbeu->kbgu", g, h)  # (K, B, G, u)
            if f.shape[2] == 1:
                f = f[:, :, 0]  # OMoE: one mixture, the input of every task's tower
        else:
            f = x
            for i in range(self.layout["bottom_layers"]):
                f = self.layout["bottom_activations"][i](
                    tf.matmul(f, params[f"bottom/kernel_{i}"]) + params[f"bottom/bias_{i}"][:, None, :]
                )
        for i, activation in enumerate(self.layout["tower_activations"]):
            f = activation(_task_dense(f, params[f"tower/kernel_{i}"], params[f"tower/bias_{i}"]))
        return _task_dense(f, params["output/kernel"], params["output/bias"])[..., 0]

    def predict(self, x, params=None):
        """Predictions (K, B, T) with the output activation (sigmoid for binary tasks)."""
        z = self.outputs(self.params if params is None else params, tf.convert_to_tensor(x, tf.float32))
        return tf.where(self._binary_mask(), tf.sigmoid(z), z)

    def losses(self, params, x, y, training=False, step=None):
        """Per-replica, per-task batch-mean losses (K, T) of targets ``y`` (K, B, T)."""
        z = self.outputs(params, x, training=training, step=step)
        return tf.reduce_mean(self._pointwise_loss(y, z), axis=1)

    def _pointwise_loss(self, y, z):
        squared = tf.square(y - z)
        if not any(kind == "binary" for kind in self.tasks.values()):
            return squared
        cross_entropy = tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=z)
        return tf.where(self._binary_mask(), cross_entropy, squared)

    def _binary_mask(self):
        return tf.constant([kind == "binary" for kind in self.tasks.values()])

    def _experts(self, params, x):
        kernel = params["experts/kernel_0"]  # (K, d, E, u)
        k, d, e, u = kernel.shape
        h = tf.reshape(tf.matmul(x, tf.reshape(kernel, (k, d, e * u))), (k, -1, e, u))
        h = self.expert_activation(h + params["experts/bias_0"][:, None])
        for i in range(1, self.layout["expert_layers"]):
            h = tf.einsum("kbei,keio->kbeo", h, params[f"experts/kernel_{i}"])
            h = self.expert_activation(h + params[f"experts/bias_{i}"][:, None])
        return h

    def _gates(self, params, x, training, step):
        kernel = params["gates/kernel"]  # (K, d, G, E)
        k, d, g, e = kernel.shape
        logits = tf.reshape(tf.matmul(x, tf.reshape(kernel, (k, d, g * e))), (k, -1, g, e))
        logits = (logits + params["gates/bias"][:, None]) / self.temperature
        if training and self.dropout_rate > 0:
            logits = self._drop_experts(logits, step)
        return tf.nn.softmax(logits, axis=-1)

    def _drop_experts(self, logits, step):
        """Expert dropout exactly as :class:`ExpertDropoutGate`: per replica and gate, the draws of
        ``stateless_uniform(seed=[gate seed, step])``; one expert kept when a row drops all."""
        k, _, g, e = logits.shape
        draws = tf.stack([
            tf.stack([
                tf.random.stateless_uniform(
                    tf.shape(logits)[1::2], seed=tf.stack([tf.constant(self.dropout_seeds[r, j]), step]),
                    dtype=tf.float32)
                for j in range(g)], axis=1)
            for r in range(k)])  # (K, B, G, E)
        keep = draws >= self.dropout_rate
        rescue = tf.one_hot(tf.argmax(draws, axis=-1), e, on_value=True, off_value=False)
        keep = tf.logical_or(keep, tf.logical_and(rescue, tf.logical_not(tf.reduce_any(keep, -1, keepdims=True))))
        return tf.where(keep, logits, tf.fill(tf.shape(logits), float("-inf")))


def _task_dense(f, kernel, bias):
    """Every task's Dense layer at once: kernel (K, T, i, o), bias (K, T, o); ``f`` is (K, B, T, i),
    or (K, B, i) when all tasks read the same input (one matmul with the tasks' kernels side by side)."""
    if len(f.shape) == 4:
        return tf.einsum("kbti,ktio->kbto", f, kernel) + bias[:, None]
    k, t, i, o = kernel.shape
    side_by_side = tf.reshape(tf.transpose(kernel, (0, 2, 1, 3)), (k, i, t * o))
    return tf.reshape(tf.matmul(f, side_by_side), (k, -1, t, o)) + bias[:, None]


# --- the builders' models as named weight groups -------------------------------------------------


def _dense_layers(model, prefix, count_from=0):
    layers = []
    while True:
        try:
            layers.append(model.get_layer(f"{prefix}_{len(layers) + count_from}"))
        except ValueError:
            return layers


def _layout(model, tasks):
    """Which Keras variables make each stacked weight: ``{name: (stack axis or None, [variables])}``."""
    names = [layer.name for layer in model.layers]
    unsupported = [layer.name for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    if unsupported:
        raise ValueError(f"ReplicaStack does not support dropout layers, model {model.name!r} has {unsupported}")
    groups = {}
    layout = {"groups": groups}
    moe = [layer for layer in model.layers if isinstance(layer, MMoELayer)]
    if moe:
        layer = moe[0]
        bank = layer.expert_bank
        gate_bias = all(gate.use_bias for gate in layer.gates)
        if bank.experts is not None or layer.gate_hidden_units or not bank.use_bias or not gate_bias:
            raise ValueError(
                f"ReplicaStack supports MMoELayer with built-in experts, linear gates and biases; layer "
                f"{layer.name!r} has experts={bank.experts is not None}, gate_hidden_units="
                f"{layer.gate_hidden_units}, use_bias={bank.use_bias}, gate biases={gate_bias}"
            )
        layout.update(kind="moe", expert_layers=len(bank.units), expert_activation=bank.activation, gates=layer.gates)
        for i in range(len(bank.units)):
            groups[f"experts/kernel_{i}"] = (None, [bank.kernels[i]])
            groups[f"experts/bias_{i}"] = (None, [bank.biases[i]])
        groups["gates/kernel"] = (1, [gate.logits_layer.kernel for gate in layer.gates])
        groups["gates/bias"] = (0, [gate.logits_layer.bias for gate in layer.gates])
        regularized = [bank.kernel_regularizer, bank.bias_regularizer]
    elif "bottom_0" in names:
        bottom = _dense_layers(model, "bottom")
        layout.update(kind="shared_bottom", bottom_layers=len(bottom), bottom_activations=[d.activation for d in bottom])
        for i, dense in enumerate(bottom):
            groups[f"bottom/kernel_{i}"] = (None, [dense.kernel])
            groups[f"bottom/bias_{i}"] = (None, [dense.bias])
        regularized = [d.kernel_regularizer for d in bottom]
    else:
        raise ValueError(
            f"ReplicaStack needs a model of build_mmoe, build_omoe or build_shared_bottom; model "
            f"{model.name!r} has neither an MMoELayer nor a 'bottom_0' layer (layers: {names})"
        )
    towers = [_dense_layers(model, f"{task}_tower") for task in tasks]
    outputs = []
    for task in tasks:
        if task not in names:
            raise ValueError(f"Model {model.name!r} has no output layer named {task!r} (layers: {names})")
        outputs.append(model.get_layer(task))
    depth = {len(t) for t in towers}
    if len(depth) != 1:
        raise ValueError(f"ReplicaStack needs towers of one depth for all tasks, model {model.name!r} has {depth}")
    layout["tower_activations"] = [dense.activation for dense in towers[0]]
    for i in range(depth.pop()):
        groups[f"tower/kernel_{i}"] = (0, [t[i].kernel for t in towers])
        groups[f"tower/bias_{i}"] = (0, [t[i].bias for t in towers])
    groups["output/kernel"] = (0, [d.kernel for d in outputs])
    groups["output/bias"] = (0, [d.bias for d in outputs])
    regularized += [d.kernel_regularizer for t in towers for d in t]
    if any(r is not None for r in regularized):
        raise ValueError(f"ReplicaStack does not support weight regularizers (model {model.name!r})")
    return layout


def _read(layout):
    arrays = {}
    for name, (axis, variables) in layout["groups"].items():
        values = [_value(v) for v in variables]
        arrays[name] = values[0] if axis is None else np.stack(values, axis=axis)
    return arrays


def _write(model, layout, arrays):
    for name, (axis, variables) in layout["groups"].items():
        for i, variable in enumerate(variables):
            variable.assign(arrays[name] if axis is None else np.take(arrays[name], i, axis=axis))


# --- data and training --------------------------------------------------------------------------


@dataclass
class ReplicaData:
    """Data draws shared by replicas: ``x`` (D, N, d) and ``y`` (D, N, T) float32 per split.

    Replica ``k`` reads draw ``draws[k]`` (several replicas, e.g. one per learning rate, may share
    a draw). Every draw of a split has the same number of rows.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray

    def __post_init__(self):
        for split in ("train", "val"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.ndim != 3 or y.ndim != 3 or x.shape[:2] != y.shape[:2]:
                raise ValueError(
                    f"ReplicaData needs x_{split} (draws, rows, features) and y_{split} (draws, rows, tasks) "
                    f"with the same draws and rows, received shapes {x.shape} and {y.shape}"
                )


def batch_order(seed, epoch, num_rows):
    """The row order of one epoch of one run: a permutation drawn from ``(seed, epoch)``."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(num_rows).astype(np.int32)


def stack_labels(y, tasks):
    """``{task: (N, 1)}`` label arrays -> one (N, T) float32 array in task order."""
    return np.concatenate([np.asarray(y[t], np.float32).reshape(-1, 1) for t in tasks], axis=1)


class ReplicaTrainer:
    """Adam training of a :class:`ReplicaStack` with per-replica learning rates and early stopping.

    One trainer trains its stack once (:meth:`fit`). With ``compact=True`` (the default), when at
    most half of the replicas still computing are still training, the stopped ones are dropped from
    the computation (their best weights set aside). This changes the cost, and the results only
    by float rounding: a smaller stack's batched products may round differently in the last bit
    (measured: at most 6e-8 in a weight, identical validation curves). Either way a fit is
    deterministic: the same stack, data and seeds give the same numbers, bit for bit.
    """

    def __init__(self, stack, learning_rates, batch_size=256, compact=True):
        self.stack = stack
        k = stack.num_replicas
        lr = np.asarray(list(learning_rates), dtype=np.float32)
        if lr.shape != (k,) or not np.all(lr > 0):
            raise ValueError(f"`learning_rates` must be {k} positive numbers (one per replica), received {lr.tolist()}")
        self.learning_rates = lr
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.compact = bool(compact)
        self.iterations = tf.Variable(0, dtype=tf.int64, name="iterations")
        self._set_state({n: _value(v) for n, v in stack.params.items()}, lr, np.ones(k, bool))
        self._loss_fn = tf.function(self._loss_sums, reduce_retracing=True)
        self._predict_fn = tf.function(self._predict_chunk, reduce_retracing=True)

    def _set_state(self, params, lr, active, moments=None, best=None):
        """(Re)creates the working variables: weights, Adam moments (default zeros), best weights
        (default the weights), learning rates and the mask of replicas still training."""
        def variables(prefix, arrays):
            return {n: tf.Variable(a, name=f"{prefix}{n.replace('/', '_')}") for n, a in arrays.items()}

        zeros = {n: np.zeros_like(a) for n, a in params.items()}
        m, v = moments if moments is not None else (zeros, zeros)
        self.stack.params = variables("", params)
        self.m, self.v = variables("m_", m), variables("v_", v)
        self.best = variables("best_", params if best is None else best)
        self.stack.num_replicas = len(lr)
        self._lr = tf.constant(lr)
        self.active = tf.Variable(active, name="active")
        self._epoch_fn = tf.function(self._epoch, reduce_retracing=True)

    def _broadcast(self, vector, like):
        return tf.reshape(vector, (-1,) + (1,) * (len(like.shape) - 1))

    def _train_step(self, x, y):
        params = self.stack.params
        with tf.GradientTape() as tape:
            losses = self.stack.losses(params, x, y, training=True, step=self.iterations)  # (K, T)
            total = tf.reduce_sum(losses, axis=1)  # (K,)
            objective = tf.reduce_sum(total)
        names = list(params)
        grads = tape.gradient(objective, [params[n] for n in names])
        local_step = tf.cast(self.iterations + 1, tf.float32)
        alpha = self._lr * tf.sqrt(1 - tf.pow(BETA_2, local_step)) / (1 - tf.pow(BETA_1, local_step))
        for name, grad in zip(names, grads):
            var, m, v = params[name], self.m[name], self.v[name]
            active = self._broadcast(self.active, var)
            new_m = m + (grad - m) * (1 - BETA_1)
            new_v = v + (tf.square(grad) - v) * (1 - BETA_2)
            new_var = var - (new_m * self._broadcast(alpha, var)) / (tf.sqrt(new_v) + EPSILON)
            m.assign(tf.where(active, new_m, m))
            v.assign(tf.where(active, new_v, v))
            var.assign(tf.where(active, new_var, var))
        self.iterations.assign_add(1)
        return total

    def _epoch(self, x_flat, y_flat, index):
        """One epoch; ``index`` (K, N) rows of ``x_flat`` in each replica's order. Returns the mean
        training loss of each replica over the epoch's batches."""
        num_rows = tf.shape(index)[1]
        steps = (num_rows + self.batch_size - 1) // self.batch_size
        total = tf.zeros((self.stack.num_replicas,), tf.float32)
        for s in tf.range(steps):
            rows = index[:, s * self.batch_size:(s + 1) * self.batch_size]
            total += self._train_step(tf.gather(x_flat, rows), tf.gather(y_flat, rows))
        return total / tf.cast(steps, tf.float32)

    def _loss_sums(self, params, x_flat, y_flat, index, chunk):
        """Per-replica, per-task loss summed over the rows ``index`` (K, N), in chunks of rows."""
        num_rows = tf.shape(index)[1]
        sums = tf.zeros((tf.shape(index)[0], len(self.stack.tasks)), tf.float32)
        for start in tf.range(0, num_rows, chunk):
            rows = index[:, start:start + chunk]
            x, y = tf.gather(x_flat, rows), tf.gather(y_flat, rows)
            sums += tf.reduce_sum(self.stack._pointwise_loss(y, self.stack.outputs(params, x)), axis=1)
        return sums

    def _chunk(self):
        return max(64, 2**17 // self.stack.num_replicas)

    def evaluate(self, x, y, draws, params=None):
        """Per-replica, per-task mean loss (K, T) on draws ``x`` (D, N, d), ``y`` (D, N, T)."""
        x_flat, y_flat, index = _flatten(x, y, draws)
        return self._mean_losses(x_flat, y_flat, index, params)

    def _mean_losses(self, x_flat, y_flat, index, params=None):
        sums = self._loss_fn(self.stack.params if params is None else params, x_flat, y_flat, index, self._chunk())
        return sums.numpy().astype(np.float64) / int(index.shape[1])

    def predict(self, x, draws, params=None):
        """Predictions (K, N, T) of every replica on its draw of ``x`` (D, N, d), output activation applied."""
        x_flat, _, index = _flatten(x, np.zeros(x.shape[:2] + (1,), np.float32), draws)
        return self._predict_rows(x_flat, index, params)

    def _predict_rows(self, x_flat, index, params=None):
        params = self.stack.params if params is None else params
        chunk, n = self._chunk(), int(index.shape[1])
        parts = [self._predict_fn(params, x_flat, index[:, start:start + chunk]).numpy() for start in range(0, n, chunk)]
        return np.concatenate(parts, axis=1)

    def _predict_chunk(self, params, x_flat, rows):
        return self.stack.predict(tf.gather(x_flat, rows), params)

    def fit(self, data, draws, seeds, max_epochs, patience=None, progress=None, monitor=None):
        """Trains every replica for up to ``max_epochs`` epochs; returns one record per replica.

        Args:
            data: :class:`ReplicaData`.
            draws: the draw index of every replica (K,).
            seeds: the batch-order seed of every replica (K,); epoch ``e`` of replica ``k`` visits
                the rows in the order ``batch_order(seeds[k], e, N)``.
            max_epochs: the most epochs a replica trains.
            patience: early stopping on the validation loss (None: none; the best epoch's weights
                are still the ones kept).
            progress: optional ``progress(epoch, record)`` called after every epoch.
            monitor: optional ``monitor(predictions, labels) -> values``, lower is better, computed on
                the validation predictions and labels (K', N, T) of the K' replicas still computing
                after every epoch, one value per replica (for example minus the main task's AUC);
                early stopping and the kept weights then follow it instead of the validation loss,
                and it is recorded as ``val_monitor``.

        Returns:
            A list of K dicts: ``val_loss`` (per epoch), ``train_loss`` (per epoch), ``best_epoch``
            (1-based), ``best_val_loss``, ``best_val_task_loss``, ``epochs`` (epochs trained),
            ``stopped`` (early stopping fired); with ``monitor`` also ``val_monitor`` (per epoch) and
            ``best_val_monitor``. The stack then holds each replica's best weights.
        """
        k = self.stack.num_replicas
        if int(self.iterations.numpy()) != 0:
            raise ValueError("A ReplicaTrainer trains its stack once; make a new trainer to train again")
        draws, seeds = np.asarray(list(draws), np.int64), np.asarray([int(s) for s in seeds], np.int64)
        if draws.shape != (k,) or seeds.shape != (k,):
            raise ValueError(f"`draws` and `seeds` need one entry per replica ({k}), received {draws.shape[0]} and {len(seeds)}")
        if draws.min() < 0 or draws.max() >= data.x_train.shape[0]:
            raise ValueError(f"`draws` must index the {data.x_train.shape[0]} data draws, received {draws.tolist()}")
        check_positive_int("max_epochs", max_epochs)
        if patience is not None:
            check_positive_int("patience", patience)
        x_flat, y_flat, _ = _flatten(data.x_train, data.y_train, draws)
        val_x, val_y, val_index_all = _flatten(data.x_val, data.y_val, draws)
        val_labels_all = tf.gather(val_y, val_index_all).numpy() if monitor is not None else None
        n = data.x_train.shape[1]
        stopping = EarlyStopping(k, patience)
        alive = np.arange(k)  # the replicas still computing, in stack order
        set_aside = {}  # best weights of replicas dropped from the computation, by replica
        curves = {"train": [], "val": [], "task": [], "monitor": []}
        for epoch in range(max_epochs):
            order = np.stack([batch_order(seeds[a], epoch, n) + draws[a] * n for a in alive]).astype(np.int32)
            val_index = tf.gather(val_index_all, alive)
            values = {"train": self._epoch_fn(x_flat, y_flat, tf.constant(order)).numpy(),
                      "task": self._mean_losses(val_x, val_y, val_index)}
            values["val"] = values["task"].sum(axis=1)
            values["monitor"] = values["val"]
            if monitor is not None:
                watched = monitor(self._predict_rows(val_x, val_index), val_labels_all[alive])
                values["monitor"] = np.asarray(watched, dtype=np.float64)
                if values["monitor"].shape != (len(alive),):
                    raise ValueError(f"`monitor` must return one value per replica ({len(alive)}), returned "
                                     f"shape {values['monitor'].shape}")
            full = {}
            for key, value in values.items():
                full[key] = np.full((k,) + value.shape[1:], np.nan)
                full[key][alive] = value
            improved = stopping.update(epoch, full["monitor"])
            self._keep_best(improved[alive])
            self.active.assign(~stopping.stopped[alive])
            for key, value in full.items():
                trained = (stopping.trained_epochs > epoch).reshape((-1,) + (1,) * (value.ndim - 1))
                curves[key].append(np.where(trained, value, np.nan))
            if progress:
                progress(epoch, {"val_loss": full["val"], "active": int((~stopping.stopped).sum()),
                                 "computing": len(alive)})
            running = ~stopping.stopped[alive]
            if not running.any():
                break
            if self.compact and running.sum() <= len(alive) // 2:
                alive = self._drop_stopped(alive, running, set_aside)
        best = {name: _value(variable) for name, variable in self.best.items()}
        final = {name: np.stack([set_aside[r][name] if r in set_aside else best[name][list(alive).index(r)]
                                 for r in range(k)]) for name in best}
        self._set_state(final, self.learning_rates, np.zeros(k, bool))
        self.stack.dropout_seeds = getattr(self, "_all_dropout_seeds", getattr(self.stack, "dropout_seeds", None))
        steps_per_epoch = math.ceil(n / self.batch_size)
        records = []
        for r in range(k):
            epochs = int(stopping.trained_epochs[r])
            best_epoch = int(stopping.best_epoch[r])
            records.append({
                "learning_rate": float(self.learning_rates[r]),
                "epochs": epochs,
                "steps": epochs * steps_per_epoch,
                "best_epoch": best_epoch + 1,
                "best_step": (best_epoch + 1) * steps_per_epoch,
                "stopped": bool(stopping.stopped[r]),
                "best_val_loss": float(curves["val"][best_epoch][r]),
                "best_val_task_loss": [float(v) for v in curves["task"][best_epoch][r]],
                "val_loss": [float(c[r]) for c in curves["val"][:epochs]],
                "train_loss": [float(c[r]) for c in curves["train"][:epochs]],
            })
            if monitor is not None:
                records[-1]["val_monitor"] = [float(c[r]) for c in curves["monitor"][:epochs]]
                records[-1]["best_val_monitor"] = float(curves["monitor"][best_epoch][r])
        return records

    def _drop_stopped(self, alive, running, set_aside):
        """Continues with the running replicas only; the others' best weights are set aside."""
        best = {name: _value(variable) for name, variable in self.best.items()}
        for position in np.flatnonzero(~running):
            set_aside[int(alive[position])] = {name: value[position] for name, value in best.items()}
        keep = np.flatnonzero(running)
        if getattr(self.stack, "dropout_seeds", None) is not None:
            if not hasattr(self, "_all_dropout_seeds"):
                self._all_dropout_seeds = self.stack.dropout_seeds
            self.stack.dropout_seeds = self._all_dropout_seeds[alive[keep]]
        self._set_state(
            {name: _value(v)[keep] for name, v in self.stack.params.items()},
            self.learning_rates[alive[keep]], np.ones(len(keep), bool),
            moments=tuple({name: _value(v)[keep] for name, v in moments.items()} for moments in (self.m, self.v)),
            best={name: value[keep] for name, value in best.items()},
        )
        return alive[keep]

    def _keep_best(self, improved):
        mask = tf.constant(improved)
        for name, variable in self.stack.params.items():
            self.best[name].assign(tf.where(self._broadcast(mask, variable), variable, self.best[name]))


class EarlyStopping:
    """Per-replica bookkeeping of ``keras.callbacks.EarlyStopping(monitor="val_loss", patience,
    restore_best_weights=True)``: improvement = strictly lower than the best so far; a replica
    stops after ``patience`` epochs in a row without one. Epoch 0 is always recorded as best
    (Keras keeps the first weights even when the loss is NaN); a NaN is never an improvement, as
    in tf-keras (Keras 3 takes a NaN first loss as the best and then never sees an improvement)."""

    def __init__(self, num_replicas, patience=None):
        self.patience = patience
        self.best = np.full(num_replicas, np.inf)
        self.best_epoch = np.zeros(num_replicas, dtype=np.int64)
        self.wait = np.zeros(num_replicas, dtype=np.int64)
        self.stopped = np.zeros(num_replicas, dtype=bool)
        self.trained_epochs = np.zeros(num_replicas, dtype=np.int64)

    def update(self, epoch, losses):
        """Records epoch ``epoch``'s losses of the replicas still training; returns the mask of
        replicas whose weights are now their best."""
        running = ~self.stopped
        self.trained_epochs[running] = epoch + 1
        improved = running & (losses < self.best)
        improved |= running & (epoch == 0)
        self.best = np.where(improved & (losses < self.best), losses, self.best)
        self.best_epoch = np.where(improved, epoch, self.best_epoch)
        self.wait = np.where(improved, 0, self.wait + running)
        if epoch == 0:  # Keras counts the first epoch's wait only when it did not improve
            self.wait = np.where(running & ~(losses < np.inf), 1, self.wait)
        if self.patience is not None:
            self.stopped |= running & (self.wait >= self.patience) & (epoch > 0)
        return improved


def _flatten(x, y, draws):
    d, n = x.shape[:2]
    x_flat = tf.constant(np.asarray(x, np.float32).reshape(d * n, -1))
    y_flat = tf.constant(np.asarray(y, np.float32).reshape(d * n, -1))
    index = (np.asarray(draws, np.int64)[:, None] * n + np.arange(n)[None, :]).astype(np.int32)
    return x_flat, y_flat, tf.constant(index)


