"""Export for TF Serving: the SavedModel, loaded in a process that never imports keras_mmoe.

One module-scoped export per model (a feature model with every supported input kind and a
Dropout, and an MMoE model with expert dropout and gate weights) is checked by one fresh
process that loads it with ``tf.saved_model.load`` and with the TF1 session loader (TF Serving's
path), runs both signatures on batches of 1 and 1000 rows (raw and tf.Example inputs, unseen
string values included), replays the warmup records and checks the ops. Runs under Keras 3 and
tf-keras (``TF_USE_LEGACY_KERAS=1``).
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from keras_mmoe._keras import keras
from keras_mmoe.models import build_mmoe
from keras_mmoe.serving import (
    DENIED_OPS,
    WARMUP_FILE,
    check_serving_ops,
    describe_signatures,
    export_for_serving,
    make_examples,
    read_warmup_file,
)
from serving_models import build_feature_model, feature_batch, predict, verify_in_subprocess

ATOL = 1e-5
TASKS = {"click": "binary", "watch": "regression"}


def build_mmoe_models(seed=3):
    """An MMoE model with gate weights output (reference) and the same model without it."""
    keras.utils.set_random_seed(seed)
    x = keras.Input((6,), name="x")
    g = keras.Input((2,), name="g")
    reference = build_mmoe(
        {"x": x, "g": g}, TASKS, gate_features=g, num_experts=3, expert_units=4, tower_units=(4,),
        expert_dropout_rate=0.5, tower_dropout=0.5, return_gate_weights=True, seed=seed,
    )
    tasks_only = keras.Model(reference.input, {t: reference.output[t] for t in TASKS}, name="mmoe_tasks")
    return reference, tasks_only


def mmoe_batch(n, seed=0):
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(n, 6)).astype(np.float32), "g": rng.normal(size=(n, 2)).astype(np.float32)}


def mmoe_expected(reference, inputs):
    out = predict(reference, inputs)
    expected = {t: out[t] for t in TASKS}
    for k, t in enumerate(TASKS):
        expected[f"{t}_gate_weights"] = out["gate_weights"][:, k, :]
    return expected


def non_finite_batches(inputs, name):
    """``bad-nan``, ``bad-inf``, ``bad-neginf``: ``inputs`` with one non-finite value in feature ``name``."""
    bad = {}
    for label, value in (("nan", np.nan), ("inf", np.inf), ("neginf", -np.inf)):
        batch = {k: v.copy() for k, v in inputs.items()}
        batch[name][1, 0] = value
        bad[f"bad-{label}"] = batch
    return bad


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Both models exported once; their inputs, in-memory predictions, and the subprocess results."""
    root = tmp_path_factory.mktemp("serving_export")
    feature_model = build_feature_model()
    warmup = feature_batch(3, seed=7)
    feature_dir = export_for_serving(feature_model, str(root / "features"), warmup_inputs=warmup)
    reference, tasks_only = build_mmoe_models()
    mmoe_warmup = mmoe_batch(2, seed=9)
    mmoe_dir = export_for_serving(tasks_only, str(root / "mmoe"), include_gate_weights=True, warmup_inputs=mmoe_warmup)

    feature_batches = {"b1": feature_batch(1, seed=1), "b1000": feature_batch(1000, seed=2)}
    mmoe_batches = {"b1": mmoe_batch(1, seed=1), "b1000": mmoe_batch(1000, seed=2)}
    feature_batches_and_bad = dict(feature_batches, **non_finite_batches(feature_batch(3, seed=4), "numeric"))
    mmoe_batches_and_bad = dict(mmoe_batches, **non_finite_batches(mmoe_batch(3, seed=4), "g"))
    cases = [
        {"key": "features", "path": feature_dir,
         "batches": {b: {"raw": v, "examples": make_examples(v)} for b, v in feature_batches_and_bad.items()}},
        {"key": "mmoe", "path": mmoe_dir,
         "batches": {b: {"raw": v, "examples": make_examples(v)} for b, v in mmoe_batches_and_bad.items()}},
    ]
    work = root / "verify"
    work.mkdir()
    results, messages = verify_in_subprocess(cases, str(work))
    expected = {
        "features": {b: predict(feature_model, v) for b, v in feature_batches.items()},
        "mmoe": {b: mmoe_expected(reference, v) for b, v in mmoe_batches.items()},
    }
    return {
        "root": root, "feature_model": feature_model, "feature_dir": feature_dir, "mmoe_dir": mmoe_dir,
        "reference": reference, "warmup": warmup, "mmoe_warmup": mmoe_warmup, "batches": {"features": feature_batches, "mmoe": mmoe_batches},
        "expected": expected, "results": results, "messages": messages,
    }


