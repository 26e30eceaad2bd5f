"""The vectorized replica engine: replica k follows the standalone Keras model's training."""

import numpy as np
import pytest
import tensorflow as tf

from keras_mmoe._keras import IS_KERAS_3, keras
from keras_mmoe.data import make_synthetic
from keras_mmoe.models import BUILDERS, compile_kwargs, matched_budget_kwargs
from keras_mmoe.reproduce import replicas as R

DIM, ROWS, VAL_ROWS, BATCH = 20, 610, 200, 50  # 13 steps per epoch, the last of 10 rows
TASKS = {"y1": "regression", "y2": "regression"}
SIZES = matched_budget_kwargs(DIM, 2, num_experts=4, expert_units=8, tower_units=(4,))


def build(name, seed, tasks=TASKS, rate=0.0, temperature=1.0):
    keras.utils.set_random_seed(seed)
    kwargs = dict(SIZES[name])
    if name != "shared_bottom":
        kwargs.update(seed=seed, expert_dropout_rate=rate, gate_temperature=temperature)
    return BUILDERS[name](DIM, tasks, name=name, **kwargs)


def draws(count, tasks=TASKS, unrelated_validation=()):
    """``count`` draws; the draws in ``unrelated_validation`` take their validation labels from
    another draw, so their validation loss soon rises and early stopping fires."""
    xs, ys = [], []
    for i in range(count):
        data = make_synthetic(ROWS + VAL_ROWS, DIM, 0.5, seed=100 + i)
        y = R.stack_labels(data.y, TASKS)
        if set(tasks.values()) == {"binary"}:
            y = (y > 0).astype(np.float32)
        xs.append(data.x)
        ys.append(y)
    x, y = np.stack(xs), np.stack(ys)
    y_val = y[:, ROWS:].copy()
    for i in unrelated_validation:
        y_val[i] = R.stack_labels(make_synthetic(VAL_ROWS, DIM, 0.5, seed=900 + i).y, TASKS)
    return R.ReplicaData(x[:, :ROWS], y[:, :ROWS], x[:, ROWS:], y_val)


