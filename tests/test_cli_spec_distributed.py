"""`keras-mmoe train --spec --strategy ...` in fresh processes: mirrored on 2 logical CPU devices (equal to one
replica with the same global batch), multi-worker with 2 local workers (only the chief writes), and a
parameter-server cluster (chief, worker, ps) whose steps per epoch come from the statistics pass.

Small data (4 CSV files of 100 rows), one or two epochs; runs under Keras 3 and tf-keras.
"""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from spec_data import SPEC, make_table, write_shards
from test_cli_spec import cli, write_spec
from test_distributed import free_ports

FILES = 4


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("spec_dist")
    write_shards(str(directory), make_table(400, seed=6), FILES)
    write_spec(directory, SPEC)
    return directory


def launch(argv, cwd, log_prefix, tf_config=None):
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    out, err = open(f"{log_prefix}.out", "w"), open(f"{log_prefix}.err", "w")
    return subprocess.Popen([sys.executable, "-m", "keras_mmoe.cli.main", *map(str, argv)], cwd=str(cwd), env=env,
                            stdout=out, stderr=err)


def finish(process, log_prefix, timeout=600):
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    with open(f"{log_prefix}.out") as f:
        out = f.read()
    with open(f"{log_prefix}.err") as f:
        err = f.read()
    assert process.returncode == 0, f"{log_prefix} exited with {process.returncode}:\n{err[-5000:]}"
    return out, err


def test_mirrored_on_two_devices_equals_one_replica_and_checkpoints_are_removed(data_dir, tmp_path):
    from keras_mmoe import saving

    out, checkpoints = tmp_path / "out", tmp_path / "ckpt"
    argv = ["train", "--spec", "spec.toml", "--out-dir", out, "--epochs", "2", "--strategy", "mirrored",
            "--devices", "2", "--checkpoint-dir", checkpoints]
    stdout, stderr = finish(launch(argv, data_dir, tmp_path / "mirrored"), tmp_path / "mirrored")
    assert "strategy mirrored: 2 replica(s) in sync on " in stderr and "training from the start" in stderr
    assert stdout.strip() == str(out / "model" / "1")
    record = saving.read_record(out / "model.json")
    assert saving.read_metadata(out / "model" / "1") == {k: v for k, v in record.items() if k != "export_version"}
    training = record["training"]
    rows = record["statistics"]["rows"]
    # The spec's batch_size (64) is the global batch: 32 rows per replica, one step per 64 rows.
    assert (training["strategy"], training["replicas"], training["batch_size"]) == ("mirrored", 2, 64)
    assert training["steps"] == 2 * math.ceil(rows / 64)
    assert os.listdir(checkpoints) == []  # removed once the model is saved and exported
    model = saving.load_keras_model(out / "model.keras")
    assert sorted(model.output) == ["click", "watch"]

    # One replica with the same global batch (the loop, in this process): the same model, within float tolerance.
    code, _, err = cli("train", "--spec", data_dir / "spec.toml", "--out-dir", tmp_path / "one", "--epochs", "2",
                       "--strategy", "none")
    assert code == 0, err
    one = saving.read_record(tmp_path / "one" / "model.json")
    assert one["training"]["steps"] == training["steps"]
    for task, metric in (("click", "auc"), ("watch", "rmse")):
        assert record["validation_metrics"][task][metric] == pytest.approx(
            one["validation_metrics"][task][metric], rel=2e-3), task
    reference = saving.load_keras_model(tmp_path / "one" / "model.keras")
    for a, b in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


def test_multi_worker_two_workers_only_the_chief_writes(data_dir, tmp_path):
    from keras_mmoe import saving

    out = tmp_path / "out"
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    argv = ["train", "--spec", "spec.toml", "--out-dir", out, "--epochs", "1", "--strategy", "multi-worker"]
    procs = [launch(argv, data_dir, tmp_path / f"worker{i}", {"cluster": cluster, "task": {"type": "worker", "index": i}})
             for i in range(2)]
    (out0, err0), (out1, err1) = [finish(p, tmp_path / f"worker{i}") for i, p in enumerate(procs)]
    assert "this process is worker 0 (chief)" in err0 and "this process is worker 1" in err1
    assert out0.strip() == str(out / "model" / "1") and out1 == ""
    assert "worker 1 done; the chief saves and exports" in err1
    epoch0 = [line for line in err0.splitlines() if "epoch 1/1" in line]
    epoch1 = [line for line in err1.splitlines() if "epoch 1/1" in line]
    assert epoch0 == epoch1 and "validation: click AUC " in epoch0[0]  # the same synchronous model on both
    assert sorted(os.listdir(out)) == ["model", "model.json", "model.keras"] and os.listdir(out / "model") == ["1"]
    record = saving.read_record(out / "model.json")
    assert (record["training"]["strategy"], record["training"]["replicas"]) == ("multi-worker", 2)


def test_parameter_server_steps_per_epoch_come_from_the_statistics_pass(data_dir, tmp_path):
    from keras_mmoe import saving

    out = tmp_path / "out"
    ports = free_ports(3)
    cluster = {"chief": [f"127.0.0.1:{ports[0]}"], "worker": [f"127.0.0.1:{ports[1]}"],
               "ps": [f"127.0.0.1:{ports[2]}"]}
    argv = ["train", "--spec", "spec.toml", "--out-dir", out, "--epochs", "1", "--strategy", "parameter-server"]
    servers = [launch(argv, data_dir, tmp_path / task, {"cluster": cluster, "task": {"type": task, "index": 0}})
               for task in ("ps", "worker")]
    try:
        chief = launch(argv, data_dir, tmp_path / "chief", {"cluster": cluster, "task": {"type": "chief", "index": 0}})
        stdout, stderr = finish(chief, tmp_path / "chief")
    finally:
        for process in servers:
            process.kill()
            process.wait()
    record = saving.read_record(out / "model.json")
    steps = math.ceil(record["statistics"]["rows"] / SPEC["train"]["batch_size"])
    assert f"parameter-server training: {steps} steps an epoch ({record['statistics']['rows']} train rows" in stderr
    assert record["training"]["steps"] == steps and record["training"]["strategy"] == "parameter-server"
    assert stdout.strip() == str(out / "model" / "1") and (out / "model" / "1" / "saved_model.pb").is_file()
    for task in ("ps", "worker"):
        with open(tmp_path / f"{task}.err") as f:
            assert "serving until it is stopped" in f.read()
