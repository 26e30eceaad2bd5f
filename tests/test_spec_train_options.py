"""A spec's `[train] mixed_precision` / `jit_compile` and `[model] architecture` (cgc / ple sizes), and the
builders' `dtype=`: bfloat16 models train a step with float32 outputs, XLA is set on the compiled model,
the architectures' defaults and mistakes, and a PLE spec trained and exported by `keras-mmoe train --spec`.

Small models and data; runs under Keras 3 and tf-keras.
"""

import copy
import os

import numpy as np
import pytest
import tensorflow as tf

from keras_mmoe import models, workflow
from keras_mmoe._keras import keras
from keras_mmoe.data import SpecError, compute_statistics, load_spec, make_dataset
from spec_data import SPEC, make_table, write_shards

ARCHITECTURES = {  # builder arguments of a small model; the layer that computes in the policy's dtype
    "mmoe": ({"num_experts": 2, "expert_units": 4}, "mmoe"),
    "omoe": ({"num_experts": 2, "expert_units": 4}, "omoe"),
    "cgc": ({"num_shared_experts": 1, "num_task_experts": 1, "expert_units": 4}, "cgc"),
    "ple": ({"num_levels": 2, "num_shared_experts": 1, "num_task_experts": 1, "expert_units": 4}, "ple"),
    "shared_bottom": ({"bottom_units": [4]}, "bottom_0"),
    "single_task": ({"hidden_units": [4]}, "a_hidden_0"),
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("options")
    write_shards(str(directory), make_table(200, seed=4), 2)
    return directory


@pytest.fixture(scope="module")
def stats(data_dir):
    return compute_statistics(spec_with(data_dir))


def spec_with(data_dir, model=None, **train):
    tables = copy.deepcopy(SPEC)
    if model is not None:
        tables["model"] = model
    tables["train"].update(train)
    return load_spec(tables, base_dir=str(data_dir))


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_builders_mixed_bfloat16_train_a_step_with_float32_outputs(architecture, rng):
    kwargs, inner = ARCHITECTURES[architecture]
    tasks = {"a": "binary", "b": "regression"}
    model = models.BUILDERS[architecture](6, tasks, tower_units=(3,), dtype="mixed_bfloat16", **kwargs)
    assert model.get_layer(inner).compute_dtype == "bfloat16"
    assert model.get_layer("a_tower_0").compute_dtype == "bfloat16"
    assert model.get_layer(inner).variable_dtype == "float32"
    x = {"features": rng.normal(size=(32, 6)).astype("float32")}
    y = {"a": rng.integers(0, 2, size=(32, 1)).astype("float32"), "b": rng.normal(size=(32, 1)).astype("float32")}
    out = model(x)
    assert {k: v.dtype for k, v in out.items()} == {"a": tf.float32, "b": tf.float32}
    model.compile(keras.optimizers.Adam(1e-2), {"a": "binary_crossentropy", "b": "mse"})
    before = [np.array(w) for w in model.trainable_weights]
    loss = model.train_on_batch(x, y)
    assert np.all(np.isfinite(loss))
    assert any(not np.array_equal(b, np.array(w)) for b, w in zip(before, model.trainable_weights))
    # float32 (the default) leaves every layer in float32.
    plain = models.BUILDERS[architecture](6, tasks, tower_units=(3,), **kwargs)
    assert plain.get_layer(inner).compute_dtype == "float32"


def test_spec_mixed_bfloat16_ple_trains_a_step_and_saves(data_dir, tmp_path):
    spec = spec_with(data_dir, {"architecture": "ple", "num_experts": 4, "expert_units": [4]},
                     mixed_precision="mixed_bfloat16")
    stats = compute_statistics(spec)
    model = workflow.compile_model(workflow.build_model(spec, stats), spec, stats)
    ple = model.get_layer("ple")
    assert ple.dtype_policy.name == "mixed_bfloat16" and ple.compute_dtype == "bfloat16"
    assert model.get_layer("encoded_features").compute_dtype == "float32"  # the preprocessing stays float32
    history = model.fit(make_dataset(spec, "train").take(2), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    features, _ = next(iter(make_dataset(spec, "validation")))
    out = model(features, training=False)
    assert out["click"].dtype == tf.float32 and out["watch"].dtype == tf.float32
    path = str(tmp_path / "m.keras")
    model.save(path)
    import keras_mmoe  # noqa: F401

    loaded = keras.models.load_model(path, compile=False)
    assert loaded.get_layer("ple").dtype_policy.name == "mixed_bfloat16"
    np.testing.assert_allclose(np.asarray(loaded(features)["watch"]), np.asarray(out["watch"]), rtol=1e-6)


def test_spec_jit_compile_sets_xla_on_the_compiled_model(data_dir):
    tables = copy.deepcopy(SPEC)
    tables["features"] = [f for f in tables["features"] if f["type"] == "numeric"]  # XLA cannot compile lookups
    tables["train"]["jit_compile"] = True
    spec = load_spec(tables, base_dir=str(data_dir))
    workflow.check_train_options(spec)
    stats = compute_statistics(spec)
    model = workflow.compile_model(workflow.build_model(spec, stats), spec, stats)
    assert model.jit_compile is True
    history = model.fit(make_dataset(spec, "train"), epochs=1, verbose=0)
    assert model.jit_compile is True and np.isfinite(history.history["loss"][-1])
    plain = workflow.compile_model(workflow.build_model(spec.replace_train(jit_compile=False), stats),
                                   spec.replace_train(jit_compile=False), stats)
    assert plain.jit_compile is False
    # With a vocabulary lookup it is refused before any work (Keras 3 would turn XLA off; tf-keras fails).
    with pytest.raises(SpecError, match=r"`jit_compile` = true: the model looks up the categorical feature 'country'"):
        workflow.check_train_options(spec_with(data_dir, jit_compile=True))


def test_mixed_float16_wraps_the_optimizer_in_loss_scaling(data_dir, stats):
    spec = spec_with(data_dir, mixed_precision="mixed_float16")
    model = workflow.compile_model(workflow.build_model(spec, stats), spec, stats)
    assert model.get_layer("mmoe").compute_dtype == "float16"
    assert isinstance(model.optimizer, keras.mixed_precision.LossScaleOptimizer)


def test_progressive_architectures_default_to_the_command_lines_split(data_dir):
    from keras_mmoe.cli.main import build_parser
    from keras_mmoe.cli.train import progressive_sizes

    parser = build_parser()
    for architecture, model_table, flags in [
        ("ple", {}, []),
        ("cgc", {}, []),
        ("ple", {"num_experts": 6}, ["--num-experts", "6"]),
        ("ple", {"num_experts": 6, "num_shared_experts": 2, "num_levels": 3},
         ["--num-experts", "6", "--num-shared-experts", "2", "--num-levels", "3"]),
        ("cgc", {"num_task_experts": 3}, ["--num-task-experts", "3"]),
    ]:
        spec = spec_with(data_dir, {"architecture": architecture, **model_table})
        arguments = workflow.model_arguments(spec)
        expected = progressive_sizes(parser.parse_args(["train", "--model", architecture, *flags]), len(spec.tasks))
        assert {k: arguments[k] for k in expected} == expected, (architecture, model_table)
        assert "num_experts" not in arguments
    assert {k: workflow.model_arguments(spec_with(data_dir, {"architecture": "ple"}))[k]
            for k in ("num_shared_experts", "num_task_experts", "num_levels")} == {
        "num_shared_experts": 4, "num_task_experts": 2, "num_levels": 2}


@pytest.mark.parametrize("model_table, message", [
    ({"architecture": "cgc", "num_levels": 2}, r"\[model\]: unknown key 'num_levels' for architecture 'cgc'; valid keys: "
                                               r"architecture, num_experts, gate_features, num_shared_experts"),
    ({"architecture": "ple", "num_experts": 0}, r"\[model\]: `num_experts` must be a positive integer, received 0"),
    ({"architecture": "mmoe", "num_shared_experts": 2}, r"\[model\]: unknown key 'num_shared_experts' for architecture "
                                                        r"'mmoe'"),
    ({"architecture": "ple", "num_shared_experts": 0, "num_task_experts": 0}, r"\[model\] \(ple\): "),
    ({"architecture": "ple", "num_shared_experts": -1}, r"\[model\] \(ple\): `num_shared_experts` must be a "
                                                        r"non-negative integer"),
])
def test_architecture_mistakes_name_the_key(data_dir, stats, model_table, message):
    spec = spec_with(data_dir, model_table)
    with pytest.raises(SpecError, match=message):
        workflow.build_model(spec, stats)


def test_model_dtype_key_is_refused_in_favour_of_mixed_precision(data_dir):
    with pytest.raises(SpecError, match=r"\[model\]: `dtype` is set by \[train\] mixed_precision"):
        spec_with(data_dir, {"architecture": "mmoe", "dtype": "mixed_bfloat16"})


def test_train_spec_with_architecture_ple_trains_and_exports(data_dir, tmp_path):
    from test_cli_spec import cli, write_spec

    from keras_mmoe import saving

    tables = copy.deepcopy(SPEC)
    tables["model"] = {"architecture": "ple", "num_experts": 4, "expert_units": [4], "tower_units": [3]}
    spec = write_spec(data_dir, tables, "ple.toml")
    out = tmp_path / "out"
    code, stdout, err = cli("train", "--spec", spec, "--out-dir", out, "--name", "ple_ranker")
    assert code == 0, err
    version_dir = out / "ple_ranker" / "1"
    assert stdout.strip() == str(version_dir) and (version_dir / "saved_model.pb").is_file()
    record = saving.read_metadata(version_dir)
    assert record["model"] == "ple"
    assert {k: record["model_arguments"][k] for k in ("num_shared_experts", "num_task_experts", "num_levels")} == {
        "num_shared_experts": 2, "num_task_experts": 1, "num_levels": 2}
    model = saving.load_keras_model(out / "ple_ranker.keras")
    layer = model.get_layer("ple")
    assert (layer.num_levels, layer.levels[0].num_shared_experts, layer.levels[0].num_task_experts) == (2, 2, 1)
    assert "model: ple, " in err and os.path.isfile(out / "ple_ranker.json")
