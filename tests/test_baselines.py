"""The census baselines: CrossStitch, L2TiedDense, TensorFactorizedDense and their model builders."""

import numpy as np
import pytest
import tensorflow as tf

import keras_mmoe.layers
from keras_mmoe._keras import IS_KERAS_3, keras
from keras_mmoe.data import make_synthetic
from keras_mmoe.layers import CrossStitch, L2TiedDense, TensorFactorizedDense, _utils
from keras_mmoe.models import (
    BUILDERS,
    budget_table,
    build_cross_stitch,
    build_l2_constrained,
    build_tensor_factorization,
    matched_budget_kwargs,
    compile_kwargs,
)
from keras_mmoe.models.baselines import count_params_formula

TASKS = {"y1": "regression", "y2": "binary"}
# Keras 3 compiles train steps with XLA when it can ("auto"); tracing is cheaper without (short runs).
NO_XLA = dict(jit_compile=False) if IS_KERAS_3 else {}
NEW_BUILDERS = {
    "l2_constrained": dict(hidden_units=(12,), tower_units=(4,), l2_tie=1e-2, seed=1),
    "cross_stitch": dict(hidden_units=(12, 6), tower_units=(4,)),
    "tensor_factorization": dict(hidden_units=(12, 6), tower_units=(4,), ranks=(6, 6, 2), seed=1),
}


@pytest.fixture(scope="module")
def data():
    return make_synthetic(num_samples=1024, dim=10, correlation=0.8, seed=5)


def _mixed_labels(data):
    """y1 stays a regression label, y2 becomes binary (above its median)."""
    return {"y1": data.y["y1"], "y2": (data.y["y2"] > np.median(data.y["y2"])).astype("float32")}


def _dataset(data, batch_size=128):
    return tf.data.Dataset.from_tensor_slices((data.features(), _mixed_labels(data))).shuffle(1024, seed=0).batch(
        batch_size
    )


def _np(w):
    return np.asarray(tf.convert_to_tensor(w))


# --------------------------------------------------------------------------- CrossStitch


