"""keras_mmoe.training across devices and processes: mirrored on 2 logical CPUs, multi-worker with 2
local workers (one killed and restarted), parameter-server with a chief, 2 workers and a ps.

Run as a script, this file is the training program the tests start in fresh processes: CSV shards
-> feature encoder (StringLookup inside the model) -> MMoE, trained by ``training.fit`` and saved
and exported by the chief. The CSV data is this module's own (``write_data``).
"""

import argparse
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

NUMERIC = ["x0", "x1", "x2", "x3"]
CATEGORIES = {"a": 1.0, "b": -1.0, "c": 0.5, "d": -0.5}
TASKS = {"click": "binary", "value": "regression"}
HEADER = ",".join([*NUMERIC, "cat", "click", "value"])
TRAIN_ROWS_PER_FILE = 256
TRAIN_FILES = 4
BATCH_SIZE = 64
STEPS_PER_EPOCH = TRAIN_FILES * TRAIN_ROWS_PER_FILE // BATCH_SIZE  # 16


# ---------------------------------------------------------------------------------------------------
# The training program (also run in-process by the tests as the uninterrupted reference)
# ---------------------------------------------------------------------------------------------------

def write_data(directory, seed=0):
    """4 training CSV files of 256 rows and one validation file of 512 rows: 4 numbers, a category,
    a click drawn from a logistic model and a value linear in the inputs."""
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)

    def rows(n):
        x = rng.normal(size=(n, len(NUMERIC)))
        cat = rng.choice(list(CATEGORIES), size=n)
        effect = np.array([CATEGORIES[c] for c in cat])
        logit = 2.0 * (x[:, 0] + 0.5 * x[:, 1] + effect)
        click = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(int)
        value = x[:, 2] + 0.5 * x[:, 0] + effect + 0.1 * rng.normal(size=n)
        return [",".join([*(f"{v:.5f}" for v in x[i]), cat[i], str(click[i]), f"{value[i]:.5f}"]) for i in range(n)]

    for i in range(TRAIN_FILES):
        with open(os.path.join(directory, f"train-{i}.csv"), "w") as f:
            f.write("\n".join([HEADER, *rows(TRAIN_ROWS_PER_FILE)]) + "\n")
    with open(os.path.join(directory, "valid.csv"), "w") as f:
        f.write("\n".join([HEADER, *rows(512)]) + "\n")
    return directory


def read_csv(path):
    """``(features dict, labels dict)`` of NumPy arrays of a data file (for scoring)."""
    data = np.genfromtxt(path, delimiter=",", names=True, dtype=None, encoding="utf-8")
    features = {name: data[name].astype("float32")[:, None] for name in NUMERIC}
    features["cat"] = data["cat"].astype(str)[:, None]
    return features, {"click": data["click"].astype("float32"), "value": data["value"].astype("float32")}


def parser():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--strategy", default="none")
    p.add_argument("--devices", type=int, default=None)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--steps-per-epoch", type=int, default=None)
    p.add_argument("--checkpoint-dir", default=None)
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--sleep", type=float, default=0.0, help="seconds to sleep after each step (to be killed mid-run)")
    return p