def keras_fit(model, tasks, learning_rate, data, draw, seed, epochs, patience=None):
    """The standalone run: model.fit on the same batches in the same order, Keras's EarlyStopping."""
    x, y = data.x_train[draw], data.y_train[draw]
    names = list(tasks)

    def labels(array):
        return {t: array[:, i:i + 1] for i, t in enumerate(names)}

    parts = [tf.data.Dataset.from_tensor_slices(({"features": x[o]}, labels(y[o]))).batch(BATCH)
             for o in (R.batch_order(seed, e, ROWS) for e in range(epochs))]
    dataset = parts[0]
    for part in parts[1:]:
        dataset = dataset.concatenate(part)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), **compile_kwargs(tasks))
    callbacks = []
    if patience is not None:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience,
                                                       restore_best_weights=True))
    history = model.fit(
        dataset, steps_per_epoch=-(-ROWS // BATCH), epochs=epochs, verbose=0, callbacks=callbacks,
        validation_data=({"features": data.x_val[draw]}, labels(data.y_val[draw])), validation_batch_size=1024,
    )
    return history.history["val_loss"]


def assert_replicas_follow_keras(name, tasks, learning_rates, data, replica_draws, epochs, patience=None, **kwargs):
    seeds = list(range(len(learning_rates)))
    models = [build(name, s, tasks, **kwargs) for s in seeds]
    initial = [m.get_weights() for m in models]
    stack = R.ReplicaStack(models, tasks)
    records = R.ReplicaTrainer(stack, learning_rates, BATCH).fit(data, replica_draws, seeds, epochs, patience)
    for k, seed in enumerate(seeds):
        model = build(name, seed, tasks, **kwargs)
        model.set_weights(initial[k])
        curve = keras_fit(model, tasks, learning_rates[k], data, replica_draws[k], seed, epochs, patience)
        np.testing.assert_allclose(records[k]["val_loss"], curve, rtol=2e-5, err_msg=f"replica {k}")
        assert records[k]["epochs"] == len(curve)
        assert records[k]["best_epoch"] == int(np.argmin(curve)) + 1
        assert records[k]["best_val_loss"] == pytest.approx(min(curve), rel=2e-5)
        # The stack holds each replica's best weights, as restore_best_weights does.
        replica_model = stack.assign_to(build(name, seed, tasks, **kwargs), k)
        trainable = {id(v) for v in model.trainable_weights}
        for mine, theirs, variable in zip(replica_model.get_weights(), model.get_weights(), model.weights):
            if id(variable) in trainable:
                np.testing.assert_allclose(mine, theirs, atol=2e-5, err_msg=f"replica {k}: {variable.name}")
    return records


@pytest.mark.parametrize("name", ["mmoe", "omoe", "shared_bottom"])
def test_replicas_follow_standalone_keras_training(name):
    # Three replicas: two draws, three learning rates; partial last batch in every epoch.
    records = assert_replicas_follow_keras(name, TASKS, [1e-3, 3e-3, 2e-3], draws(2), [0, 1, 1], epochs=3)
    assert [r["steps"] for r in records] == [39, 39, 39]
    assert len({r["val_loss"][-1] for r in records}) == 3


@pytest.mark.parametrize("name", ["mmoe", "shared_bottom"])
def test_per_replica_early_stopping_matches_keras(name):
    records = assert_replicas_follow_keras(
        name, TASKS, [3e-3, 1e-3, 3e-3], draws(2, unrelated_validation=[1]), [0, 1, 1], epochs=8, patience=2)
    # Early stopping fired for the replicas of draw 1, not for the one of draw 0.
    assert not records[0]["stopped"] and records[0]["epochs"] == 8
    assert any(r["stopped"] and r["epochs"] < 8 for r in records[1:])
    for r in records:
        assert r["best_step"] == r["best_epoch"] * 13 and r["steps"] == r["epochs"] * 13


@pytest.mark.parametrize("name, rate", [("mmoe", 0.2), ("shared_bottom", 0.0)])
def test_dropping_stopped_replicas_changes_nothing(name, rate):
    # Compaction (stopped replicas leave the computation) gives the same runs; a smaller stack's
    # batched products may round differently in the last bit.
    data = draws(3, unrelated_validation=[1, 2])
    lrs, replica_draws = [3e-3, 1e-2, 3e-3, 1e-2, 1e-3], [0, 1, 2, 1, 0]
    results, computing = [], []
    for compact in (False, True):
        stack = R.ReplicaStack([build(name, s, rate=rate) for s in range(5)], TASKS)
        trainer = R.ReplicaTrainer(stack, lrs, BATCH, compact=compact)
        log = []
        records = trainer.fit(data, replica_draws, range(5), 8, patience=1,
                              progress=lambda e, info: log.append(info["computing"]))
        computing.append(log)
        results.append((records, {n: v.numpy() for n, v in stack.params.items()},
                        trainer.evaluate(data.x_val, data.y_val, replica_draws)))
    assert computing[0] == [5] * len(computing[0]) and min(computing[1]) < 5  # it did compact
    for plain, compacted in zip(results[0][0], results[1][0]):
        assert {k: v for k, v in plain.items() if "loss" not in k} == {k: v for k, v in compacted.items() if "loss" not in k}
        np.testing.assert_allclose(plain["val_loss"], compacted["val_loss"], rtol=1e-6)
    for n in results[0][1]:
        np.testing.assert_allclose(results[0][1][n], results[1][1][n], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(results[0][2], results[1][2], rtol=1e-6)


def test_binary_tasks_and_expert_dropout_follow_keras():
    tasks = {"click": "binary", "buy": "binary"}
    assert_replicas_follow_keras("mmoe", tasks, [3e-3, 1e-3], draws(1, tasks), [0, 0], epochs=2,
                                 rate=0.25, temperature=0.7)


def test_omoe_expert_dropout_follows_keras():
    assert_replicas_follow_keras("omoe", TASKS, [3e-3, 1e-3], draws(2), [0, 1], epochs=2, rate=0.3)


def test_predict_and_evaluate_agree_with_the_keras_model():
    models = [build("mmoe", s) for s in range(3)]
    stack = R.ReplicaStack(models, TASKS)
    data = draws(2)
    x = data.x_val[[0, 1, 1]]
    predictions = stack.predict(x).numpy()
    losses = R.ReplicaTrainer(stack, [1e-3] * 3).evaluate(data.x_val, data.y_val, [0, 1, 1])
    for k, model in enumerate(models):
        out = model.predict({"features": x[k]}, verbose=0)
        reference = np.concatenate([out["y1"], out["y2"]], axis=1)
        np.testing.assert_allclose(predictions[k], reference, rtol=1e-5, atol=1e-6)
        mse = np.mean((data.y_val[[0, 1, 1]][k].astype(np.float64) - reference) ** 2, axis=0)
        np.testing.assert_allclose(losses[k], mse, rtol=1e-5)


def test_monitor_drives_early_stopping_and_the_kept_weights():
    from keras_mmoe.metrics import roc_auc

    tasks = {"click": "binary", "buy": "binary"}
    data = draws(2, tasks)
    stack = R.ReplicaStack([build("mmoe", s, tasks) for s in range(2)], tasks)
    trainer = R.ReplicaTrainer(stack, [1e-2, 3e-3], BATCH)

    def minus_auc(predictions, labels):  # the main task's validation AUC, higher is better
        return [-roc_auc(labels[k, :, 0], predictions[k, :, 0]) for k in range(len(predictions))]

    records = trainer.fit(data, [0, 1], [0, 1], 6, patience=2, monitor=minus_auc)
    kept = trainer.predict(data.x_val, [0, 1])
    for k, record in enumerate(records):
        assert len(record["val_monitor"]) == record["epochs"]
        assert record["best_epoch"] == int(np.argmin(record["val_monitor"])) + 1
        assert record["best_val_monitor"] == pytest.approx(-roc_auc(data.y_val[k][:, 0], kept[k][:, 0]), abs=1e-6)
        np.testing.assert_allclose(kept[k], stack.predict(data.x_val[[0, 1]]).numpy()[k], rtol=1e-6)
    with pytest.raises(ValueError, match="monitor"):
        R.ReplicaTrainer(stack, [1e-3, 1e-3]).fit(data, [0, 1], [0, 1], 1, monitor=lambda p, y: [0.0])


def test_early_stopping_bookkeeping():
    inf, nan = np.inf, np.nan
    curves = np.array([
        [3.0, 2.0, 2.5, 2.0, 1.0, 1.5],  # equal is no improvement: stops after epoch 4 (0-based 3)
        [3.0, 2.0, 1.0, 0.5, 0.4, 0.3],  # improves throughout: never stops
        [nan, nan, 1.0, 2.0, 3.0, 4.0],  # NaN never improves; epoch 0 kept as best until epoch 2
        [1.0, inf, inf, 0.5, 0.4, 0.3],  # stops after epoch 2
    ])
    stopping = R.EarlyStopping(4, patience=2)
    improved = [stopping.update(e, curves[:, e]) for e in range(6)]
    np.testing.assert_array_equal(stopping.trained_epochs, [4, 6, 2, 3])
    np.testing.assert_array_equal(stopping.stopped, [True, False, True, True])
    np.testing.assert_array_equal(stopping.best_epoch, [1, 5, 0, 0])
    assert improved[0].all()
    assert not improved[2][2]  # the third replica stopped after epoch 1 (two NaN epochs)
    never = R.EarlyStopping(1, patience=None)
    for e in range(5):
        never.update(e, np.array([float(5 - e) if e != 3 else 9.0]))
    assert not never.stopped[0] and never.best_epoch[0] == 4 and never.trained_epochs[0] == 5


def test_keras_early_stopping_counts_as_the_bookkeeping_does():
    # Keras's own callback on the same curves: the reference for EarlyStopping above. A NaN first
    # epoch only under tf-keras: Keras 3 then takes NaN as the best and never sees an improvement.
    curves = [([3.0, 2.0, 2.5, 2.0, 1.0, 1.5], 4), ([1.0, np.inf, np.inf, 0.5, 0.4, 0.3], 3)]
    if not IS_KERAS_3:
        curves.append(([np.nan, np.nan, 1.0, 2.0], 2))
    for curve, epochs in curves:
        callback = keras.callbacks.EarlyStopping(monitor="val_loss", patience=2)
        model = keras.Sequential([keras.layers.Dense(1)])
        model.stop_training = False
        callback.set_model(model)
        callback.on_train_begin()
        trained = 0
        for e, value in enumerate(curve):
            callback.on_epoch_end(e, {"val_loss": value})
            trained = e + 1
            if getattr(model, "stop_training", False):
                break
        assert trained == epochs


def test_errors_name_the_argument():
    models = [build("mmoe", 0), build("mmoe", 1)]
    stack = R.ReplicaStack(models, TASKS)
    with pytest.raises(ValueError, match="learning_rates"):
        R.ReplicaTrainer(stack, [1e-3])
    with pytest.raises(ValueError, match="learning_rates"):
        R.ReplicaTrainer(stack, [1e-3, 0.0])
    with pytest.raises(ValueError, match="batch_size"):
        R.ReplicaTrainer(stack, [1e-3, 1e-3], batch_size=0)
    trainer = R.ReplicaTrainer(stack, [1e-3, 1e-3])
    trainer.fit(draws(1), [0, 0], [0, 1], 1)
    with pytest.raises(ValueError, match="trains its stack once"):
        trainer.fit(draws(1), [0, 0], [0, 1], 1)
    trainer = R.ReplicaTrainer(stack, [1e-3, 1e-3])
    with pytest.raises(ValueError, match="draws"):
        trainer.fit(draws(1), [0, 1], [0, 1], 1)
    with pytest.raises(ValueError, match="seeds"):
        trainer.fit(draws(1), [0, 0], [0], 1)
    with pytest.raises(ValueError, match="models\\[1\\]"):
        R.ReplicaStack([build("mmoe", 0), BUILDERS["mmoe"](DIM, TASKS, num_experts=3, expert_units=8)], TASKS)
    with pytest.raises(ValueError, match="build_mmoe, build_omoe or build_shared_bottom"):
        R.ReplicaStack([BUILDERS["single_task"](DIM, TASKS)], TASKS)
    with pytest.raises(ValueError, match="gate_hidden_units"):
        R.ReplicaStack([BUILDERS["mmoe"](DIM, TASKS, gate_hidden_units=(4,))], TASKS)
    with pytest.raises(ValueError, match="gate biases=False"):
        R.ReplicaStack([BUILDERS["mmoe"](DIM, TASKS, gate_use_bias=False)], TASKS)
    with pytest.raises(ValueError, match="dropout"):
        R.ReplicaStack([BUILDERS["mmoe"](DIM, TASKS, tower_dropout=0.1)], TASKS)
    with pytest.raises(ValueError, match="x_train"):
        R.ReplicaData(np.zeros((1, 5, 3)), np.zeros((1, 4, 2)), np.zeros((1, 2, 3)), np.zeros((1, 2, 2)))