def test_cross_stitch_matches_numpy_reference_and_starts_near_identity(rng):
    layer = CrossStitch(self_weight=0.8)
    xs = [rng.normal(size=(5, 4)).astype("float32") for _ in range(3)]
    layer(xs)
    np.testing.assert_allclose(_np(layer.alpha), [[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]], rtol=1e-6)
    alpha = rng.normal(size=(3, 3)).astype("float32")
    layer.alpha.assign(alpha)
    outs = layer(xs)
    for t in range(3):
        expected = sum(alpha[t, s] * xs[s] for s in range(3))  # x~_t = sum_s alpha_ts x_s
        np.testing.assert_allclose(outs[t].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_cross_stitch_two_tasks_default_init_and_higher_rank_inputs(rng):
    layer = CrossStitch()
    xs = [rng.normal(size=(2, 3, 4)).astype("float32") for _ in range(2)]
    outs = layer(xs)
    np.testing.assert_allclose(_np(layer.alpha), [[0.9, 0.1], [0.1, 0.9]], rtol=1e-6)
    np.testing.assert_allclose(outs[1].numpy(), 0.1 * xs[0] + 0.9 * xs[1], rtol=1e-5, atol=1e-6)


def test_cross_stitch_bad_arguments():
    for kwargs, match in [(dict(self_weight=1.5), r"self_weight=1\.5"), (dict(self_weight="x"), "self_weight='x'")]:
        with pytest.raises(ValueError, match=match):
            CrossStitch(**kwargs)


def test_cross_stitch_bad_inputs(rng):
    with pytest.raises(ValueError, match="at least 2 tensors"):
        CrossStitch()(tf.ones((2, 3)))
    with pytest.raises(ValueError, match="at least 2 tensors"):
        CrossStitch()([tf.ones((2, 3))])
    with pytest.raises(ValueError, match="input 1 differs"):
        CrossStitch()([tf.ones((2, 3)), tf.ones((2, 4))])


# --------------------------------------------------------------------------- L2TiedDense


def np_pairwise_penalty(weights):
    """sum_{s<t} ||w_s - w_t||^2 over the task axis 0, by an explicit double loop."""
    total = 0.0
    for w in weights:
        w = np.asarray(w, dtype=np.float64)
        for s in range(len(w)):
            for t in range(s + 1, len(w)):
                total += np.sum((w[s] - w[t]) ** 2)
    return total


def test_l2_tied_dense_outputs_match_numpy_for_shared_and_per_task_inputs(rng):
    layer = L2TiedDense(5, num_tasks=3, activation="relu", seed=0)
    x = rng.normal(size=(6, 4)).astype("float32")
    outs = layer(x)
    kernel, bias = _np(layer.kernel), _np(layer.bias)
    assert kernel.shape == (3, 4, 5) and bias.shape == (3, 5)
    layer.bias.assign(rng.normal(size=(3, 5)).astype("float32"))
    bias = _np(layer.bias)
    outs = layer(x)
    for t in range(3):
        np.testing.assert_allclose(outs[t].numpy(), np.maximum(x @ kernel[t] + bias[t], 0), rtol=1e-5, atol=1e-6)
    xs = [rng.normal(size=(6, 4)).astype("float32") for _ in range(3)]
    outs = layer(xs)
    for t in range(3):
        np.testing.assert_allclose(outs[t].numpy(), np.maximum(xs[t] @ kernel[t] + bias[t], 0), rtol=1e-5, atol=1e-6)
    # Each task's kernel is drawn separately with seed + t, as one Dense layer would be.
    for t in range(3):
        expected = _utils.seeded_copy("glorot_uniform", t)((4, 5))
        np.testing.assert_allclose(kernel[t], _np(expected), rtol=1e-6)


@pytest.mark.parametrize("penalty,tie_bias", [("pairwise", True), ("mean", True), ("pairwise", False)])
def test_l2_tie_penalty_matches_numpy_and_is_in_model_losses(penalty, tie_bias, rng):
    x = keras.Input((4,), name="features")
    layer = L2TiedDense(3, num_tasks=3, l2_tie=0.25, penalty=penalty, tie_bias=tie_bias, name="tied")
    outs = layer(x)
    model = keras.Model({"features": x}, {f"t{i}": o for i, o in enumerate(outs)})
    layer.bias.assign(rng.normal(size=(3, 3)).astype("float32"))
    weights = [_np(layer.kernel)] + ([_np(layer.bias)] if tie_bias else [])
    expected = np_pairwise_penalty(weights) / (3.0 if penalty == "mean" else 1.0)
    if penalty == "mean":  # the "mean" penalty by its own definition, too
        direct = sum(np.sum((w - w.mean(0, keepdims=True)) ** 2) for w in weights)
        np.testing.assert_allclose(expected, direct, rtol=1e-6)
    np.testing.assert_allclose(float(layer.tie_penalty()), expected, rtol=1e-5)
    model({"features": rng.normal(size=(2, 4)).astype("float32")})
    losses = [float(v) for v in model.losses]
    assert len(losses) == 1
    np.testing.assert_allclose(losses[0], 0.25 * expected, rtol=1e-5)


def test_l2_tie_for_two_tasks_is_the_papers_formula_and_zero_weight_adds_no_loss(rng):
    layer = L2TiedDense(2, num_tasks=2, l2_tie=0.5, tie_bias=False)
    layer(rng.normal(size=(3, 4)).astype("float32"))
    w = _np(layer.kernel)
    np.testing.assert_allclose(float(layer.tie_penalty()), np.sum((w[0] - w[1]) ** 2), rtol=1e-5)
    untied = L2TiedDense(2, num_tasks=2, l2_tie=0.0)
    untied(tf.ones((3, 4)))
    assert untied.losses == []


def test_l2_constrained_training_shrinks_the_difference_between_tasks(data):
    def kernel_gap(model):
        return sum(
            float(np.sum((lambda w: (w[0] - w[1]) ** 2)(_np(model.get_layer(n).kernel))))
            for n in ("l2_hidden_0", "l2_tower_0", "l2_output")
        )

    gaps = {}
    for tie in (0.0, 1.0):
        keras.utils.set_random_seed(0)
        model = build_l2_constrained(10, TASKS, hidden_units=(8,), tower_units=(4,), l2_tie=tie, seed=3)
        start = kernel_gap(model)
        model.compile(keras.optimizers.Adam(0.02), **compile_kwargs(TASKS), **NO_XLA)
        model.fit(_dataset(data), epochs=3, verbose=0)
        gaps[tie] = (start, kernel_gap(model))
    assert gaps[0.0][0] == pytest.approx(gaps[1.0][0])  # same seeded start
    assert gaps[1.0][1] < 0.3 * gaps[1.0][0]  # tied: the tasks' weights were pulled together
    assert gaps[1.0][1] < 0.3 * gaps[0.0][1]  # ... far closer than without the tie


def test_l2_tied_dense_bad_arguments():
    cases = [
        (dict(units=0, num_tasks=2), "units=0"),
        (dict(units=2, num_tasks=0), "num_tasks=0"),
        (dict(units=2, num_tasks=2, l2_tie=-1.0), r"l2_tie=-1\.0"),
        (dict(units=2, num_tasks=2, penalty="max"), "penalty='max'"),
        (dict(units=2, num_tasks=2, seed=-3), "seed=-3"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            L2TiedDense(**kwargs)


def test_l2_tied_dense_bad_inputs():
    with pytest.raises(ValueError, match="num_tasks=3 but received a list of 2"):
        L2TiedDense(2, num_tasks=3)([tf.ones((2, 3)), tf.ones((2, 3))])
    with pytest.raises(ValueError, match="same width"):
        L2TiedDense(2, num_tasks=2)([tf.ones((2, 3)), tf.ones((2, 4))])


# --------------------------------------------------------------------------- TensorFactorizedDense


def np_tucker_kernels(layer):
    """W[:, :, t] = sum_abc S[a,b,c] U_in[:, a] U_out[:, b] U_task[t, c], as (T, d, u)."""
    s, u_in, u_out, u_task = (_np(w).astype(np.float64) for w in
                              (layer.core, layer.input_factor, layer.output_factor, layer.task_factor))
    return np.einsum("abc,da,ub,tc->tdu", s, u_in, u_out, u_task, optimize=True)


def test_tensor_factorized_dense_full_rank_starts_as_independent_dense_layers(rng):
    layer = TensorFactorizedDense(5, num_tasks=3, seed=7)
    x = rng.normal(size=(4, 6)).astype("float32")
    outs = layer(x)
    assert layer.effective_ranks == (6, 5, 3)
    kernels = np_tucker_kernels(layer)
    for t in range(3):
        draw = _np(_utils.seeded_copy("glorot_uniform", 7 + t)((6, 5)))
        np.testing.assert_allclose(kernels[t], draw, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(outs[t].numpy(), x @ kernels[t], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_np(layer.task_kernels()), kernels, rtol=1e-4, atol=1e-6)


def test_tensor_factorized_dense_low_rank_matches_numpy_and_counts_parameters(rng):
    layer = TensorFactorizedDense(5, num_tasks=2, ranks=(3, 2, 1), activation="relu", seed=0)
    xs = [rng.normal(size=(4, 6)).astype("float32") for _ in range(2)]
    outs = layer(xs)
    layer.bias.assign(rng.normal(size=(2, 5)).astype("float32"))
    outs = layer(xs)
    kernels, bias = np_tucker_kernels(layer), _np(layer.bias)
    for t in range(2):
        np.testing.assert_allclose(outs[t].numpy(), np.maximum(xs[t] @ kernels[t] + bias[t], 0), rtol=1e-4, atol=1e-5)
    # One task factor of rank 1: the two tasks' kernels are proportional.
    ratio = kernels[1] / kernels[0]
    np.testing.assert_allclose(ratio, ratio.flat[0], rtol=1e-3)
    assert layer.count_params() == 6 * 3 + 5 * 2 + 2 * 1 + 3 * 2 * 1 + 2 * 5


def test_tensor_factorized_dense_bad_arguments():
    cases = [
        (dict(units=0, num_tasks=2), "units=0"),
        (dict(units=2, num_tasks=-1), "num_tasks=-1"),
        (dict(units=2, num_tasks=2, ranks=(1, 2)), r"ranks=\(1, 2\)"),
        (dict(units=2, num_tasks=2, ranks=(1, 0, 1)), r"ranks=\(1, 0, 1\)"),
        (dict(units=2, num_tasks=2, ranks=3), "ranks=3"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            TensorFactorizedDense(**kwargs)


def test_tensor_factorized_dense_ranks_above_full_rank_raise():
    with pytest.raises(ValueError, match=r"ranks=\(4, 2, 3\)"):
        TensorFactorizedDense(2, num_tasks=2, ranks=(4, 2, 3))(tf.ones((1, 3)))


# --------------------------------------------------------------------------- config round trips

CONFIG_CASES = [
    (CrossStitch, dict(self_weight=0.7, alpha_regularizer="l2")),
    (
        L2TiedDense,
        dict(units=3, num_tasks=4, l2_tie=0.2, penalty="mean", tie_bias=False, activation="tanh", use_bias=False,
             kernel_initializer="he_normal", bias_initializer="ones", kernel_regularizer="l1",
             bias_regularizer="l2", seed=11),
    ),
    (
        TensorFactorizedDense,
        dict(units=3, num_tasks=2, ranks=(2, 3, 1), activation="tanh", use_bias=False,
             kernel_initializer="he_normal", bias_initializer="ones", kernel_regularizer="l1",
             bias_regularizer="l2", seed=11),
    ),
]


def _class_name(value):
    return value.get("class_name", value) if isinstance(value, dict) else value


@pytest.mark.parametrize("cls,args", CONFIG_CASES, ids=[c.__name__ for c, _ in CONFIG_CASES])
def test_get_config_round_trips_every_argument(cls, args):
    layer = cls(**args)
    config = layer.get_config()
    for key, value in args.items():
        got = config[key]
        if isinstance(value, tuple):
            assert list(got) == list(value), key
        elif isinstance(value, str) and isinstance(got, dict):
            assert value.replace("_", "").lower() in str(_class_name(got)).replace("_", "").lower(), (key, got)
        else:
            assert got == value, (key, got, value)
    clone = cls.from_config(config)
    assert clone.get_config() == config
    restored = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(restored) is cls and restored.get_config() == config


# --------------------------------------------------------------------------- builders


@pytest.mark.parametrize("kind", sorted(NEW_BUILDERS))
def test_each_new_builder_trains_one_epoch_on_tf_data_with_dict_outputs(kind, data):
    model = BUILDERS[kind](data.x.shape[1], TASKS, **NEW_BUILDERS[kind])
    model.compile(keras.optimizers.Adam(0.01), **compile_kwargs(TASKS), **NO_XLA)
    before = [w.copy() for w in model.get_weights()]
    history = model.fit(_dataset(data), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert {"y1_mse", "y2_auc"} <= set(history.history)
    assert all(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))  # every weight trained
    out = model.predict(data.features(), verbose=0, batch_size=512)
    assert sorted(out) == ["y1", "y2"] and out["y1"].shape == (1024, 1)
    assert ((out["y2"] > 0) & (out["y2"] < 1)).all()
    if kind == "cross_stitch":
        assert not np.allclose(_np(model.get_layer("cross_stitch_0").alpha), [[0.9, 0.1], [0.1, 0.9]])


def test_builders_accept_a_features_tensor_and_named_inputs(rng):
    inputs = {"a": keras.Input((3,), name="a"), "b": keras.Input((2,), name="b")}
    features = keras.layers.Concatenate()([inputs["a"], inputs["b"]])
    x = {"a": rng.normal(size=(4, 3)).astype("float32"), "b": rng.normal(size=(4, 2)).astype("float32")}
    for build in (build_l2_constrained, build_cross_stitch, build_tensor_factorization):
        model = build(inputs, ["click", "buy"], features=features, hidden_units=(4,))
        out = model(x)
        assert sorted(out) == ["buy", "click"] and out["buy"].shape == (4, 1) and out["buy"].dtype == tf.float32


def test_cross_stitch_builder_needs_two_tasks():
    with pytest.raises(ValueError, match="at least 2 tasks"):
        build_cross_stitch(5, ["only"])
    with pytest.raises(ValueError, match="hidden_units"):
        build_cross_stitch(5, ["a", "b"], hidden_units=())


def test_mixed_precision_baselines_output_float32(data):
    keras.mixed_precision.set_global_policy("mixed_float16")
    for kind, kwargs in NEW_BUILDERS.items():
        model = BUILDERS[kind](10, TASKS, **kwargs)
        out = model(data.features())
        assert out["y1"].dtype == tf.float32 and np.isfinite(out["y1"].numpy()).all(), kind


# --------------------------------------------------------------------------- parameter budgets

CENSUS_TABLE = {
    "mmoe": 72_290,
    "omoe": 68_290,
    "shared_bottom": 72_274,
    "single_task": 72_170,
    "l2_constrained": 72_170,
    "cross_stitch": 72_174,
    "tensor_factorization": 71_928,
    "cgc": 70_290,
    "ple": 76_670,
}


def test_census_parameter_budgets_are_within_20_percent_of_mmoe():
    table = budget_table(499, ("income", "never_married"))
    assert {name: count for name, (count, _) in table.items()} == CENSUS_TABLE  # the documented table
    for name, (count, ratio) in table.items():
        assert 0.8 <= ratio <= 1.2, (name, count, ratio)
    assert table["mmoe"][0] == 8 * (499 * 16 + 16) + 2 * (499 * 8 + 8) + 2 * (16 * 8 + 8 + 9)
    sizes = matched_budget_kwargs(499)
    assert sizes["shared_bottom"]["bottom_units"] == (140,) and sizes["single_task"]["hidden_units"] == (71,)


@pytest.mark.parametrize("input_dim,num_tasks", [(120, 2), (499, 3)])
def test_budget_formula_matches_built_models_and_sizes_stay_comparable(input_dim, num_tasks):
    tasks = [f"t{i}" for i in range(num_tasks)]
    sizes = matched_budget_kwargs(input_dim, num_tasks=num_tasks)
    assert set(sizes) == set(BUILDERS)
    target = count_params_formula("mmoe", input_dim, num_tasks, **sizes["mmoe"])
    for name, kwargs in sizes.items():
        model = BUILDERS[name](input_dim, tasks, **kwargs)
        count = int(sum(np.prod(w.shape) for w in model.trainable_weights))
        assert count == count_params_formula(name, input_dim, num_tasks, **kwargs), name
        assert abs(count / target - 1) <= 0.2, (name, count, target)


# --------------------------------------------------------------------------- saving


@pytest.mark.parametrize("fmt", [".keras"] + ([] if IS_KERAS_3 else [".h5"]))
@pytest.mark.parametrize("kind", sorted(NEW_BUILDERS))
def test_save_and_load_gives_identical_predictions_without_custom_objects(kind, fmt, data, tmp_path):
    model = BUILDERS[kind](10, TASKS, **NEW_BUILDERS[kind])
    # Move every weight away from its (seeded) initial value, so only loaded weights can match.
    rng = np.random.default_rng(0)
    model.set_weights([w + rng.normal(0, 0.1, w.shape).astype(w.dtype) for w in model.get_weights()])
    path = str(tmp_path / ("model" + fmt))
    model.save(path)
    loaded = keras.models.load_model(path)
    x = {"features": data.x[:64]}
    a, b = model.predict(x, verbose=0), loaded.predict(x, verbose=0)
    assert sorted(a) == sorted(b) == ["y1", "y2"]
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-6, atol=1e-7)
    if kind == "l2_constrained":
        model(x), loaded(x)
        np.testing.assert_allclose(sum(float(v) for v in loaded.losses), sum(float(v) for v in model.losses),
                                   rtol=1e-5)
        assert isinstance(loaded.get_layer("l2_hidden_0"), L2TiedDense)


def test_baselines_export_for_tf_serving_with_core_ops_and_identical_outputs(data, tmp_path):
    from keras_mmoe.serving import export_for_serving
    from keras_mmoe.serving.inspection import check_serving_ops

    x = {"features": data.x[:16]}
    for kind, kwargs in NEW_BUILDERS.items():
        model = BUILDERS[kind](10, TASKS, **kwargs)
        expected = model.predict(x, verbose=0)
        export_dir = export_for_serving(model, str(tmp_path / kind), version=1, examples_signature=False)
        assert check_serving_ops(export_dir).ok, kind
        served = tf.saved_model.load(export_dir).signatures["serving_default"](features=tf.constant(x["features"]))
        for task in TASKS:
            np.testing.assert_allclose(served[task].numpy(), expected[task], rtol=1e-5, atol=1e-6)


def test_public_api():
    for cls in (CrossStitch, L2TiedDense, TensorFactorizedDense):
        assert getattr(keras_mmoe.layers, cls.__name__) is cls
        assert keras.saving.get_registered_object(f"keras_mmoe>{cls.__name__}") is cls