def run(args):
    """Trains; returns the RESULT dict (also printed as one ``RESULT {json}`` line)."""
    from keras_mmoe import training

    distribution = training.make_distribution(args.strategy, devices=args.devices, log=print)

    import tensorflow as tf

    from keras_mmoe._keras import keras
    from keras_mmoe.features import build_feature_encoder
    from keras_mmoe.models import build_mmoe

    defaults = [[0.0]] * len(NUMERIC) + [[""], [0.0], [0.0]]

    def parse(lines):
        columns = tf.io.decode_csv(lines, defaults)
        features = {name: columns[i][:, None] for i, name in enumerate(NUMERIC)}
        features["cat"] = columns[len(NUMERIC)][:, None]
        return features, {"click": columns[-2][:, None], "value": columns[-1][:, None]}

    def dataset_fn_for(files, shuffle):
        def dataset_fn(input_context):
            mine = training.shard_files(files, input_context)
            dataset = tf.data.Dataset.from_tensor_slices(mine if mine is not None else files)
            dataset = dataset.flat_map(lambda f: tf.data.TextLineDataset(f).skip(1))
            if mine is None:
                dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
            if shuffle:
                dataset = dataset.shuffle(1024, seed=1)
            return dataset.batch(input_context.get_per_replica_batch_size(BATCH_SIZE)).map(parse)
        return dataset_fn

    def model_fn():
        keras.utils.set_random_seed(0)
        adapt = {name: [-1.0, 1.0] for name in NUMERIC}
        adapt["cat"] = list(CATEGORIES)
        inputs, encoded = build_feature_encoder(continuous=NUMERIC, nominal=["cat"], adapt_data=adapt)
        return build_mmoe(inputs, TASKS, features=encoded, num_experts=4, expert_units=8, tower_units=(4,), seed=0)

    class Sleep(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            time.sleep(args.sleep)

    train_files = sorted(glob.glob(os.path.join(args.data, "train-*.csv")))
    result = training.fit(
        model_fn, dataset_fn_for(train_files, True), TASKS, distribution=distribution,
        validation_dataset_fn=dataset_fn_for([os.path.join(args.data, "valid.csv")], False),
        epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, learning_rate=0.02,
        checkpoint_dir=args.checkpoint_dir, checkpoint_every_steps=args.checkpoint_every,
        callbacks=[Sleep()] if args.sleep else [], verbose=2,
    )
    version_dir = training.save_and_export(result, os.path.join(args.out, "model.keras"), os.path.join(args.out, "export"))
    summary = {
        "global_step": result.global_step, "epochs_done": result.epochs_done, "resumed_from": result.resumed_from,
        "is_chief": distribution.is_chief, "version_dir": version_dir,
        "history": {k: [float(v) for v in values] for k, values in result.history.items()},
    }
    print("RESULT " + json.dumps(summary), flush=True)
    return summary


# ---------------------------------------------------------------------------------------------------
# Helpers of the tests
# ---------------------------------------------------------------------------------------------------

def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start(args, log_path, tf_config=None):
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    log = open(log_path, "w")
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), *args], env=env, stdout=log, stderr=subprocess.STDOUT)


def finish(process, log_path, timeout=420):
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    with open(log_path) as f:
        text = f.read()
    assert process.returncode == 0, f"{log_path} exited with {process.returncode}:\n{text[-5000:]}"
    return text


