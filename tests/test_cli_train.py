"""The main job, `keras-mmoe train`, end to end in a subprocess, and the CLI's error handling."""

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT, run_python


def keras_mmoe_cli(*args, cwd=None, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "keras_mmoe.cli.main", *args],
        capture_output=True, text=True, cwd=cwd or REPO_ROOT, timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout}\nSTDERR:\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    proc = keras_mmoe_cli("train", "--epochs", "2", "--samples", "3000", "--out-dir", str(out), "--seed", "1")
    return out, proc


def test_train_reports_progress_and_metrics(trained):
    _, proc = trained
    assert "epoch 1/2" in proc.stdout.lower() or "Epoch 1/2" in proc.stdout
    assert "label correlation measured" in proc.stderr
    assert "test y1: mse" in proc.stderr and "test y2: mse" in proc.stderr


def test_train_saves_keras_model_and_exports_a_version(trained, rng):
    out, proc = trained
    keras_path = out / "mmoe_synthetic.keras"
    version_dir = out / "mmoe_synthetic" / "1"
    assert keras_path.is_file()
    assert (version_dir / "saved_model.pb").is_file() and (version_dir / "variables").is_dir()
    assert proc.stdout.strip().splitlines()[-1] == str(version_dir)

    # The .keras file loads with the package (no custom_objects) ...
    from keras_mmoe._keras import keras
    model = keras.models.load_model(str(keras_path))
    x = rng.normal(size=(5, 100)).astype("float32")
    expected = model.predict({"features": x}, verbose=0)
    np.save(out / "x.npy", x)
    # ... and the export answers the same in a process that never imports keras_mmoe.
    result = run_python(f"""
        import sys, numpy as np, tensorflow as tf
        loaded = tf.saved_model.load({str(version_dir)!r})
        fn = loaded.signatures["serving_default"]
        out = fn(features=tf.constant(np.load({str(out / 'x.npy')!r})))
        np.savez({str(out / 'served.npz')!r}, **{{k: v.numpy() for k, v in out.items()}})
        assert "keras_mmoe" not in sys.modules
    """)
    served = np.load(out / "served.npz")
    for task in ("y1", "y2"):
        np.testing.assert_allclose(served[task], expected[task], rtol=1e-5, atol=1e-5)


def test_second_train_exports_next_version(trained):
    out, _ = trained
    proc = keras_mmoe_cli("train", "--epochs", "1", "--samples", "500", "--out-dir", str(out), "--model", "omoe",
                          "--name", "mmoe_synthetic")
    assert proc.stdout.strip().splitlines()[-1] == str(out / "mmoe_synthetic" / "2")
    assert (out / "mmoe_synthetic" / "1" / "saved_model.pb").is_file()  # version 1 untouched


@pytest.mark.parametrize(
    "args,message",
    [
        (["train", "--epochs", "0"], "--epochs must be >= 1, received 0"),
        (["train", "--correlation", "2"], "--correlation must be in [-1, 1], received 2.0"),
        (["train", "--model", "nope"], "invalid choice: 'nope'"),
    ],
)
def test_user_mistakes_end_in_one_line_and_nonzero_exit(args, message):
    proc = keras_mmoe_cli(*args, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_lists_train():
    proc = keras_mmoe_cli("--help")
    assert "train" in proc.stdout
