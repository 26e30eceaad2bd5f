"""keras_mmoe.training in one process (no strategy): the loop's numbers against NumPy, Keras
callbacks, checkpoints and resuming, saving and exporting, and every argument error."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from keras_mmoe import training
from keras_mmoe._keras import keras
from keras_mmoe.metrics import binary_crossentropy, roc_auc
from keras_mmoe.models import build_mmoe

TASKS = {"ctr": "binary", "watch": "regression"}


def make_data(rows=512, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 8)).astype("float32")
    labels = {
        "ctr": (x[:, :1] + 0.5 * x[:, 1:2] + 0.3 * rng.normal(size=(rows, 1)) > 0).astype("float32"),
        "watch": (x[:, 2:3] - x[:, :1] + 0.1 * rng.normal(size=(rows, 1))).astype("float32"),
    }
    return {"features": x}, labels


def model_fn(**kwargs):
    def build():
        keras.utils.set_random_seed(0)
        return build_mmoe(8, TASKS, num_experts=3, expert_units=8, tower_units=(4,), seed=0, **kwargs)
    return build


def weights_of(model):
    return [np.array(w) for w in model.get_weights()]


def test_fit_logs_match_a_numpy_reference():
    features, labels = make_data()
    train_fn = training.in_memory_dataset_fn(features, labels, 64, seed=0)
    valid_features, valid_labels = make_data(256, seed=1)
    valid_fn = training.in_memory_dataset_fn(valid_features, valid_labels, 64, shuffle=False)
    weights = {"ctr": 2.0, "watch": 0.5}
    result = training.fit(model_fn(), train_fn, TASKS, validation_dataset_fn=valid_fn, epochs=3,
                          learning_rate=0.02, loss_weights=weights, verbose=0, log=None)
    history = result.history
    assert result.global_step == 3 * 8 and result.epochs_done == 3 and not result.stopped_early
    assert history["loss"][-1] < 0.6 * history["loss"][0]
    for epoch in range(3):  # the total loss is the weighted sum of the task losses
        expected = sum(weights[t] * history[f"{t}_loss"][epoch] for t in TASKS)
        assert history["loss"][epoch] == pytest.approx(expected, rel=1e-6)

    predictions = result.model.predict(valid_features, verbose=0)
    ctr, watch = np.ravel(predictions["ctr"]), np.ravel(predictions["watch"])
    y_ctr, y_watch = np.ravel(valid_labels["ctr"]), np.ravel(valid_labels["watch"])
    assert history["val_ctr_loss"][-1] == pytest.approx(binary_crossentropy(y_ctr, ctr), rel=1e-4)
    assert history["val_watch_loss"][-1] == pytest.approx(np.mean((watch - y_watch) ** 2), rel=1e-4)
    assert history["val_watch_rmse"][-1] == pytest.approx(np.sqrt(np.mean((watch - y_watch) ** 2)), rel=1e-4)
    # Keras's AUC interpolates over 200 thresholds: close to the exact AUC, not equal.
    assert history["val_ctr_auc"][-1] == pytest.approx(roc_auc(y_ctr, ctr), abs=5e-3)
    assert history["val_loss"][-1] == pytest.approx(
        2.0 * history["val_ctr_loss"][-1] + 0.5 * history["val_watch_loss"][-1], rel=1e-6
    )
    assert len(result.examples_per_second) == 3 and min(result.examples_per_second) > 0


def test_one_step_equals_a_numpy_gradient_step():
    # SGD, one batch: the loss and the update are those of the mean loss of the whole batch.
    features, labels = make_data(32)
    dataset_fn = training.in_memory_dataset_fn(features, labels, 32, shuffle=False)
    build = model_fn()
    model = build()
    with tf.GradientTape() as tape:
        outputs = model(features, training=True)
        loss = (tf.reduce_mean(keras.losses.binary_crossentropy(labels["ctr"], outputs["ctr"]))
                + tf.reduce_mean(tf.square(outputs["watch"] - labels["watch"])))
    gradients = tape.gradient(loss, model.trainable_variables)
    expected = [v.numpy() - 0.1 * g.numpy() for v, g in zip(model.trainable_variables, gradients)]

    result = training.fit(build, dataset_fn, TASKS, optimizer=lambda: keras.optimizers.SGD(0.1), verbose=0, log=None)
    assert result.history["loss"][0] == pytest.approx(float(loss), rel=1e-5)
    for got, want in zip(result.model.trainable_variables, expected):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)


def test_keras_early_stopping_and_other_callbacks_work(tmp_path):
    features, labels = make_data()
    dataset_fn = training.in_memory_dataset_fn(features, labels, 64)
    seen = []
    csv_path = str(tmp_path / "log.csv")

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append((epoch, sorted(logs)))

    # An improvement of AUC by 1.0 never happens: Keras's EarlyStopping stops after the second epoch.
    stop = keras.callbacks.EarlyStopping(monitor="val_ctr_auc", mode="max", min_delta=1.0, patience=1)
    result = training.fit(model_fn(), dataset_fn, TASKS, validation_dataset_fn=dataset_fn, epochs=6,
                          callbacks=[stop, Record(), keras.callbacks.CSVLogger(csv_path)], verbose=0, log=None)
    assert result.stopped_early and result.epochs_done == 2 and result.global_step == 16
    assert [epoch for epoch, _ in seen] == [0, 1]
    assert seen[0][1] == sorted(["loss", "ctr_loss", "watch_loss", "val_loss", "val_ctr_loss", "val_ctr_auc",
                                 "val_watch_loss", "val_watch_rmse"])
    assert len(result.history["val_ctr_auc"]) == 2
    with open(csv_path) as f:
        rows = f.read().strip().splitlines()
    assert len(rows) == 3 and "val_ctr_auc" in rows[0]
    assert float(rows[2].split(",")[rows[0].split(",").index("val_ctr_auc")]) == pytest.approx(
        result.history["val_ctr_auc"][1], rel=1e-6)


@pytest.mark.parametrize("verbose", [1, 2])
def test_progress_output(capsys, verbose):
    features, labels = make_data(128)
    dataset_fn = training.in_memory_dataset_fn(features, labels, 64)
    lines = []
    result = training.fit(model_fn(), dataset_fn, TASKS, validation_dataset_fn=dataset_fn, epochs=2,
                          verbose=verbose, log=lines.append)
    out = capsys.readouterr().out
    assert lines[0] == "strategy none: 1 replica(s) in sync"
    assert "Epoch 1/2" in out and "Epoch 2/2" in out
    assert out.count("2/2") >= 2 and "val_ctr_auc" in out and "watch_loss" in out
    # The bar shows the epoch's mean loss as computed (not an average of running means).
    assert f"loss: {result.history['loss'][-1]:.4f}" in out


class Crash(keras.callbacks.Callback):
    """Raises at a given (epoch, batch): a run that dies mid-epoch."""

    def __init__(self, epoch, batch):
        super().__init__()
        self.at, self.epoch = (epoch, batch), None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            raise RuntimeError("killed")


def test_a_crashed_run_resumes_mid_epoch_and_ends_like_an_uninterrupted_run(tmp_path):
    features, labels = make_data()
    dataset_fn = training.in_memory_dataset_fn(features, labels, 64, shuffle=False)
    kwargs = dict(epochs=3, learning_rate=0.02, verbose=0)
    uninterrupted = training.fit(model_fn(), dataset_fn, TASKS, log=None, **kwargs)

    checkpoints = str(tmp_path / "checkpoints")
    with pytest.raises(RuntimeError, match="killed"):  # dies after step 8 + 6 = 14; last checkpoint at 12
        training.fit(model_fn(), dataset_fn, TASKS, checkpoint_dir=checkpoints, checkpoint_every_steps=3,
                     callbacks=[Crash(1, 5)], log=None, **kwargs)
    lines = []
    resumed = training.fit(model_fn(), dataset_fn, TASKS, checkpoint_dir=checkpoints, checkpoint_every_steps=3,
                           log=lines.append, **kwargs)
    assert resumed.resumed_from == os.path.join(checkpoints, "ckpt-12")
    assert (f"resuming from checkpoint {resumed.resumed_from}: epoch 2 of 3, 4 of its steps done, "
            "12 steps done in all") in lines
    assert resumed.global_step == uninterrupted.global_step == 24
    assert len(resumed.history["loss"]) == 2  # epochs 2 and 3
    # Same data order (no shuffling), weights, optimizer state and dropout counters: the same model.
    for got, want in zip(weights_of(resumed.model), weights_of(uninterrupted.model)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_resume_with_steps_per_epoch_and_a_completed_checkpoint(tmp_path):
    features, labels = make_data()
    dataset_fn = training.in_memory_dataset_fn(features, labels, 64)
    checkpoints = str(tmp_path / "checkpoints")
    first = training.fit(model_fn(), dataset_fn, TASKS, epochs=2, steps_per_epoch=5, checkpoint_dir=checkpoints,
                         verbose=0, log=None)
    assert first.global_step == 10
    lines = []
    again = training.fit(model_fn(), dataset_fn, TASKS, epochs=2, steps_per_epoch=5, checkpoint_dir=checkpoints,
                         verbose=0, log=lines.append)
    assert again.global_step == 10 and again.history == {}
    assert "the checkpoint has all 2 epochs done: nothing left to train" in lines
    more = training.fit(model_fn(), dataset_fn, TASKS, epochs=3, steps_per_epoch=5, checkpoint_dir=checkpoints,
                        verbose=0, log=None)
    assert more.global_step == 15 and len(more.history["loss"]) == 1


def test_save_and_export_writes_once_and_removes_checkpoints(tmp_path):
    features, labels = make_data(256)
    dataset_fn = training.in_memory_dataset_fn(features, labels, 64)
    checkpoints = str(tmp_path / "checkpoints")
    result = training.fit(model_fn(expert_dropout_rate=0.2), dataset_fn, TASKS, epochs=1,
                          checkpoint_dir=checkpoints, verbose=0, log=None)
    assert tf.train.latest_checkpoint(checkpoints) is not None
    keras_path, export_dir = str(tmp_path / "out" / "m.keras"), str(tmp_path / "out" / "m")
    version_dir = training.save_and_export(result, keras_path, export_dir)
    assert version_dir == os.path.join(export_dir, "1") and os.listdir(export_dir) == ["1"]
    assert tf.train.latest_checkpoint(checkpoints) is None and os.listdir(checkpoints) == []
    loaded = tf.saved_model.load(version_dir).signatures["serving_default"]
    served = loaded(features=tf.constant(features["features"][:5]))
    expected = result.model.predict({"features": features["features"][:5]}, verbose=0)
    for task in TASKS:
        np.testing.assert_allclose(served[task].numpy(), expected[task], rtol=1e-5, atol=1e-6)


def test_save_and_export_never_replaces_a_model_unasked_except_its_own_killed_attempt(tmp_path):
    features, labels = make_data(128)
    dataset_fn = training.in_memory_dataset_fn(features, labels, 64)
    keras_path, export_dir = str(tmp_path / "m.keras"), str(tmp_path / "m")
    checkpoints = str(tmp_path / "checkpoints")
    with open(keras_path, "w") as f:
        f.write("someone else's file")
    result = training.fit(model_fn(), dataset_fn, TASKS, checkpoint_dir=checkpoints, verbose=0, log=None)
    with pytest.raises(FileExistsError):
        training.save_and_export(result, keras_path, export_dir)
    assert open(keras_path).read() == "someone else's file" and not os.path.exists(export_dir)

    # A run killed after saving the .keras file but before exporting: the same command again
    # resumes with nothing left to train, replaces its own .keras file and exports.
    os.remove(keras_path)
    from keras_mmoe.saving import save_keras_model
    save_keras_model(result.model, keras_path)
    again = training.fit(model_fn(), dataset_fn, TASKS, checkpoint_dir=checkpoints, verbose=0, log=None)
    assert again.resumed_from is not None and again.steps_this_run == 0
    assert training.save_and_export(again, keras_path, export_dir) == os.path.join(export_dir, "1")


def test_non_chief_writes_nothing(tmp_path):
    features, labels = make_data(128)
    result = training.fit(model_fn(), training.in_memory_dataset_fn(features, labels, 64), TASKS, verbose=0, log=None)
    result.distribution = training.Distribution("multi-worker", result.distribution.strategy, task_type="worker",
                                                task_id=1, is_chief=False)
    assert training.save_and_export(result, str(tmp_path / "m.keras"), str(tmp_path / "m")) is None
    assert os.listdir(tmp_path) == []


def test_checkpoint_of_another_model_is_refused(tmp_path):
    features, labels = make_data(128)
    dataset_fn = training.in_memory_dataset_fn(features, labels, 64)
    checkpoints = str(tmp_path / "checkpoints")
    training.fit(model_fn(), dataset_fn, TASKS, checkpoint_dir=checkpoints, verbose=0, log=None)

    def other():
        return build_mmoe(8, TASKS, num_experts=5, expert_units=8, tower_units=(4,), seed=0)

    with pytest.raises(ValueError, match=r"checkpoint .*ckpt-2 does not match this model and optimizer"):
        training.fit(other, dataset_fn, TASKS, checkpoint_dir=checkpoints, verbose=0, log=None)


def test_shard_files():
    contexts = [tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=i, num_replicas_in_sync=2)
                for i in range(2)]
    files = [f"f{i}" for i in range(5)]
    assert [training.shard_files(files, c) for c in contexts] == [["f0", "f2", "f4"], ["f1", "f3"]]
    assert training.shard_files(["only"], contexts[1]) is None  # fewer files than pipelines: shard rows
    assert training.shard_files(files, tf.distribute.InputContext()) == files


def test_in_memory_dataset_fn_shards_rows_and_splits_the_global_batch():
    features, labels = make_data(100)
    dataset_fn = training.in_memory_dataset_fn(features, labels, 20, shuffle=False)
    context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1, num_replicas_in_sync=4)
    batches = list(dataset_fn(context))
    assert [len(b[0]["features"]) for b in batches] == [5] * 10
    np.testing.assert_array_equal(np.concatenate([b[0]["features"] for b in batches]), features["features"][1::2])
    with pytest.raises(ValueError, match="same number of rows"):
        training.in_memory_dataset_fn(features, {"ctr": labels["ctr"][:5]}, 20)
    with pytest.raises(ValueError, match="global_batch_size"):
        training.in_memory_dataset_fn(features, labels, 0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(strategy="bogus"), r"`strategy` must be one of .*received: strategy='bogus'"),
        (dict(strategy="none", devices=2), r"`devices` splits the CPU for strategy 'mirrored' only"),
        (dict(strategy="multi-worker", devices=2), r"`devices` splits the CPU for strategy 'mirrored' only"),
    ],
)
def test_make_distribution_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        training.make_distribution(**kwargs)


def test_devices_after_tensorflow_started_is_one_clear_error():
    tf.constant(1.0) + 1.0  # devices are initialized
    with pytest.raises(ValueError, match=r"`devices=3` must be set before TensorFlow initializes its devices"):
        training.make_distribution("mirrored", devices=3)


@pytest.mark.parametrize(
    "strategy, tf_config, message",
    [
        ("multi-worker", None, r"reads the cluster from the TF_CONFIG environment variable, which is not set"),
        ("multi-worker", "{not json", r"TF_CONFIG is not valid JSON"),
        ("multi-worker", {"cluster": {"worker": ["a:1"]}}, r"TF_CONFIG needs 'task'"),
        ("multi-worker", {"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}},
         r"task index 1 is out of range for job 'worker'"),
        ("multi-worker", {"cluster": {"worker": ["a:1"], "ps": ["b:1"]}, "task": {"type": "worker", "index": 0}},
         r"'multi-worker' needs TF_CONFIG cluster jobs 'worker'.*received jobs \['ps', 'worker'\]"),
        ("parameter-server", {"cluster": {"worker": ["a:1"], "chief": ["c:1"]}, "task": {"type": "chief", "index": 0}},
         r"'parameter-server' needs TF_CONFIG cluster jobs 'chief', 'worker' and 'ps'"),
        ("parameter-server", {"cluster": {"worker": "a:1"}, "task": {"type": "worker", "index": 0}},
         r"cluster job 'worker' must be a non-empty list"),
        ("parameter-server", {"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}},
         r"task type 'chief' is not a job of the cluster"),
    ],
)
def test_tf_config_errors(monkeypatch, strategy, tf_config, message):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config if isinstance(tf_config, str) else json.dumps(tf_config))
    with pytest.raises(ValueError, match=message):
        training.make_distribution(strategy)


def test_fit_argument_errors(tmp_path):
    features, labels = make_data(64)
    dataset_fn = training.in_memory_dataset_fn(features, labels, 32)
    fit = training.fit
    with pytest.raises(ValueError, match=r"`epochs` must be an integer >= 1, received: epochs=0"):
        fit(model_fn(), dataset_fn, TASKS, epochs=0)
    with pytest.raises(ValueError, match=r"`loss_weights` names unknown tasks \['cvr'\]"):
        fit(model_fn(), dataset_fn, TASKS, loss_weights={"cvr": 1.0})
    with pytest.raises(ValueError, match=r"`optimizer` 'adamm' is not a Keras optimizer name"):
        fit(model_fn(), dataset_fn, TASKS, optimizer="adamm", log=None)
    with pytest.raises(ValueError, match=r"`checkpoint_every_steps` needs `checkpoint_dir`"):
        fit(model_fn(), dataset_fn, TASKS, checkpoint_every_steps=5)
    with pytest.raises(ValueError, match=r"the model has no output for task\(s\) \['cvr'\]"):
        fit(model_fn(), dataset_fn, {**TASKS, "cvr": "binary"}, log=None)
    with pytest.raises(ValueError, match=r"the dataset's labels have no entry for task\(s\) \['watch'\]"):
        fit(model_fn(), training.in_memory_dataset_fn(features, {"ctr": labels["ctr"]}, 32), TASKS, log=None)
    with pytest.raises(ValueError, match=r"the dataset must yield \(features dict, labels dict\) pairs"):
        fit(model_fn(), lambda context: tf.data.Dataset.from_tensor_slices(features).batch(8), TASKS, log=None)
    parameter_server = training.Distribution("parameter-server", tf.distribute.get_strategy(), coordinator=object())
    with pytest.raises(ValueError, match=r"parameter-server training needs `steps_per_epoch`"):
        fit(model_fn(), dataset_fn, TASKS, distribution=parameter_server)


def test_mixed_precision_bfloat16_trains_float16_is_refused():
    features, labels = make_data(256)
    dataset_fn = training.in_memory_dataset_fn(features, labels, 64)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    result = training.fit(model_fn(), dataset_fn, TASKS, epochs=3, learning_rate=0.02, verbose=0, log=None)
    assert np.all(np.isfinite(result.history["loss"])) and result.history["loss"][-1] < result.history["loss"][0]
    keras.mixed_precision.set_global_policy("mixed_float16")
    with pytest.raises(ValueError, match=r"mixed_float16 needs.*'mixed_bfloat16'"):
        training.fit(model_fn(), dataset_fn, TASKS, log=None)