def result_of(text):
    lines = [line for line in text.splitlines() if line.startswith("RESULT ")]
    assert lines, text[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def score(keras_path, data_dir):
    """``(AUC of click, RMSE of value)`` of a saved model on the validation file (NumPy reference)."""
    from keras_mmoe._keras import keras
    from keras_mmoe.metrics import roc_auc

    import tensorflow as tf

    features, labels = read_csv(os.path.join(data_dir, "valid.csv"))
    model = keras.models.load_model(keras_path)
    predictions = {k: v.numpy() for k, v in model({k: tf.constant(v) for k, v in features.items()}, training=False).items()}
    auc = roc_auc(labels["click"], np.ravel(predictions["click"]))
    rmse = float(np.sqrt(np.mean((np.ravel(predictions["value"]) - labels["value"]) ** 2)))
    return auc, rmse


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_data(str(tmp_path_factory.mktemp("data")))


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    """The uninterrupted run in this process (no strategy, same global batch): its score."""
    out = str(tmp_path_factory.mktemp("reference"))
    summary = run(parser().parse_args(["--data", data_dir, "--out", out, "--epochs", "3"]))
    assert summary["global_step"] == 3 * STEPS_PER_EPOCH
    return score(os.path.join(out, "model.keras"), data_dir)


# ---------------------------------------------------------------------------------------------------
# Mirrored: 2 logical CPU devices in one process
# ---------------------------------------------------------------------------------------------------

MIRRORED_PROGRAM = r"""
import json
import sys
import numpy as np
from keras_mmoe import training
two = training.make_distribution("mirrored", devices=2)
one = training.make_distribution("none")
import tensorflow as tf
from keras_mmoe import ExpertDropoutGate
from keras_mmoe._keras import keras
from keras_mmoe.models import build_mmoe

rng = np.random.default_rng(0)
x = rng.normal(size=(512, 8)).astype("float32")
labels = {"ctr": (x[:, :1] + x[:, 1:2] > 0).astype("float32"), "watch": (x[:, 2:3] - x[:, :1]).astype("float32")}
tasks = {"ctr": "binary", "watch": "regression"}
dataset_fn = training.in_memory_dataset_fn({"features": x}, labels, global_batch_size=64, shuffle=False)
keras.utils.set_random_seed(0)
initial = build_mmoe(8, tasks, num_experts=3, expert_units=8, tower_units=(4,), seed=0).get_weights()

def train(distribution):
    def model_fn():
        model = build_mmoe(8, tasks, num_experts=3, expert_units=8, tower_units=(4,), seed=0)
        model.set_weights(initial)
        return model
    result = training.fit(model_fn, dataset_fn, tasks, distribution=distribution, validation_dataset_fn=dataset_fn,
                          epochs=2, learning_rate=0.01, verbose=0, log=None)
    return result, result.model.get_weights()

r2, w2 = train(two)
r1, w1 = train(one)
out = {"replicas": [two.num_replicas, one.num_replicas], "steps": [r2.global_step, r1.global_step],
       "max_weight_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(w2, w1)),
       "max_weight": max(float(np.max(np.abs(a))) for a in w1),
       "history2": r2.history, "history1": r1.history}

# Expert dropout under 2 replicas: the same input on both replicas draws different masks, and a
# gate with the same seed draws the same masks again.
def masks(seed):
    with two.scope():
        gate = ExpertDropoutGate(8, rate=0.5, seed=seed)
        gate.build((None, 4))
    step = tf.function(lambda: two.strategy.run(lambda: gate(tf.ones((16, 4)), training=True)))
    return [[r.numpy() > 0 for r in two.strategy.experimental_local_results(step())] for _ in range(2)]

first, again, other = masks(3), masks(3), masks(4)
out["replicas_differ"] = all(not np.array_equal(a, b) for a, b in first)
out["steps_differ"] = not np.array_equal(first[0][0], first[1][0])
out["reproducible"] = all(np.array_equal(a, b) for s, t in zip(first, again) for a, b in zip(s, t))
out["seed_matters"] = not all(np.array_equal(a, b) for s, t in zip(first, other) for a, b in zip(s, t))
print("OUT " + json.dumps(out), flush=True)

# The CSV program of the other tests (string features looked up inside the model) on 2 replicas.
sys.path.insert(0, sys.argv[1])
import test_distributed
test_distributed.run(test_distributed.parser().parse_args(sys.argv[2:]))
"""


def test_mirrored_on_two_logical_devices(data_dir, reference, tmp_path):
    out_dir = str(tmp_path / "out")
    log = str(tmp_path / "mirrored.log")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    with open(log, "w") as f:
        process = subprocess.Popen(
            [sys.executable, "-c", MIRRORED_PROGRAM, os.path.dirname(os.path.abspath(__file__)),
             "--strategy", "mirrored", "--devices", "2", "--data", data_dir, "--out", out_dir],
            env=env, stdout=f, stderr=subprocess.STDOUT,
        )
    text = finish(process, log)
    out = json.loads([line for line in text.splitlines() if line.startswith("OUT ")][-1][4:])

    # A 2-replica run (2 x 32 rows) equals a 1-replica run (1 x 64 rows) within float tolerance.
    assert out["replicas"] == [2, 1] and out["steps"] == [16, 16]
    assert out["max_weight_diff"] < 1e-4 * max(1.0, out["max_weight"]), out
    for key, values in out["history1"].items():
        np.testing.assert_allclose(out["history2"][key], values, rtol=1e-4, atol=1e-5, err_msg=key)
    # Expert dropout: each replica draws its own masks, reproducibly from the seed.
    assert out["replicas_differ"] and out["steps_differ"] and out["reproducible"] and out["seed_matters"], out

    # String features inside the model (where Keras 3's model.fit fails under MirroredStrategy).
    summary = result_of(text)
    assert "strategy mirrored: 2 replica(s) in sync" in text
    assert summary["global_step"] == 3 * STEPS_PER_EPOCH
    assert os.listdir(os.path.join(out_dir, "export")) == ["1"]
    auc, rmse = score(os.path.join(out_dir, "model.keras"), data_dir)
    ref_auc, ref_rmse = reference
    assert abs(auc - ref_auc) < 0.03 and rmse < 1.2 * ref_rmse, (auc, rmse, reference)


# ---------------------------------------------------------------------------------------------------
# Multi-worker: 2 workers on 127.0.0.1; one is killed mid-training and both are started again
# ---------------------------------------------------------------------------------------------------

def _checkpoint_step(checkpoint_dir):
    state = os.path.join(checkpoint_dir, "checkpoint")
    if not os.path.exists(state):
        return 0
    with open(state) as f:
        first = f.readline()
    return int(first.rsplit("-", 1)[-1].strip().strip('"')) if "ckpt-" in first else 0


def test_multi_worker_resumes_after_a_worker_is_killed(data_dir, reference, tmp_path):
    epochs = 3
    out, checkpoints = str(tmp_path / "out"), str(tmp_path / "checkpoints")
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    command = ["--strategy", "multi-worker", "--data", data_dir, "--out", out, "--epochs", str(epochs),
               "--checkpoint-dir", checkpoints, "--checkpoint-every", "4", "--sleep", "0.05"]

    def launch(attempt):
        logs = [str(tmp_path / f"worker{i}-{attempt}.log") for i in range(2)]
        procs = [start(command, logs[i], {"cluster": cluster, "task": {"type": "worker", "index": i}}) for i in range(2)]
        return procs, logs

    procs, logs = launch(1)
    deadline = time.time() + 300
    while _checkpoint_step(checkpoints) < 8 and time.time() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.1)
    killed_at = _checkpoint_step(checkpoints)
    procs[1].send_signal(signal.SIGKILL)  # worker 1 dies mid-training
    procs[1].wait()
    assert 8 <= killed_at < epochs * STEPS_PER_EPOCH, (killed_at, open(logs[0]).read()[-3000:])
    procs[0].send_signal(signal.SIGKILL)  # the cluster manager restarts the whole job
    procs[0].wait()
    assert not os.path.exists(os.path.join(out, "export")) or not os.listdir(os.path.join(out, "export"))
    assert not os.path.exists(os.path.join(out, "model.keras"))

    procs, logs = launch(2)  # the same command again
    texts = [finish(p, log) for p, log in zip(procs, logs)]
    summaries = [result_of(t) for t in texts]
    for text, summary in zip(texts, summaries):
        assert "resuming from checkpoint" in text and summary["resumed_from"].endswith(f"ckpt-{_ckpt(summary)}")
        assert summary["global_step"] == epochs * STEPS_PER_EPOCH
        assert summary["epochs_done"] == epochs
    assert [s["is_chief"] for s in summaries] == [True, False]
    assert summaries[0]["version_dir"] == os.path.join(out, "export", "1") and summaries[1]["version_dir"] is None
    assert os.listdir(os.path.join(out, "export")) == ["1"]
    assert not os.path.exists(os.path.join(checkpoints, "checkpoint"))  # removed once the model is saved
    auc, rmse = score(os.path.join(out, "model.keras"), data_dir)
    ref_auc, ref_rmse = reference
    assert abs(auc - ref_auc) < 0.03 and rmse < 1.2 * ref_rmse, (auc, rmse, reference)