def test_layout_of_the_version_directory(exported):
    base = os.path.dirname(exported["feature_dir"])
    assert exported["feature_dir"] == os.path.join(base, "1")
    assert sorted(os.listdir(base)) == ["1"]  # no temporary directory left behind
    for name in ("saved_model.pb", "variables", "assets", WARMUP_FILE):
        assert os.path.exists(os.path.join(exported["feature_dir"], name)), name
    assert os.listdir(os.path.join(exported["feature_dir"], "variables"))


def test_signatures_have_the_models_names_dtypes_and_shapes(exported):
    sigs = describe_signatures(exported["feature_dir"])
    assert sorted(sigs) == ["predict_examples", "serving_default"]
    raw = sigs["serving_default"]
    assert raw["method"] == "tensorflow/serving/predict"
    got = {name: (info["dtype"], info["shape"]) for name, info in raw["inputs"].items()}
    assert got == {
        "numeric": ("float32", [None, 3]),
        "count": ("int32", [None]),
        "city": ("string", [None]),
        "segment": ("string", [None, 1]),
    }
    for sig in sigs.values():
        assert {n: (i["dtype"], i["shape"]) for n, i in sig["outputs"].items()} == {
            "click": ("float32", [None, 1]), "value": ("float32", [None, 1])}
    assert {n: (i["dtype"], i["shape"]) for n, i in sigs["predict_examples"]["inputs"].items()} == {
        "examples": ("string", [None])}
    mmoe = describe_signatures(exported["mmoe_dir"])["serving_default"]["outputs"]
    assert {n: i["shape"] for n, i in mmoe.items()} == {
        "click": [None, 1], "watch": [None, 1], "click_gate_weights": [None, 3], "watch_gate_weights": [None, 3]}


def test_separate_process_never_imported_keras_mmoe(exported):
    assert exported["messages"]["keras_mmoe_imported"] is False


@pytest.mark.parametrize("loader", ["tf2", "tf1"])
def test_loaded_signatures_equal_in_memory_predictions(exported, loader):
    """Both models, both signatures (raw and tf.Example), batches of 1 and 1000 rows."""
    results = exported["results"]
    checked = 0
    for key in ("features", "mmoe"):
        for signature in ("serving_default", "predict_examples"):
            for batch, expected in exported["expected"][key].items():
                prefix = f"{key}/{loader}/{signature}/{batch}/"
                assert sorted(k[len(prefix):] for k in results if k.startswith(prefix)) == sorted(expected), prefix
                for name, value in expected.items():
                    got = results[prefix + name]
                    assert got.shape == value.shape, prefix + name
                    np.testing.assert_allclose(got, value, atol=ATOL, rtol=0, err_msg=prefix + name)
                    checked += 1
    assert checked == 2 * 2 * 2 + 2 * 2 * 4  # signatures x batches x outputs (features 2; mmoe 2 tasks + 2 gates)


def test_unseen_strings_are_in_the_checked_batch_and_change_predictions(exported):
    batch = exported["batches"]["features"]["b1000"]
    cities = set(batch["city"].tolist())
    assert {b"atlantis", b"", b"Paris"} & cities and set(c.encode() for c in ["paris", "lima"]) & cities
    # Unseen values go to the OOV index: changing a known city to an unknown one changes outputs.
    one = {k: v[:1].copy() for k, v in batch.items()}
    one["city"] = np.array([b"paris"], dtype=object)
    unseen = dict(one, city=np.array([b"atlantis"], dtype=object))
    model = exported["feature_model"]
    assert not np.allclose(predict(model, one)["value"], predict(model, unseen)["value"])


def test_training_only_behaviour_is_off_in_the_export(exported):
    """The exported outputs equal training=False; with dropout on they would differ."""
    inputs = exported["batches"]["features"]["b1000"]
    trained = predict(exported["feature_model"], inputs, training=True)
    served = exported["results"]["features/tf1/serving_default/b1000/value"]
    assert not np.allclose(trained["value"], served, atol=1e-3)
    ref_inputs = exported["batches"]["mmoe"]["b1000"]
    trained = predict(exported["reference"], ref_inputs, training=True)
    served = exported["results"]["mmoe/tf1/serving_default/b1000/click_gate_weights"]
    assert not np.allclose(trained["gate_weights"][:, 0, :], served, atol=1e-3)  # expert dropout was on


