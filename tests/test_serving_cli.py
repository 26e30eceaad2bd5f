"""``keras-mmoe export`` and ``keras-mmoe inspect`` (run in-process through the CLI's main)."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from keras_mmoe._keras import keras
from keras_mmoe.cli.main import main
from keras_mmoe.models import build_mmoe

TASKS = {"click": "binary", "stay": "regression"}


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory):
    keras.utils.set_random_seed(4)
    model = build_mmoe(5, TASKS, num_experts=3, expert_units=4, tower_units=(3,), expert_dropout_rate=0.2, seed=4)
    path = str(tmp_path_factory.mktemp("cli") / "mmoe.keras")
    model.save(path)
    return path, model


def run_cli(capsys, *argv):
    """Exit code, stdout, and stderr without the ``[keras-mmoe]`` progress lines."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    err = "".join(line for line in err.splitlines(keepends=True) if not line.startswith("[keras-mmoe] "))
    return code, out, err


def test_export_then_inspect(tmp_path, capsys, keras_file):
    path, model = keras_file
    base = str(tmp_path / "saved_models" / "mmoe")
    code, out, err = run_cli(capsys, "export", path, "--to", base, "--include-gate-weights")
    assert code == 0, err
    assert out.strip() == os.path.join(os.path.abspath(base), "1")
    x = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
    served = tf.saved_model.load(out.strip()).signatures["serving_default"](features=tf.constant(x))
    expected = model({"features": x}, training=False)
    assert sorted(served) == ["click", "click_gate_weights", "stay", "stay_gate_weights"]
    for task in TASKS:
        np.testing.assert_allclose(served[task].numpy(), np.asarray(expected[task]), atol=1e-5, rtol=0)

    code, out, err = run_cli(capsys, "inspect", os.path.join(base, "1"))
    assert code == 0, err
    for text in ("signature 'serving_default' (method tensorflow/serving/predict)",
                 "signature 'predict_examples' (method tensorflow/serving/predict)",
                 "features: float32 (-1, 5)", "examples: string (-1,)", "click: float32 (-1, 1)",
                 "click_gate_weights: float32 (-1, 3)", "stay: float32 (-1, 1)",
                 "op check: OK:", "warmup records: none"):
        assert text in out, text

    code, out, err = run_cli(capsys, "export", path, "--to", base, "--no-examples-signature")
    assert code == 0 and out.strip().endswith(os.path.join("mmoe", "2")), err
    code, out, err = run_cli(capsys, "inspect", base, "--json")  # base dir: the highest version
    report = json.loads(out)
    assert code == 0 and report["path"].endswith(os.path.join("mmoe", "2"))
    assert sorted(report["signatures"]) == ["serving_default"] and report["op_check"]["ok"] is True
    assert report["signatures"]["serving_default"]["inputs"]["features"]["shape"] == [None, 5]


def test_export_errors_are_one_line_and_change_nothing(tmp_path, capsys, keras_file):
    path, _ = keras_file
    base = str(tmp_path / "m")
    assert run_cli(capsys, "export", path, "--to", base, "--version", "4")[0] == 0
    before = sorted(os.listdir(base)), os.path.getmtime(os.path.join(base, "4", "saved_model.pb"))
    code, out, err = run_cli(capsys, "export", path, "--to", base, "--version", "4")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("keras-mmoe export: error: ") and "already exists" in err
    assert (sorted(os.listdir(base)), os.path.getmtime(os.path.join(base, "4", "saved_model.pb"))) == before
    code, out, err = run_cli(capsys, "export", str(tmp_path / "missing.keras"), "--to", base)
    assert code == 2 and err.count("\n") == 1 and "model file not found" in err
    with pytest.raises(SystemExit) as exit_info:
        run_cli(capsys, "export", path, "--to", base, "--version", "0")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "argument --version: must be a positive integer, received 0" in err
    not_a_model = tmp_path / "notes.keras"
    not_a_model.write_text("not a zip")
    code, out, err = run_cli(capsys, "export", str(not_a_model), "--to", base)
    assert code == 2 and err.count("\n") == 1
    assert f"{not_a_model} is not a valid Keras file: a .keras file is a zip archive, this file is not one" in err
    code, out, err = run_cli(capsys, "export", os.path.join(base, "4"), "--to", base)
    assert code == 2 and "is already an exported SavedModel" in err
    assert sorted(os.listdir(base)) == ["4"]


def test_export_stores_the_models_training_record_in_the_version(tmp_path, capsys, keras_file):
    """The record beside <name>.keras travels into the version's assets.extra/, so evaluate can
    score the version on the rows the model held out."""
    from keras_mmoe.serving import read_metadata

    path, _ = keras_file
    model = tmp_path / "copy.keras"
    model.write_bytes(open(path, "rb").read())
    record = {"data": {"source": "synthetic", "samples": 100, "dim": 5, "correlation": 0.5, "seed": 1}}
    (tmp_path / "copy.json").write_text(json.dumps(record))
    code, out, err = run_cli(capsys, "export", str(model), "--to", str(tmp_path / "m"))
    assert code == 0 and read_metadata(out.strip()) == record
    (tmp_path / "bad.json").write_text("{")
    code, out, err = run_cli(capsys, "export", str(model), "--to", str(tmp_path / "m"), "--record",
                             str(tmp_path / "bad.json"))
    assert code == 2 and f"{tmp_path / 'bad.json'} is not a training record: not JSON" in err
    assert sorted(os.listdir(tmp_path / "m")) == ["1"]


def test_inspect_errors_and_a_failing_op_check(tmp_path, capsys):
    code, _, err = run_cli(capsys, "inspect", str(tmp_path / "nothing"))
    assert code == 2 and "no such directory" in err and err.count("\n") == 1
    code, _, err = run_cli(capsys, "inspect", str(tmp_path))
    assert code == 2 and "no numeric version directory" in err
    module = tf.Module()
    module.f = tf.function(lambda x: tf.numpy_function(lambda a: a, [x], tf.float32),
                           input_signature=[tf.TensorSpec([None], tf.float32)])
    tf.saved_model.save(module, str(tmp_path / "1"), signatures={"serving_default": module.f})
    code, out, _ = run_cli(capsys, "inspect", str(tmp_path / "1"))
    assert code == 1 and "op check: FAILED" in out and "PyFunc" in out


def test_inspect_on_a_corrupt_saved_model_is_one_line(tmp_path, capsys):
    """Before: a traceback and exit 1 (read as "op check failed")."""
    version = tmp_path / "m" / "1"
    version.mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(np.random.default_rng(0).bytes(600))
    for target in (version, tmp_path / "m"):
        code, out, err = run_cli(capsys, "inspect", str(target))
        assert code == 2 and out == "" and err.count("\n") == 1, err
        assert f"{version / 'saved_model.pb'} is not a valid SavedModel" in err