def _ckpt(summary):
    return summary["resumed_from"].rsplit("-", 1)[-1]


# ---------------------------------------------------------------------------------------------------
# Parameter server: chief, 2 workers and 1 ps as local processes
# ---------------------------------------------------------------------------------------------------

def test_parameter_server_cluster_trains_and_exports(data_dir, reference, tmp_path):
    out = str(tmp_path / "out")
    ports = free_ports(4)
    cluster = {
        "chief": [f"127.0.0.1:{ports[0]}"],
        "worker": [f"127.0.0.1:{ports[1]}", f"127.0.0.1:{ports[2]}"],
        "ps": [f"127.0.0.1:{ports[3]}"],
    }
    command = ["--strategy", "parameter-server", "--data", data_dir, "--out", out, "--epochs", "3",
               "--steps-per-epoch", str(STEPS_PER_EPOCH)]
    servers = []
    try:
        for task_type, index in (("ps", 0), ("worker", 0), ("worker", 1)):
            log = str(tmp_path / f"{task_type}{index}.log")
            servers.append((start(command, log, {"cluster": cluster, "task": {"type": task_type, "index": index}}), log))
        chief_log = str(tmp_path / "chief.log")
        text = finish(start(command, chief_log, {"cluster": cluster, "task": {"type": "chief", "index": 0}}), chief_log)
    finally:
        for process, _ in servers:
            process.kill()
            process.wait()
    summary = result_of(text)
    assert summary["global_step"] == 3 * STEPS_PER_EPOCH and summary["is_chief"]
    assert os.listdir(os.path.join(out, "export")) == ["1"]
    for process, log in servers:
        with open(log) as f:
            assert "serving until it is stopped" in f.read()
    auc, rmse = score(os.path.join(out, "model.keras"), data_dir)
    ref_auc, ref_rmse = reference
    # Asynchronous updates: a looser tolerance than the synchronous strategies.
    assert abs(auc - ref_auc) < 0.05 and rmse < 1.5 * ref_rmse, (auc, rmse, reference)


if __name__ == "__main__":
    run(parser().parse_args())