def test_warmup_records_replay_to_in_memory_predictions(exported):
    requests = read_warmup_file(exported["feature_dir"])
    assert [r.model_spec.signature_name for r in requests] == ["serving_default", "predict_examples"]
    assert all(r.model_spec.name == "features" for r in requests)
    expected = predict(exported["feature_model"], exported["warmup"])
    results = exported["results"]
    for i, request in enumerate(requests):
        for name, value in expected.items():
            got = results[f"features/warmup/{i}/{request.model_spec.signature_name}/{name}"]
            np.testing.assert_allclose(got, value, atol=ATOL, rtol=0)
    for name, value in exported["warmup"].items():
        np.testing.assert_array_equal(results[f"features/warmup_inputs/0/{name}"], value)
    mmoe_requests = read_warmup_file(exported["mmoe_dir"])
    assert [r.model_spec.signature_name for r in mmoe_requests] == ["serving_default", "predict_examples"]
    expected = mmoe_expected(exported["reference"], exported["mmoe_warmup"])
    for i, request in enumerate(mmoe_requests):
        for name, value in expected.items():  # task outputs and gate weights
            got = results[f"mmoe/warmup/{i}/{request.model_spec.signature_name}/{name}"]
            np.testing.assert_allclose(got, value, atol=ATOL, rtol=0)


def test_every_op_is_registered_and_none_calls_python(exported):
    messages = exported["messages"]
    for key, path in (("features", exported["feature_dir"]), ("mmoe", exported["mmoe_dir"])):
        assert messages[f"{key}/unregistered"] == []  # checked in the fresh process
        assert not set(messages[f"{key}/ops"]) & set(DENIED_OPS)
        check = check_serving_ops(path)  # the library's own check agrees
        assert check.ok, check
        assert check.ops == messages[f"{key}/ops"]
    assert {"ParseExampleV2", "MatMul"} <= set(messages["features/ops"])


def test_nan_and_inf_in_a_float_input_are_rejected_naming_the_input(exported):
    """Measured before this check: NaN and inf in a feature came back as finite predictions."""
    messages = exported["messages"]
    for key, name in (("features", "numeric"), ("mmoe", "g")):
        for loader in ("tf2", "tf1"):
            for signature in ("serving_default", "predict_examples"):
                for label, kind in (("nan", "NaN"), ("inf", "Inf"), ("neginf", "Inf")):
                    message = messages[f"{key}/{loader}/{signature}/bad-{label}"]
                    assert message.startswith("InvalidArgumentError"), message
                    assert f"input '{name}' holds NaN or inf" in message, message
                    assert f"Tensor had {kind} values" in message, message
    assert "CheckNumerics" in messages["features/ops"]


def test_op_check_catches_python_callbacks(tmp_path):
    """A SavedModel with tf.numpy_function (a PyFunc) fails the check: the check can fail."""
    module = tf.Module()
    module.f = tf.function(
        lambda x: tf.numpy_function(lambda a: a * 2, [x], tf.float32), input_signature=[tf.TensorSpec([None], tf.float32)]
    )
    tf.saved_model.save(module, str(tmp_path), signatures={"serving_default": module.f})
    check = check_serving_ops(str(tmp_path))
    assert not check.ok and check.denied == ["PyFunc"]
    with pytest.raises(ValueError, match="PyFunc"):
        check_serving_ops(str(tmp_path), raise_on_error=True)


def test_an_example_batch_that_is_not_1d_is_rejected(exported):
    """Fed as TF Serving feeds (no client-side shape check), a 2-D or scalar batch fails clearly."""
    messages = exported["messages"]
    assert messages["features/tf1_callable_1d_rows"] == 1000
    for label, rank in (("2d", 2), ("scalar", 0)):
        message = messages[f"features/tf1_{label}_examples"]
        assert message.startswith("InvalidArgumentError"), message
        assert "must be a 1-D batch of serialized tf.train.Example" in message and f"[{rank}]" in message
    loaded = tf.saved_model.load(exported["feature_dir"])
    examples = make_examples(feature_batch(2))
    for bad in (examples.reshape(2, 1), examples[0]):
        with pytest.raises(tf.errors.InvalidArgumentError, match="must be a 1-D batch of serialized"):
            loaded.signatures["predict_examples"](examples=tf.constant(bad))


def test_saved_model_cli_lists_the_signatures(exported):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    command = [cli] if os.path.exists(cli) else ["saved_model_cli"]
    proc = subprocess.run(command + ["show", "--dir", exported["feature_dir"], "--all"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for text in ("signature_def['serving_default']", "signature_def['predict_examples']",
                 "inputs['city'] tensor_info", "inputs['examples'] tensor_info", "outputs['click'] tensor_info",
                 "Method name is: tensorflow/serving/predict", "MetaGraphDef with tag-set: 'serve'"):
        assert text in out, text
